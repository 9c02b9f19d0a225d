"""Tardy & Mateus: the modified U-Net, the subtraction layer, the corruptions, the loss and both stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.methods.tardy.inference import parse_threshold
from mammolabel.methods.tardy.options import DiscriminativeOptions, PretrainOptions
from mammolabel.methods.tardy.training import (
    PRETRAIN_STAGE,
    fresh_network,
    initialise_backbone,
    load_pretrained,
    resolve_pretrained,
    segmentation_loss,
)
from mammolabel.errors import InputError
from mammolabel.methods.tardy.loss import MalignancyMapLoss
from mammolabel.methods.tardy.network import (
    DiscriminativeSegmenter,
    FullImageUNet,
    ResidualSeparableBlock,
    SeparableConv2d,
    UNetConfig,
)
from mammolabel.methods.tardy.transforms import (
    RandGamma,
    RandGammad,
    RandIrregularInPaint,
    RandIrregularInPaintd,
    RandIrregularOutPaint,
    irregular_shapes,
    reconstruction_corruption,
)

torch.set_num_threads(1)
SMALL = {"features": [4, 8, 16], "removed_long_skips": 1}


def tissue(seed: int = 0, shape: tuple[int, ...] = (1, 64, 48)) -> torch.Tensor:
    """A smooth image in [0.05, 0.95] (no exact 0 or 1, no ties) for the corruption checks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand((1, *shape), generator=g), 5, 1, 2)[0]
    x = (x - x.min()) / (x.max() - x.min())
    return 0.05 + 0.9 * x + 1e-4 * torch.rand(shape, generator=g)


# --- network -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"features": [4, 8, 16]}, (2, 1, 32, 24)),
        ({"features": [4, 8, 16, 32], "removed_long_skips": 2}, (1, 1, 64, 48)),
        ({"features": [6, 6], "removed_long_skips": 0}, (3, 1, 16, 10)),
        ({"features": [8, 16, 32, 64, 128]}, (1, 1, 96, 64)),
    ],
)
@pytest.mark.parametrize("subtraction", [True, False])
def test_output_shapes(kwargs, shape, subtraction):
    config = UNetConfig(**kwargs)
    unet = FullImageUNet(config).eval()
    model = DiscriminativeSegmenter(config, subtraction=subtraction).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        assert unet(x).shape == shape
        out = model(x)
    assert out.shape == shape and torch.isfinite(out).all()
    probability = model.probability(out)
    assert probability.shape == shape and probability.min() >= 0 and probability.max() <= 1


def test_bad_sizes_are_refused_with_a_message():
    model = FullImageUNet(UNetConfig(**SMALL))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 1, 30, 24))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 2, 32, 24))
    with pytest.raises(ValueError, match="removed_long_skips"):
        UNetConfig(features=[4, 8], removed_long_skips=2)
    with pytest.raises(ValueError, match="at least two"):
        UNetConfig(features=[4])


def test_blocks_are_separable_instance_normed_leaky_and_top_long_skips_removed():
    config = UNetConfig(features=[4, 8, 16, 32], removed_long_skips=2)
    model = FullImageUNet(config)
    blocks = [m for m in model.modules() if isinstance(m, ResidualSeparableBlock)]
    assert len(blocks) == 4 + 3  # one per encoder level, one per decoder level
    for block in blocks:
        for sep in (block.conv1, block.conv2):
            assert isinstance(sep, SeparableConv2d)
            assert sep.depthwise.groups == sep.depthwise.in_channels and sep.depthwise.kernel_size == (3, 3)
            assert sep.pointwise.kernel_size == (1, 1)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "InstanceNorm2d" in kinds and "LeakyReLU" in kinds
    assert not kinds & {"BatchNorm2d", "ReLU", "PReLU"}
    # Decoder level i takes the upsampled deeper level plus the encoder's level i only below the top 2 levels.
    f = config.features
    assert [d.conv1.depthwise.in_channels for d in model.decoder] == [f[1], f[2], f[3] + f[2]]
    # A full (non-separable) 3 x 3 convolution appears only in the single-channel stem.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    full3x3 = [m for m in convs if m.kernel_size == (3, 3) and m.groups == 1]
    assert full3x3 == [model.stem[0]]


