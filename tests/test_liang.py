"""Liang et al.: the Inception-V3 classifier, CAM, trimaps, shared self-training CNNs, fusion, points, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.methods.liang.data import TrainingItems, augment
from mammolabel.methods.liang.inception import InceptionV3Features
from mammolabel.methods.liang.localize import localize, map_points, render_labelmap
from mammolabel.methods.liang.loss import TrimapBCELoss
from mammolabel.methods.liang.network import (
    BACKGROUND,
    FOREGROUND,
    UNKNOWN,
    LiangConfig,
    LiangNet,
    LiangOutput,
    fuse_maps,
    normalise_map,
    region_on,
    trimap,
)
from mammolabel.methods.liang.options import LiangOptions
from mammolabel.methods.liang.training import train_liang
from mammolabel.tasks import infer_tasks, train_tasks
from mammolabel.transforms.geometry import Frame

torch.set_num_threads(1)
TINY = {"width": 0.125, "head_channels": 16, "first_channels": 8, "shared_channels": 8}


def tiny_net(**kwargs) -> LiangNet:
    torch.manual_seed(0)
    return LiangNet(LiangConfig(**{**TINY, **kwargs}))


# --- network ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape, cam, maps, fused",
    [
        ({}, (2, 1, 64, 64), (2, 2), [(4, 4), (8, 8)], (8, 8)),
        ({}, (1, 1, 96, 64), (3, 2), [(6, 4), (12, 8)], (12, 8)),
        ({"taps": (8,)}, (1, 1, 64, 96), (2, 3), [(4, 6)], (4, 6)),
        ({"taps": (9, 5, 2), "width": 0.1}, (2, 1, 128, 64), (4, 2), [(4, 2), (8, 4), (16, 8)], (16, 8)),
    ],
)
def test_output_shapes(kwargs, shape, cam, maps, fused):
    net = tiny_net(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    b = shape[0]
    assert out.probability.shape == (b,) and ((out.probability > 0) & (out.probability < 1)).all()
    assert out.cam.shape == (b, 1, *cam)
    assert [tuple(m.shape) for m in out.self_training] == [(b, 1, *s) for s in maps]
    assert out.fused.shape == (b, 1, *fused) and out.weights.shape == (b, 1 + len(maps), *fused)
    for m in [out.cam, *out.self_training, out.fused]:
        assert m.min() >= 0 and m.max() <= 1


def test_paper_size_backbone_is_inception_v3():
    """Width 1: block 3 gives 288 channels and block 8 gives 768 (the paper's CNN inputs), the last 2048."""
    backbone = InceptionV3Features(in_channels=1, width=1.0)
    assert backbone.channels[2] == 288 and backbone.channels[7] == 768 and backbone.channels[-1] == 2048
    assert len(backbone.channels) == 11
    # torchvision's Inception-V3 up to Mixed_7c has 21,785,568 parameters with 3 input channels
    assert sum(p.numel() for p in backbone.parameters()) == 21_785_568 - 2 * 32 * 9
    net = LiangNet(LiangConfig())
    assert net.classifier.head[0].conv.out_channels == net.classifier.head[1].conv.out_channels == 1024
    assert net.classifier.head[0].conv.kernel_size == (3, 3) and net.classifier.fc.out_features == 2
    assert [cnn.first.conv.in_channels for cnn in net.self_training] == [768, 288]
    assert [cnn.first.conv.kernel_size for cnn in net.self_training] == [(3, 3), (3, 3)]
    shared = net.self_training[0].shared
    assert shared[0].conv.out_channels == 512 and shared[0].conv.kernel_size == (1, 1)
    assert shared[1].conv.out_channels == 1 and shared[1].conv.kernel_size == (1, 1)


def test_cam_averages_to_the_logit():
    """CAM (Zhou et al.): the spatial mean of the class map plus the FC bias is the class logit."""
    net = tiny_net().train()  # batch statistics: at initialisation the running ones shrink the maps to ~1e-9
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        out = net.classifier(x)
        for cls in (0, 1):
            cam = net.classifier.cam(out.maps, cls)
            np.testing.assert_allclose(cam.mean(dim=(1, 2, 3)) + net.classifier.fc.bias[cls], out.logits[:, cls],
                                       rtol=1e-4, atol=1e-5)
        assert not torch.allclose(net.classifier.cam(out.maps, 0), net.classifier.cam(out.maps, 1))
        expected = normalise_map(net.classifier.cam(out.maps, 1))
        np.testing.assert_allclose(net(x).cam, expected, atol=1e-6)


def test_normalise_map():
    m = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    n = normalise_map(m)
    np.testing.assert_allclose(n[0, 0], [[0.0, 0.25], [0.5, 1.0]])
    assert (n[1] == 0).all()


def test_region_restricts_every_map_to_the_breast():
    m = torch.tensor([[[[9.0, 2.0], [4.0, 6.0]]]])
    region = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    np.testing.assert_allclose(normalise_map(m, region)[0, 0], [[0.0, 0.0], [0.5, 1.0]])  # 9 is outside
    assert (normalise_map(m, torch.zeros_like(m)) == 0).all()

    net = tiny_net().train()
    x = torch.rand(2, 1, 64, 64)
    region = torch.zeros(2, 1, 64, 64)
    region[:, :, :, :32] = 1  # left half of the input
    with torch.no_grad():
        out = net(x, region)
    for m in [out.cam, *out.self_training, out.fused]:
        w = m.shape[-1]
        assert (m[..., w // 2:] == 0).all() and m[..., : w // 2].max() > 0
    assert out.cam.flatten(1).max(1).values.tolist() == [1.0, 1.0]
    assert region_on(region, out.cam)[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


# --- trimap, loss --------------------------------------------------------------------------------------
def test_trimap_has_three_regions_at_the_paper_thresholds():
    heat = torch.tensor([0.0, 0.05, 0.0999, 0.1, 0.3, 0.6, 0.6001, 1.0]).view(1, 1, 1, -1)
    t = trimap(heat, t_f=0.6, t_b=0.1)[0, 0, 0].tolist()
    B, U, Fg = BACKGROUND, UNKNOWN, FOREGROUND
    assert t == [B, B, B, U, U, U, Fg, Fg]
    assert trimap(heat, 0.9, 0.01)[0, 0, 0].tolist() == [B, U, U, U, U, U, U, Fg]
    with pytest.raises(ValueError, match="t_b"):
        trimap(heat, t_f=0.1, t_b=0.6)


def test_trimap_bce_ignores_unknown_pixels():
    loss = TrimapBCELoss()
    target = torch.tensor([[[[1.0, 0.0, -1.0, -1.0]]]])
    logits = torch.tensor([[[[2.0, -1.0, 5.0, -3.0]]]])
    expected = (F.softplus(-torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0))) / 2
    assert float(loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    changed = logits.clone()
    changed[..., 2:] = torch.tensor([-7.0, 9.0])
    assert float(loss(changed, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss(logits.flip(-1), target)) != pytest.approx(float(expected), rel=1e-3)
    assert float(TrimapBCELoss("sum")(logits, target)) == pytest.approx(2 * float(expected), rel=1e-6)
    assert TrimapBCELoss("none")(logits, target)[..., 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="same shape"):
        loss(logits, target[..., :2])


# --- shared layers -------------------------------------------------------------------------------------
def test_second_and_third_layers_are_one_shared_parameter_object():
    net = tiny_net()
    a, b = net.self_training
    assert a.shared is b.shared
    assert a.shared[0].conv.weight is b.shared[0].conv.weight and a.shared[1].conv.weight is b.shared[1].conv.weight
    assert a.first is not b.first
    unique = {id(p) for p in net.self_training.parameters()}
    assert len(unique) == 2 * 2 + 2 * 2  # two first convs (weight, bias) + the shared 1x1 convs (weight, bias) once

    # an SGD step on CNN a's loss alone changes CNN b's output (through the shared layers), not b's first layer
    f_a, f_b = torch.rand(1, a.first.conv.in_channels, 4, 4), torch.rand(1, b.first.conv.in_channels, 8, 8)
    before, first_b = b(f_b).detach(), b.first.conv.weight.detach().clone()
    optimizer = torch.optim.SGD(a.parameters(), lr=0.5)
    TrimapBCELoss()(a(f_a), torch.ones(1, 1, 4, 4)).backward()
    optimizer.step()
    assert not torch.allclose(b(f_b), before)
    assert torch.equal(b.first.conv.weight, first_b)


# --- fusion --------------------------------------------------------------------------------------------
def test_fusion_weights_sum_to_one_per_pixel():
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(2, 1, h, w, generator=g) for h, w in ((2, 3), (4, 6), (8, 12))]
    fused, weights = fuse_maps(maps)
    assert fused.shape == (2, 1, 8, 12) and weights.shape == (2, 3, 8, 12)
    np.testing.assert_allclose(weights.sum(dim=1), torch.ones(2, 8, 12), atol=1e-6)
    assert (weights > 0).all()
    stack = torch.cat([F.interpolate(m, size=(8, 12), mode="bilinear", align_corners=False) for m in maps], 1)
    np.testing.assert_allclose(fused[:, 0], (torch.softmax(stack, 1) * stack).sum(1), atol=1e-6)
    assert (fused[:, 0] <= stack.max(1).values + 1e-6).all() and (fused[:, 0] >= stack.min(1).values - 1e-6).all()
    # the larger map gets the larger weight; a small temperature picks the maximum
    assert ((weights.argmax(1) == stack.argmax(1)) | (stack.max(1).values - stack.min(1).values < 1e-6)).all()
    sharp, _ = fuse_maps(maps, temperature=1e-3)
    np.testing.assert_allclose(sharp[:, 0], stack.max(1).values, atol=1e-3)


# --- training pieces -----------------------------------------------------------------------------------
def test_a_few_steps_reduce_both_losses():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 64, 64, generator=g), torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.SGD(net.classifier.parameters(), lr=1e-2, momentum=0.9)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = F.cross_entropy(net.classifier(x).logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]

    net.eval()
    with torch.no_grad():
        feature = net.classifier(x).features[8]
    target = trimap(torch.rand(4, 1, *feature.shape[-2:], generator=g))
    cnn, loss_fn = net.self_training[0], TrimapBCELoss()
    optimizer = torch.optim.SGD(cnn.parameters(), lr=1e-1, momentum=0.9)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_fn(cnn(feature), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_positives_enter_in_the_papers_five_versions():
    image = torch.arange(16.0).view(1, 4, 4)
    assert torch.equal(augment(image, "flip")[0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert torch.equal(augment(image, "rot180"), image.flip(-1).flip(-2))
    assert torch.equal(augment(augment(image, "rot90"), "rot270"), image)
    items = TrainingItems([type("S", (), {"image": image})()] * 3, [True, False, True], True, breast_only=False)
    assert len(items) == 11
    assert [v for i, v in items.items if i == 0] == ["original", "flip", "rot90", "rot180", "rot270"]
    assert [int(items[k]["label"]) for k in range(len(items))] == [1] * 5 + [0] + [1] * 5
    assert len(TrainingItems(items.samples, [True, False, True], False, breast_only=False)) == 3


@pytest.mark.parametrize(
    "values, match",
    [({"size": 100}, "multiple of 32"), ({"positive": "benign"}, "positive"), ({"t_f": 0.05}, "t_b"),
     ({"heat_low": 0.5, "heat_mid": 0.3}, "heat_levels"), ({"heat_low": "a"}, "heat_low"),
     ({"epochs": 0}, "at least 1")],
)
def test_bad_options_are_clear_errors(values, match):
    with pytest.raises(InputError, match=match):
        LiangOptions.parse(values)


def test_train_task_options_from_strings_and_refusals(tmp_path):
    task = train_tasks()["train_cam_self_training"](model_dir=tmp_path)
    opts = task.options({"size": "64", "width": "0.25", "augment_positives": "false", "t_f": "0.7", "unknown": "x"})
    assert opts["size"] == 64 and opts["width"] == 0.25 and opts["augment_positives"] is False and opts["t_f"] == 0.7
    assert "unknown" not in opts and opts["lr"] == 1e-3 and opts["momentum"] == 0.9 and opts["t_b"] == 0.1
    with pytest.raises(InputError, match="size"):
        task.options({"size": "big"})


# --- points, labelmap, scoring -------------------------------------------------------------------------
def test_points_map_back_to_the_full_image_exactly():
    frame = Frame(crop=(100, 50, 612, 306), size=(64, 64), full_shape=(700, 400))
    heat = np.zeros((64, 64), np.float32)
    heat[20, 10], heat[40, 50], heat[5, 60] = 0.9, 0.7, 0.3
    points = map_points(heat, frame, threshold=0.5, max_points=5, min_distance=2)
    assert points == [{"x": 50 + 10.5 * 4 - 0.5, "y": 100 + 20.5 * 8 - 0.5, "score": pytest.approx(0.9)},
                      {"x": 50 + 50.5 * 4 - 0.5, "y": 100 + 40.5 * 8 - 0.5, "score": pytest.approx(0.7)}]
    assert len(map_points(heat, frame, threshold=0.2, max_points=1, min_distance=2)) == 1
    assert len(map_points(heat, frame, threshold=0.2, max_points=5, min_distance=2)) == 3


class _Identity(torch.nn.Module):
    """Stands in for the network: every map is the input image, so the peak is the brightest spot."""

    config = LiangConfig(taps=(8, 3))

    def forward(self, x: torch.Tensor, region: torch.Tensor) -> LiangOutput:
        assert region.shape == x.shape and ((x == 0) | (region == 1)).all()  # input is 0 outside the breast
        fused, weights = fuse_maps([x, x, x])
        return LiangOutput(torch.tensor([0.75]), x, [x, x], fused, weights)


def test_localize_and_infer_task_put_points_on_the_original_image(tmp_path):
    """A right breast (flipped to canonical) with one bright spot: the point lands on the spot as stored."""
    rows, cols, spot = 300, 240, (170, 60)  # spot (x, y) in the stored image; chest wall on the right
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = np.where((xx - cols) ** 2 / 200**2 + (yy - 150) ** 2 / 140**2 < 1, 0.3, 0.0)
    pixels[(xx - spot[0]) ** 2 + (yy - spot[1]) ** 2 <= 16] = 1.0
    Image.fromarray((pixels * 255).astype(np.uint8)).save(tmp_path / "right.png")
    options = LiangOptions(size=64, point_threshold=0.5, max_points=2, **TINY)

    canonical = np.ascontiguousarray(pixels[:, ::-1]).astype(np.float32)
    found = localize(_Identity(), canonical, options)
    r0, c0, r1, c1 = found.frame.crop
    per_input_px = max(r1 - r0, c1 - c0) / 64  # full-image pixels per input pixel
    assert abs(found.points[0]["x"] - (cols - 1 - spot[0])) <= per_input_px
    assert abs(found.points[0]["y"] - spot[1]) <= per_input_px

    ckpt = tmp_path / "localization.pt"
    ckpt.write_bytes(b"stands for a checkpoint")

    class Task(infer_tasks()["localization"]):
        def load(self, device="cpu"):
            return _Identity(), {"options": options.to_dict()}

    label_file, result = Task(path=str(ckpt))({"image": str(tmp_path / "right.png"), "device": "cpu"})
    assert result["flipped"] is True and result["probability"] == 0.75
    best = result["points"][0]
    assert abs(best["x"] - spot[0]) <= per_input_px and abs(best["y"] - spot[1]) <= per_input_px
    assert abs(result["peaks"]["cam"]["x"] - spot[0]) <= per_input_px
    labelmap = read_label(label_file)
    assert labelmap.shape == (rows, cols) and labelmap[spot[1], spot[0]] == 1
    assert labelmap[:, :40].max() == 0  # nothing far from the breast, which lies on the right


def test_render_labelmap_levels_and_disks():
    heat = np.tile(np.linspace(0, 1, 101, dtype=np.float32), (40, 1))
    lab = render_labelmap(heat, [{"x": 10.0, "y": 20.0, "score": 1.0}], [0.3, 0.5, 0.7], radius=3)
    assert lab.dtype == np.uint8
    assert lab[0, 29] == 0 and lab[0, 30] == 2 and lab[0, 49] == 2 and lab[0, 50] == 3 and lab[0, 70] == 4
    assert lab[20, 10] == 1 and lab[20, 12] == 1 and lab[20, 14] == 0
    assert (lab == 1).sum() == 25  # integer offsets with dx^2 + dy^2 < 9


def test_score_hits_with_a_tolerance_scaled_to_pixel_spacing():
    task = infer_tasks()["localization"]()
    record = ImageLabels("a", "a.png", "p", finding="malignant", points=[[100.0, 100.0]], radii=[10.0],
                         boxes=[[90, 90, 110, 110]])

    def result(cam, fused, spacing=None):
        peaks = {"cam": {"x": cam[0], "y": cam[1]}, "fused": {"x": fused[0], "y": fused[1]}}
        return {"probability": 0.8, "spacing": spacing, "peaks": peaks, "points": [peaks["fused"]]}

    row = task.score(record, np.zeros((1, 1)), result((300, 300), (105, 95)))
    assert row["hit"] is True and row["hit_cam"] is False and row["hit_any"] is True
    assert row["tolerance_px"] == pytest.approx(3.7 / 0.2)  # no spacing: MIAS films
    # 25 px right of the box edge: within 3.7 mm at 0.1 mm/px (37 px), not at 0.2 mm/px (18.5 px)
    assert task.score(record, np.zeros((1, 1)), result((0, 0), (135, 100), spacing=[0.1, 0.1]))["hit"] is True
    assert task.score(record, np.zeros((1, 1)), result((0, 0), (135, 100), spacing=[0.2, 0.2]))["hit"] is False
    normal = ImageLabels("b", "b.png", "q", finding="normal")
    assert task.score(normal, np.zeros((1, 1)), result((0, 0), (0, 0))) == {"score": 0.8, "abnormal_score": 0.8}
    rows = [row, {"score": 0.1}, task.score(record, np.zeros((1, 1)), result((100, 100), (400, 400)))]
    summary = task.summarise(rows)
    assert summary["n_located"] == 2 and summary["hit_rate_fused"] == 0.5 and summary["hit_rate_cam"] == 0.5


def test_training_needs_both_classes(tmp_path):
    normals = [ImageLabels(f"n{i}", f"n{i}.png", f"p{i}", finding="normal") for i in range(6)]
    with pytest.raises(InputError, match="both with and without a positive \\(abnormal\\) finding"):
        train_liang(LabelInventory(normals), LiangOptions(size=64), tmp_path / "x.pt")
