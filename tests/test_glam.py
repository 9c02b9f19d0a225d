"""GLAM (Liu et al.): network shapes, the paper's mechanisms, losses, options, geometry and stage chaining."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.methods.glam.options import GlamOptions
from mammolabel.methods.glam.predict import draw_outlines, patch_box, segment
from mammolabel.methods.glam.training import THRESHOLDS, dice_curve, train_glam
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.methods.glam.loss import GlamLoss, SaliencySparsityLoss
from mammolabel.metrics import dice
from mammolabel.methods.glam.network import GatedAttention, GlamConfig, GlamNet, GlobalModule, LocalModule
from mammolabel.methods.glam.patches import crop_patches, paste_patches, select_patches
from mammolabel.metrics.components import largest_radius
from mammolabel.networks.pooling import top_t_pool
from mammolabel.tasks import infer_tasks, train_tasks
from mammolabel.training.stages import file_digest, seed_for, stage_path
from mammolabel.transforms.geometry import Frame

GlamSegmentationInfer = infer_tasks()["glam_segmentation"]
TrainGlam = train_tasks()["train_glam"]

TINY = {"global_width": 4, "local_width": 4, "local_depth": 18}


def tiny_config(**overrides) -> GlamConfig:
    return GlamConfig(**{**TINY, "num_patches": 2, "patch_size": (64, 64), **overrides})


CASES = [
    # config overrides, input shape, (S0 size, K, patch map size, z_g, z_l)
    [{}, (2, 1, 256, 192), ((16, 12), 2, (16, 16), 64, 32)],
    [{"aggregation": "attention", "num_patches": 3, "patch_size": (96, 96)}, (1, 1, 320, 256),
     ((20, 16), 3, (24, 24), 64, 32)],
    [{"global_width": 8, "local_width": 8, "local_depth": 34, "num_patches": 1, "patch_size": (32, 48)},
     (1, 1, 128, 128), ((8, 8), 1, (8, 12), 128, 64)],
    [{"local_strides": (1, 2, 1, 1), "patch_size": (64, 64)}, (1, 1, 192, 128), ((12, 8), 2, (8, 8), 64, 32)],
]


@pytest.mark.parametrize("overrides, shape, expected", CASES)
def test_output_shapes(overrides, shape, expected):
    (h0, w0), k, patch_map, zg, zl = expected
    b, _, rows, cols = shape
    net = GlamNet(tiny_config(**overrides)).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    scales = [(b, 2, h0 // 2**n, w0 // 2**n) for n in range(3)]
    assert [tuple(m.shape) for m in out.scale_maps] == scales
    assert out.scale_predictions.shape == (b, 3, 2) and out.global_prediction.shape == (b, 2)
    assert out.global_saliency.shape == (b, 2, h0, w0) and out.z_global.shape == (b, zg)
    assert out.corners.shape == (b, k, 2) and out.patch_maps.shape == (b, k, 2, *patch_map)
    assert out.local_prediction.shape == (b, 2) and out.z_local.shape == (b, zl)
    assert out.local_saliency.shape == out.fused_saliency.shape == (b, 2, rows, cols)
    assert out.fused_prediction.shape == (b, 2)
    assert (out.attention is None) == (net.config.aggregation == "concat")
    for p in (out.global_prediction, out.local_prediction, out.fused_prediction):
        assert ((p > 0) & (p < 1)).all()
    glob = net(torch.rand(shape), "global")
    assert glob.corners is None and glob.local_saliency is None and glob.fusion_logits is None


def test_paper_sizes_of_the_global_and_local_modules():
    """Fig. 6: h0 184x120x64, h1 92x60x128, h2 46x30x256 at 2944x1920; local maps at stride 4 (shape inference only)."""
    config = GlamConfig()
    global_module = GlobalModule(config).to("meta")
    features = global_module.trunk(torch.empty(1, 1, 2944, 1920, device="meta"))
    assert [tuple(f.shape[1:]) for f in features[-3:]] == [(64, 184, 120), (128, 92, 60), (256, 46, 30)]
    maps, y, saliency, z = global_module(torch.empty(1, 1, 2944, 1920, device="meta"))
    assert [tuple(m.shape[2:]) for m in maps] == [(184, 120), (92, 60), (46, 30)] and z.shape == (1, 256)
    assert saliency.shape == (1, 2, 184, 120) and y.shape == (1, 3, 2)
    local = LocalModule(config).to("meta")
    maps, y_l, _, z_l = local(torch.empty(1, 3, 1, 512, 512, device="meta"))
    assert maps.shape == (1, 3, 2, 128, 128) and z_l.shape == (1, 512) and local.trunk.channels[-1] == 512
    assert config.map_stride == 16 and config.total_stride == 64 and config.local_stride == 4


def test_top_t_pooling_is_the_mean_of_the_top_t_percent():
    maps = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10).repeat(2, 2, 1, 1)
    assert torch.allclose(top_t_pool(maps, 1.0), maps.mean(dim=(2, 3)))  # t = 100 %: the mean
    assert torch.allclose(top_t_pool(maps, 0.01), torch.full((2, 2), 99.0))  # one pixel: the max
    assert torch.allclose(top_t_pool(maps, 0.05), torch.full((2, 2), float(np.mean([95, 96, 97, 98, 99]))))
    with pytest.raises(ValueError):
        top_t_pool(maps, 0.0)


def test_global_predictions_pool_each_scale_and_s_g_weights_the_scales():
    config = tiny_config(t_global=0.1)
    module = GlobalModule(config).eval()
    with torch.no_grad():
        maps, y, saliency, _ = module(torch.rand(2, 1, 128, 128))
    for n, m in enumerate(maps):
        flat = m.flatten(2).sort(dim=-1, descending=True).values
        k = math.ceil(0.1 * flat.shape[-1])
        assert torch.allclose(y[:, n], flat[..., :k].mean(-1))
    up = [F.interpolate(m, size=maps[0].shape[-2:], mode="nearest") for m in maps]
    assert torch.allclose(saliency, 0.2 * up[0] + 0.6 * up[1] + 0.2 * up[2])


def test_concatenation_pools_the_patch_maps_side_by_side():
    module = LocalModule(tiny_config(t_local=0.25)).eval()
    with torch.no_grad():
        maps, y, attention, z = module(torch.rand(2, 3, 1, 32, 32))
    values = maps.transpose(1, 2).flatten(2).sort(dim=-1, descending=True).values  # (B, 2, K*h*w)
    k = math.ceil(0.25 * values.shape[-1])
    assert attention is None and torch.allclose(y, values[..., :k].mean(-1))


def test_gated_attention_weights_sum_to_one_and_weight_the_patch_predictions():
    attention = GatedAttention(16, hidden=8)
    weights = attention(torch.randn(4, 5, 16))
    assert weights.shape == (4, 5) and (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert torch.allclose(attention(torch.randn(3, 1, 16)), torch.ones(3, 1))  # one patch: weight 1

    module = LocalModule(tiny_config(aggregation="attention", t_local=0.3)).eval()
    with torch.no_grad():
        maps, y, a, z = module(torch.rand(2, 3, 1, 32, 32))
        y_k = torch.stack([top_t_pool(maps[:, k], 0.3) for k in range(3)], dim=1)
    assert torch.allclose(a.sum(1), torch.ones(2)) and not torch.allclose(a, a.roll(1, dims=1))
    assert torch.allclose(y, (a[..., None] * y_k).sum(1), atol=1e-6)


def test_patches_sit_at_the_peaks_without_overlap():
    saliency = torch.zeros(1, 2, 16, 12)
    saliency[0, 0, 11:13, 8:10] = 1.0  # benign peak
    saliency[0, 1, 2:4, 1:3] = 0.5  # malignant peak (each class is normalised, so it counts as much)
    corners = select_patches(saliency, (4, 4), 2)[0].tolist()
    peaks = [(11, 8), (2, 1)]
    for (r, c), (pr, pc) in zip(sorted(corners), sorted(peaks)):
        assert r <= pr and pr + 2 <= r + 4 and c <= pc and pc + 2 <= c + 4  # the whole peak inside its window

    corner = torch.zeros(1, 2, 20, 20)
    corner[..., 8:12, 8:12] = 1.0  # the first window
    corner[..., 12, 10] = corner[..., 10, 12] = 1.0  # only a window over the first one holds both
    (r0, c0), (r1, c1) = select_patches(corner, (4, 4), 2)[0].tolist()
    assert (r0, c0) == (8, 8) and (abs(r0 - r1) >= 4 or abs(c0 - c1) >= 4)

    for seed in range(5):
        maps = torch.rand(3, 2, 20, 15, generator=torch.Generator().manual_seed(seed))
        corners = select_patches(maps, (5, 4), 4)
        for b in range(3):
            boxes = [(r, c, r + 5, c + 4) for r, c in corners[b].tolist()]
            assert all(0 <= r0 and r1 <= 20 and 0 <= c0 and c1 <= 15 for r0, c0, r1, c1 in boxes)
            for i in range(4):
                for j in range(i):
                    a, o = boxes[i], boxes[j]
                    assert a[2] <= o[0] or o[2] <= a[0] or a[3] <= o[1] or o[3] <= a[1], (seed, boxes)


def test_patches_overlap_only_when_the_image_has_no_room():
    corners = select_patches(torch.rand(2, 2, 8, 8), (6, 6), 2)
    assert ((corners >= 0) & (corners <= 2)).all()  # inside: upper-left at most 8 - 6
    with pytest.raises(ValueError, match="does not fit"):
        select_patches(torch.rand(1, 2, 4, 4), (6, 6), 1)


def test_crops_and_pasted_maps_map_back_exactly():
    x = torch.rand(2, 1, 128, 96)
    corners = torch.tensor([[[0, 32], [64, 0]], [[96, 64], [16, 16]]])
    patches = crop_patches(x, corners, (32, 32))
    assert patches.shape == (2, 2, 1, 32, 32)
    for b in range(2):
        for k, (r, c) in enumerate(corners[b].tolist()):
            assert torch.equal(patches[b, k], x[b, :, r : r + 32, c : c + 32])
    pasted = paste_patches(torch.ones(2, 2, 2, 8, 8), corners, (32, 32), (128, 96))
    expected = torch.zeros(2, 2, 128, 96)
    for b in range(2):
        for r, c in corners[b].tolist():
            expected[b, :, r : r + 32, c : c + 32] = 1
    assert torch.equal(pasted, expected)

    net = GlamNet(tiny_config(num_patches=3, patch_size=(32, 32))).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 128, 128))
    inside = torch.zeros(128, 128, dtype=torch.bool)
    for r, c in out.corners[0].tolist():
        assert r % 16 == 0 and c % 16 == 0 and 0 <= r <= 96 and 0 <= c <= 96
        inside[r : r + 32, c : c + 32] = True
    assert (out.local_saliency[0][:, ~inside] == 0).all() and (out.local_saliency[0][:, inside] > 0).all()


def test_patch_boxes_map_back_to_the_full_image():
    identity = Frame(crop=(0, 0, 256, 192), size=(256, 192), full_shape=(256, 192))
    assert patch_box(identity, (64, 32), (96, 96)) == [32, 64, 127, 159]
    frame = Frame(crop=(40, 10, 1000, 650), size=(512, 320), full_shape=(1024, 700))  # crop, then 1.875x / 2x
    x0, y0, x1, y1 = patch_box(frame, (128, 96), (96, 96))
    assert 0 <= x0 <= x1 < 700 and 0 <= y0 <= y1 < 1024
    full = np.zeros((1024, 700), np.float32)
    full[y0 : y1 + 1, x0 : x1 + 1] = 1
    back = frame.to_input(full, order=0) > 0.5
    expected = np.zeros((512, 320), bool)
    expected[128:224, 96:192] = True
    assert (back & expected).sum() / (back | expected).sum() > 0.97


def test_sparsity_and_stage_losses():
    assert torch.isclose(SaliencySparsityLoss()(torch.full((2, 2, 4, 4), 0.5)), torch.tensor(1.0))
    assert torch.isclose(SaliencySparsityLoss()(torch.full((2, 3, 2, 4, 4), 0.25)), torch.tensor(0.5))
    net = GlamNet(tiny_config()).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 128, 128))
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    beta = 0.5

    def bce(p):
        return F.binary_cross_entropy(p, target, reduction="none").sum(1)

    def sparse(m):
        return m.abs().flatten(-2).mean(-1).sum(1) if m.ndim == 4 else sparse(m.transpose(1, 2).flatten(2, 3))

    global_terms = sum(bce(out.scale_predictions[:, n]) + beta * sparse(out.scale_maps[n]) for n in range(3))
    local_terms = bce(out.local_prediction) + beta * sparse(out.patch_maps)
    fusion = F.binary_cross_entropy_with_logits(out.fusion_logits, target, reduction="none").sum(1)
    loss = GlamLoss(beta=beta)
    assert torch.isclose(loss(out, target, "global"), global_terms.mean(), rtol=1e-5)
    assert torch.isclose(loss(out, target, "local"), local_terms.mean(), rtol=1e-5)
    assert torch.isclose(loss(out, target, "joint"), (fusion + global_terms + local_terms).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="stage"):
        loss(out, target, "everything")
    with pytest.raises(ValueError, match="target"):
        loss(out, target[:, :1], "global")
    with pytest.raises(ValueError, match="local path"):
        loss(net(torch.rand(1, 1, 128, 128), "global"), target[:1], "local")


@pytest.mark.parametrize("stage, aggregation", [("global", "concat"), ("local", "attention"), ("joint", "concat")])
def test_a_few_steps_reduce_the_loss(stage, aggregation):
    torch.manual_seed(0)
    net = GlamNet(tiny_config(aggregation=aggregation, num_patches=2, patch_size=(32, 32)))
    x = torch.rand(4, 1, 128, 128)
    x[:2, :, 40:56, 40:56] += 1.0  # the positives carry a bright blob
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    loss_fn = GlamLoss(beta=0.01)
    frozen = {k: v.clone() for k, v in net.global_module.state_dict().items()}
    module = {"global": net.global_module, "local": net.local_module, "joint": net}[stage]
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        net.train()
        if stage == "local":
            net.global_module.eval()
        loss = loss_fn(net(x, stage), target, stage)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    if stage == "local":  # the frozen global module neither learns nor updates its batch norms
        assert all(torch.equal(v, net.global_module.state_dict()[k]) for k, v in frozen.items())


def test_dice_curve_matches_dice_at_every_threshold():
    rng = np.random.default_rng(0)
    saliency = rng.uniform(size=(40, 30)).astype(np.float32)
    truth = np.zeros((40, 30), bool)
    truth[10:20, 5:15] = True
    saliency[truth] += 0.3
    curve = dice_curve(saliency, truth)
    for i in (0, 10, 25, 40, len(THRESHOLDS) - 1):
        assert curve[i] == pytest.approx(dice(saliency >= THRESHOLDS[i], truth) or 0.0)


def test_segmentation_labels_and_outlines():
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, :3] = 0.5  # benign above its threshold on the top half
    maps[1, 2:, :3] = 0.9  # malignant in the lower left, overlapping the benign rows at row 2
    labels = segment(maps, {"benign": 0.4, "malignant": 0.6})
    assert labels[0, 0] == 1 and labels[4, 0] == 2 and labels[5, 5] == 0
    assert labels[2, 0] == 2 and labels[2, 5] == 1  # row 2: 0.9/0.6 beats 0.5/0.4 on the left only
    assert labels.dtype == np.uint8
    lab = np.zeros((10, 10), np.uint8)
    draw_outlines(lab, [[2, 3, 7, 8]], 3, 1)
    assert lab[3, 2:8].all() and lab[8, 2:8].all() and lab[3:9, 2].all() and lab[3:9, 7].all()
    assert lab[4:8, 3:7].max() == 0 and lab.sum() == 3 * 20
    disk = np.hypot(*np.mgrid[-20:21, -20:21]) <= 10
    assert largest_radius(disk) == pytest.approx(10, abs=0.3)


@pytest.mark.parametrize("values, match", [
    ({"stage": "everything"}, "stage"),
    ({"aggregation": "sum"}, "aggregation"),
    ({"rows": 500}, "multiples of 64"),
    ({"rows": 256, "cols": 192, "patch_size": 256}, "patch_size"),
    ({"patch_size": 100}, "multiples of 16"),
    ({"epochs": 0}, "at least 1"),
    ({"beta": -1.0}, "beta"),
])
def test_bad_options_are_clear_errors(values, match):
    with pytest.raises(InputError, match=match):
        GlamOptions.parse(values)


def test_train_task_options_from_strings(tmp_path):
    task = TrainGlam(tmp_path)
    options = task.options({"preset": "paper", "rows": "256", "augment": "false", "beta": "0.1", "stage": "local",
                            "unknown": 1})
    assert options["rows"] == 256 and options["augment"] is False and options["beta"] == 0.1
    assert options["stage"] == "local" and "unknown" not in options and options["joint_epochs"] == 5
    with pytest.raises(InputError, match="rows"):
        task.options({"rows": "big"})
    assert task.path == tmp_path / "glam_segmentation.pt"


class _BrightGlobal(nn.Module):
    """Stand-in global module whose saliency is the image brightness (geometry checks, not learning)."""

    out_channels = 64  # as the tiny global module's, for the fusion layer

    def forward(self, x):
        maps = [F.avg_pool2d(x, s).repeat(1, 2, 1, 1).clamp(0, 1) for s in (16, 32, 64)]
        y = torch.stack([top_t_pool(m, 0.03) for m in maps], dim=1)
        return maps, y, maps[0], torch.zeros(x.shape[0], self.out_channels)


class _BrightLocal(nn.Module):
    out_channels = 32

    def forward(self, patches):
        b, k = patches.shape[:2]
        maps = F.avg_pool2d(patches.flatten(0, 1), 4).repeat(1, 2, 1, 1).unflatten(0, (b, k))
        return maps, top_t_pool(maps.transpose(1, 2).flatten(2, 3), 0.3), None, torch.zeros(b, self.out_channels)


def test_infer_task_segments_and_outlines_on_the_original_image(tmp_path):
    """A right breast (flipped to canonical) with a bright spot: segmentation and patch land on it as stored."""
    rows, cols, spot = 320, 256, (180, 100)  # spot (x, y) in the stored image; chest wall on the right
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = np.where((xx - cols) ** 2 / 220**2 + (yy - 160) ** 2 / 150**2 < 1, 0.3, 0.0)
    pixels[(xx - spot[0]) ** 2 + (yy - spot[1]) ** 2 <= 64] = 1.0
    Image.fromarray((pixels * 255).astype(np.uint8)).save(tmp_path / "right.png")
    options = GlamOptions(rows=320, cols=256, crop_breast=False, patch_size=64, num_patches=1, **TINY)
    net = GlamNet(options.network_config())
    net.global_module, net.local_module = _BrightGlobal(), _BrightLocal()
    net.eval()
    thresholds = {m: {c: {"threshold": 0.6} for c in ("benign", "malignant")} for m in ("global", "local", "fused")}
    ckpt = tmp_path / "glam_segmentation.pt"
    ckpt.write_bytes(b"stands for a checkpoint")

    class Task(GlamSegmentationInfer):
        def load(self, device="cpu"):
            return net, {"options": options.to_dict(), "frame": options.frame(), "stage": "joint",
                         "thresholds": thresholds}

    label_file, result = Task(path=str(ckpt))({"image": str(tmp_path / "right.png"), "device": "cpu"})
    labelmap = read_label(label_file)
    assert result["flipped"] is True and labelmap.shape == (rows, cols)
    assert labelmap[spot[1], spot[0]] in (1, 2) and labelmap[:, :60].max() == 0
    (x0, y0, x1, y1), = [p["box"] for p in result["patches"]]
    assert x0 <= spot[0] <= x1 and y0 <= spot[1] <= y1 and (x1 - x0 + 1, y1 - y0 + 1) == (64, 64)
    assert (labelmap[y0, x0 : x1 + 1] == 3).all() and (labelmap[y0 : y1 + 1, x1] == 3).all()
    assert result["components"] >= 1 and result["boxes"][0]["label"] in ("benign", "malignant")
    bx0, by0, bx1, by1 = result["boxes"][0]["box"]
    assert bx0 <= spot[0] <= bx1 and by0 <= spot[1] <= by1
    assert set(result["module_probabilities"]) == {"global", "local", "fused"}
    assert result["saliency"] == "fused" and result["thresholds"] == {"benign": 0.6, "malignant": 0.6}

    _, local = Task(path=str(ckpt))({"image": str(tmp_path / "right.png"), "saliency": "local",
                                      "threshold_malignant": "0.9"})
    assert local["saliency"] == "local" and local["thresholds"]["malignant"] == 0.9
    with pytest.raises(InputError, match="saliency"):
        Task(path=str(ckpt))({"image": str(tmp_path / "right.png"), "saliency": "cam"})
    with pytest.raises(InputError, match="threshold_benign"):
        Task(path=str(ckpt))({"image": str(tmp_path / "right.png"), "threshold_benign": "1.5"})


def _train(studies, out, **values):
    options = GlamOptions.parse({"rows": 128, "cols": 128, "patch_size": 32, "num_patches": 2, "batch_size": 4,
                                 "epochs": 1, "local_epochs": 1, "joint_epochs": 1, "device": "cpu", **TINY, **values})
    return train_glam(collect_labels(MammoDatastore(studies)), options, out)


def test_stage_checkpoints_chain(phantom_copy, tmp_path):
    out = tmp_path / "model" / "glam_segmentation.pt"
    with pytest.raises(InputError, match="stage=global"):
        _train(phantom_copy, out, stage="local")

    summary = _train(phantom_copy, out, stage="global")
    report = summary["label_report"]
    assert report["used"] == 12 and report["needs"] == "finding" and report["val_masks"] >= 1
    glob = load_checkpoint(stage_path(out, "global"))
    assert glob["stage"] == "global" and set(glob["thresholds"]) == {"global"}
    assert load_checkpoint(out)["stage"] == "global"

    _train(phantom_copy, out, stage="local")
    local = load_checkpoint(stage_path(out, "local"))
    g_keys = [k for k in glob["model"] if k.startswith("global_module.")]
    assert all(torch.equal(local["model"][k], glob["model"][k]) for k in g_keys)  # frozen, batch norms included
    torch.manual_seed(seed_for(0, "weights"))  # the seed train_glam builds the network with
    fresh = GlamNet(GlamOptions(rows=128, cols=128, patch_size=32, num_patches=2, **TINY).network_config()).state_dict()
    assert any(not torch.equal(local["model"][k], fresh[k]) for k in local["model"] if k.startswith("local_module."))
    assert set(local["thresholds"]) == {"global", "local", "fused"}

    _train(phantom_copy, out, stage="joint")
    joint = load_checkpoint(stage_path(out, "joint"))
    assert joint["run"]["started_from"] == file_digest(stage_path(out, "local"))  # joint starts from the local stage's best
    served = load_checkpoint(out)
    assert served["stage"] == "joint"
    assert all(torch.equal(served["model"][k], joint["model"][k]) for k in joint["model"])


def test_benchmark_hooks_build_the_papers_configuration(tmp_path):
    module = GlamSegmentationInfer.benchmark_module()
    assert module.net.config == GlamConfig() and module.net.config.patch_size == (512, 512)
    GlamSegmentationInfer.write_benchmark_checkpoint(tmp_path)
    ckpt = load_checkpoint(tmp_path / "glam_segmentation.pt")
    task = GlamSegmentationInfer(path=str(tmp_path / "glam_segmentation.pt"))
    net = task.build_network(ckpt)
    net.load_state_dict(ckpt["model"])
    assert ckpt["stage"] == "joint" and (ckpt["options"]["rows"], ckpt["options"]["cols"]) == (2944, 1920)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in module.parameters())
    assert set(ckpt["thresholds"]) == {"global", "local", "fused"}


def test_the_local_module_starts_from_a_patch_classifier_of_its_depth_and_width(phantom_copy, tmp_path):
    from mammolabel.methods.dahl.network import DahlClassifier
    from mammolabel.methods.glam.training import init_local_from_patches
    from mammolabel.training.checkpoint import save_checkpoint

    torch.manual_seed(1)
    patch_classifier = DahlClassifier(depth=18, width=4, attention=False)
    patches = tmp_path / "model" / "pretrain_patches.pt"
    save_checkpoint(patches, patch_classifier, network={"depth": 18, "width": 4})
    net = GlamNet(tiny_config())
    assert init_local_from_patches(net, patches) == len(net.local_module.trunk.state_dict())
    resnet = patch_classifier.holistic.net
    assert torch.equal(net.local_module.trunk.stem[0].weight, resnet.conv1.weight)
    assert torch.equal(net.local_module.trunk.stages[3][1].conv2.weight, resnet.layer4[1].conv2.weight)
    with pytest.raises(InputError, match="local_depth and local_width must be"):
        init_local_from_patches(GlamNet(tiny_config(local_width=8)), patches)

    out = tmp_path / "model" / "glam_segmentation.pt"
    _train(phantom_copy, out, stage="global")
    _train(phantom_copy, out, stage="local", patches="auto")  # the model folder's pretrain_patches.pt
    local = load_checkpoint(stage_path(out, "local"))
    assert local["run"]["patches"] == file_digest(patches) and local["options"]["patches"] == "auto"