def test_short_skip_carries_the_input_through_a_block():
    block = ResidualSeparableBlock(5, 5).eval()
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        block.conv2.pointwise.weight.zero_()  # residual branch -> instance norm of zeros = its bias (0)
        expected = torch.nn.functional.leaky_relu(x, 0.01)
        assert torch.allclose(block(x), expected, atol=1e-6)
        widening = ResidualSeparableBlock(3, 6).eval()
        assert isinstance(widening.shortcut, torch.nn.Sequential) and widening(torch.randn(1, 3, 8, 8)).shape[1] == 6


def test_subtraction_layer_outputs_input_minus_backbone_output():
    model = DiscriminativeSegmenter(UNetConfig(**SMALL)).eval()
    x = torch.rand(2, 1, 32, 24)
    with torch.no_grad():
        reconstruction = model.backbone(x)
        torch.testing.assert_close(model(x), x - reconstruction, rtol=0, atol=0)
        assert not torch.allclose(model(x), reconstruction)
        torch.testing.assert_close(model.probability(model(x)), (x - reconstruction).clamp(0, 1))
        plain = DiscriminativeSegmenter(UNetConfig(**SMALL), subtraction=False).eval()
        plain.backbone.load_state_dict(model.backbone.state_dict())
        torch.testing.assert_close(plain(x), reconstruction)  # the baseline: logits of a sigmoid head
        torch.testing.assert_close(plain.probability(plain(x)), torch.sigmoid(reconstruction))


def test_pretrained_weights_load_into_the_discriminative_backbone(tmp_path):
    pretrained = FullImageUNet(UNetConfig(**SMALL))
    path = save_checkpoint(tmp_path / "pre.pt", pretrained, stage=PRETRAIN_STAGE, network=pretrained.config.to_dict())
    config, weights = load_pretrained(path)
    model = DiscriminativeSegmenter(config)
    result = model.backbone.load_state_dict(weights, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(weights) == set(model.backbone.state_dict())
    model = DiscriminativeSegmenter(config)
    initialise_backbone(model, weights)
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    # A backbone of another width, or a checkpoint of another stage, is refused with a message.
    with pytest.raises(InputError, match="does not fit the backbone"):
        initialise_backbone(DiscriminativeSegmenter(UNetConfig(features=[4, 8, 32])), weights)
    save_checkpoint(tmp_path / "other.pt", pretrained, stage="something_else")
    with pytest.raises(InputError, match="not a pretrain_reconstruction checkpoint"):
        load_pretrained(tmp_path / "other.pt")


def test_a_few_steps_reduce_both_losses():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 24)
    mask = torch.zeros_like(x)
    mask[:, :, 8:16, 6:14] = 1
    cases = [
        (FullImageUNet(UNetConfig(**SMALL)), lambda m: torch.nn.functional.mse_loss(m(x * 0.8), x)),
        (DiscriminativeSegmenter(UNetConfig(**SMALL)), lambda m: segmentation_loss(True, 1.0)(m(x), mask)),
        (DiscriminativeSegmenter(UNetConfig(**SMALL), subtraction=False),
         lambda m: segmentation_loss(False, 1.0)(m(x), mask)),
    ]
    for model, loss_of in cases:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            optimizer.zero_grad()
            loss = loss_of(model)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (type(model).__name__, losses)


def test_malignancy_map_loss_values_and_errors():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1
    perfect = MalignancyMapLoss(reduction="none")(mask.clone(), mask)
    assert perfect.shape == (2,) and perfect.max() < 1e-4
    assert MalignancyMapLoss()(1 - mask, mask) > 1.5  # Dice loss 1 plus squared error 1
    # Values beyond [0, 1] count fully in the squared error but are clipped for Dice.
    assert MalignancyMapLoss(mse_weight=0)(mask * 3, mask) < 1e-4 < MalignancyMapLoss()(mask * 3, mask)
    with pytest.raises(ValueError, match="same shape"):
        MalignancyMapLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="non-negative"):
        MalignancyMapLoss(mse_weight=-1)


# --- corruptions -------------------------------------------------------------------------------------
def test_gamma_changes_intensities_only_and_is_seeded():
    x = tissue()
    x[0, 0, :5] = 0.0
    x[0, -1, :5] = 1.0
    t = RandGamma(prob=1.0, gamma_range=(1.5, 2.5)).set_random_state(7)
    y = t(x)
    assert 1.5 <= t.gamma <= 2.5 and y.shape == x.shape and not torch.allclose(x, y)
    torch.testing.assert_close(y, x**t.gamma)
    assert (y[0, 0, :5] == 0).all() and (y[0, -1, :5] == 1).all()  # 0 and 1 are kept
    assert torch.equal(torch.argsort(x.flatten()), torch.argsort(y.flatten()))  # intensity order is kept
    torch.testing.assert_close(y ** (1 / t.gamma), x)  # invertible: nothing else changed
    assert torch.equal(RandGamma(1.0, (1.5, 2.5)).set_random_state(7)(x), y)
    assert not torch.equal(RandGamma(1.0, (1.5, 2.5)).set_random_state(8)(x), y)
    assert RandGamma(prob=0.0)(x) is x
    with pytest.raises(ValueError, match="gamma_range"):
        RandGamma(gamma_range=(0, 1))


@pytest.mark.parametrize("cls, inside_changes", [(RandIrregularInPaint, True), (RandIrregularOutPaint, False)])
def test_painting_changes_only_its_region_with_noise(cls, inside_changes):
    x = tissue(1, (1, 96, 80))
    for seed in range(8):
        t = cls().set_random_state(seed)
        y = t(x)
        region = torch.from_numpy(t.region)
        changed = region if inside_changes else ~region
        assert torch.equal(y[:, ~changed], x[:, ~changed])  # everything else is untouched
        assert changed.any() and (y[:, changed] != x[:, changed]).float().mean() > 0.99
        assert 0 <= y[:, changed].min() and y[:, changed].max() < 1
        torch.testing.assert_close(y[0][changed], torch.from_numpy(t.noise)[changed])
        assert torch.equal(cls().set_random_state(seed)(x), y)  # reproducible from the seed
    assert not torch.equal(cls().set_random_state(0)(x), cls().set_random_state(1)(x))
    region_share = float(np.mean([_drawn(cls, s, x).mean() for s in range(20)]))
    changed_share = region_share if inside_changes else 1 - region_share
    # In-painting replaces a small part of the image, out-painting most of it (Models Genesis sizes).
    assert (changed_share < 0.35) if inside_changes else (changed_share > 0.4), changed_share


def _drawn(cls, seed: int, x: torch.Tensor) -> np.ndarray:
    t = cls().set_random_state(seed)
    t.randomize(x)
    return t.region


def test_painted_shapes_are_not_rectangles():
    rng = np.random.RandomState(0)
    fills = []
    for _ in range(60):
        region = irregular_shapes((128, 96), rng, 1, (0.2, 0.4))
        labelled, _ = ndimage.label(region, structure=np.ones((3, 3)))
        for sl in ndimage.find_objects(labelled):
            fills.append(region[sl].mean())
    assert max(fills) < 0.97 and np.mean(fills) < 0.85, (max(fills), np.mean(fills))
    with pytest.raises(ValueError, match="size_range"):
        irregular_shapes((16, 16), rng, 1, (0.5, 0.1))


def test_dictionary_transforms_apply_one_draw_to_every_key():
    x = tissue(2)
    d = RandIrregularInPaintd(["a", "b"]).set_random_state(3)({"a": x, "b": x.clone(), "c": x})
    assert torch.equal(d["a"], d["b"]) and not torch.equal(d["a"], x) and d["c"] is x
    d = RandGammad(["a", "b"], prob=1.0).set_random_state(3)({"a": x, "b": x * 0.5})
    gamma = float(torch.log(d["a"][0, 0, 0]) / torch.log(x[0, 0, 0]))
    torch.testing.assert_close(d["b"], (x * 0.5) ** gamma)


def test_reconstruction_pair_keeps_the_original_as_target_and_is_seeded():
    x = tissue(3, (1, 64, 64))
    corruption = reconstruction_corruption()
    pairs = [corruption.set_random_state(s)({"image": x}) for s in range(12)]
    for pair in pairs:
        assert torch.equal(pair["target"], x) and pair["target"] is not x
    assert sum(not torch.equal(p["image"], x) for p in pairs) >= 10
    again = reconstruction_corruption().set_random_state(5)({"image": x})
    assert torch.equal(again["image"], pairs[5]["image"])
    # Gamma only: the corrupted image is a power of the target; painting only: values are either kept or noise.
    only_gamma = reconstruction_corruption(gamma_prob=1.0, paint_prob=0.0).set_random_state(0)({"image": x})
    gamma = float(torch.log(only_gamma["image"][0, 5, 5]) / torch.log(x[0, 5, 5]))
    torch.testing.assert_close(only_gamma["image"], x**gamma)
    inpainted = reconstruction_corruption(gamma_prob=0.0, paint_prob=1.0, inpaint_rate=1.0).set_random_state(0)
    outpainted = reconstruction_corruption(gamma_prob=0.0, paint_prob=1.0, inpaint_rate=0.0).set_random_state(0)
    inpainted, outpainted = inpainted({"image": x}), outpainted({"image": x})
    kept_in, kept_out = (inpainted["image"] == x).float().mean(), (outpainted["image"] == x).float().mean()
    assert kept_in > 0.6 and kept_out < 0.6, (kept_in, kept_out)
    with pytest.raises(ValueError, match="must lie in"):
        reconstruction_corruption(paint_prob=1.5)


# --- option parsing ----------------------------------------------------------------------------------
def test_options_parse_or_fail_clearly(tmp_path):
    options = DiscriminativeOptions.parse({"rows": "256", "cols": "192", "width": "4", "levels": "3"})
    assert (options.rows, options.cols) == (256, 192) and options.network().features == [4, 8, 16]
    assert DiscriminativeOptions().features() == [16, 32, 64, 128, 256]  # the paper setting's widths
    assert parse_threshold("auto") is None and parse_threshold("0.3") == 0.3
    assert DiscriminativeOptions.parse({"threshold": "0.3"}).threshold == 0.3
    for values, message in [
        ({"rows": "12x"}, "option 'rows'"), ({"cols": "axb"}, "option 'cols'"), ({"levels": "1"}, "at least two"),
        ({"width": "4,x"}, "option 'width'"), ({"rows": "50", "levels": "3"}, "multiples of 4"),
        ({"threshold": "1.5"}, r"\(0, 1\)"), ({"threshold": "high"}, "option 'threshold'"),
        ({"mse_weight": "-1"}, "mse_weight"), ({"batch_size": "0"}, "batch_size"),
    ]:
        with pytest.raises(InputError, match=message):
            DiscriminativeOptions.parse(values)
    with pytest.raises(InputError, match="must lie in"):
        PretrainOptions.parse({"paint_prob": "1.5"})
    for text, message in [("1.5", r"\(0, 1\)"), ("high", "'auto' or a number")]:
        with pytest.raises(InputError, match=message):
            parse_threshold(text)
    assert resolve_pretrained("none", tmp_path) is None and resolve_pretrained("auto", tmp_path) is None
    (tmp_path / "pretrain_reconstruction.pt").write_bytes(b"x")
    assert resolve_pretrained("auto", tmp_path) == tmp_path / "pretrain_reconstruction.pt"
    with pytest.raises(InputError, match="pretrained checkpoint not found"):
        resolve_pretrained(str(tmp_path / "missing.pt"), tmp_path)


def test_seeded_initialisation_is_reproducible_and_leaves_the_global_generator_alone():
    before = torch.random.get_rng_state()
    a = fresh_network(UNetConfig(**SMALL), 3)
    b = fresh_network(UNetConfig(**SMALL), 3)
    c = fresh_network(UNetConfig(**SMALL), 4)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.head.weight, c.head.weight)
    model = fresh_network(UNetConfig(**SMALL), 3, subtraction=True)
    assert isinstance(model, DiscriminativeSegmenter) and torch.equal(model.backbone.head.weight, a.head.weight)
