"""Xiong et al. hybrid strong/weak segmentation: network, losses, label plan, training engine, CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolabel.cli import main as cli
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.labels import ImageLabels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.methods.xiong.options import HybridTrainOptions
from mammolabel.methods.xiong.training import HybridDataset, init_encoder, plan_labels
from mammolabel.errors import InputError
from mammolabel.methods.xiong.loss import (
    HybridLoss,
    PixelPositionAwareLoss,
    UncertainAreaPerceptionLoss,
    reversed_box_mask,
)
from mammolabel.networks.backbones import ResNetFeatures
from mammolabel.methods.xiong.network import (
    FeatureDisentanglement,
    HybridConfig,
    SpatialPrompting,
    XiongHybridNet,
)
from mammolabel.tasks import infer_tasks, train_tasks

HybridSegmentationInfer = infer_tasks()["hybrid_segmentation"]
TrainHybrid = train_tasks()["train_hybrid"]

TINY = {"rows": 64, "cols": 64, "width": 4, "depth": 18, "batch_size": 4}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- network ----------------------------------------------------------------------------------
SHAPE_CASES = [
    ({"width": 8}, (2, 1, 64, 64), True),
    ({"width": 4, "depth": 18}, (1, 1, 96, 64), True),
    ({"width": 4, "depth": 18, "disentangle": False, "spatial_prompt": False}, (3, 1, 64, 32), True),
    ({"width": 4, "depth": 50}, (1, 1, 64, 64), True),
    ({"width": 4, "auxiliary": False, "disentangle": False, "spatial_prompt": False}, (2, 1, 32, 64), False),
]


@pytest.mark.parametrize("kwargs, shape, auxiliary", SHAPE_CASES)
def test_output_shapes(kwargs, shape, auxiliary):
    net = XiongHybridNet(HybridConfig(**kwargs)).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    expected = (shape[0], 1, *shape[2:])
    assert out.segmentation.shape == expected
    if auxiliary:
        assert out.background.shape == expected
    else:
        assert out.background is None


def test_input_size_and_config_are_checked():
    net = XiongHybridNet(HybridConfig(width=4, depth=18))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="need the auxiliary"):
        HybridConfig(auxiliary=False)
    assert HybridConfig(width=16).decoder_channels == [64, 32, 16, 8, 4]
    cfg = HybridConfig(width=8, spatial_prompt=False)
    assert HybridConfig(**asdict(cfg)) == cfg


def test_feature_disentanglement_splits_channels():
    fd = FeatureDisentanglement(8, lesion_fraction=0.25)
    f = torch.rand(2, 8, 5, 5)
    f_r, f_o = fd(f)
    assert fd.split == 2 and f_r.shape == f.shape and f_o.shape == f.shape
    g = f.clone()
    g[:, 2:] += 1.0  # change only the "other" channels
    g_r, g_o = fd(g)
    assert torch.allclose(g_r, f_r) and not torch.allclose(g_o, f_o)


def test_spatial_prompting_gates_features_by_uncertainty():
    features = [torch.ones(1, 3, 8, 8), torch.ones(1, 5, 4, 4)]
    logits = torch.full((1, 1, 16, 16), 30.0)  # definite background everywhere ...
    logits[..., :8, :8] = -30.0  # ... except the top-left quarter (uncertain)
    prompted = SpatialPrompting()(features, logits)
    assert torch.allclose(prompted[0][..., :4, :4], torch.ones(1)) and prompted[0][..., 4:, 4:].abs().max() < 1e-6
    assert torch.allclose(prompted[1][..., :2, :2], torch.ones(1)) and prompted[1][..., 2:, :].abs().max() < 1e-6


def test_switches_change_parameters_and_data_flow():
    full = XiongHybridNet(HybridConfig(width=8, depth=18))
    no_fd = XiongHybridNet(HybridConfig(width=8, depth=18, disentangle=False))
    no_spm = XiongHybridNet(HybridConfig(width=8, depth=18, spatial_prompt=False))
    plain = XiongHybridNet(HybridConfig(width=8, depth=18, auxiliary=False, disentangle=False, spatial_prompt=False))
    channels = [8, 8, 16, 32, 64]
    # FD: per scale a 1x1 conv from k channels and one from C - k channels, each back to C (with biases).
    assert n_params(full) - n_params(no_fd) == sum(c * c + 2 * c for c in channels)
    assert n_params(no_spm) == n_params(full)  # SPM has no weights ...
    assert n_params(no_fd) - n_params(plain) == n_params(full.background)

    # ... but with it, the segmentation depends on the background decoder.
    no_spm.load_state_dict(full.state_dict())
    x = torch.rand(1, 1, 64, 64)
    for net in (full, no_spm):
        net.eval()
        with torch.no_grad():
            before = net(x).segmentation.clone()
            net.background.head.bias += 5.0
            after = net(x).segmentation
            net.background.head.bias -= 5.0
        changed = not torch.allclose(before, after)
        assert changed is (net is full)


# --- losses -----------------------------------------------------------------------------------
def test_reversed_box_mask_is_one_exactly_outside_every_box():
    weak = np.zeros((40, 50), np.uint8)
    weak[np.arange(5, 15), np.arange(10, 20)] = 1  # a rough diagonal stroke: box x 10..19, y 5..14
    weak[30:33, 40:42] = 1  # a small blob: box x 40..41, y 30..32
    rev = reversed_box_mask(weak)
    expected = np.ones((40, 50), np.float32)
    expected[5:15, 10:20] = 0
    expected[30:33, 40:42] = 0
    np.testing.assert_array_equal(rev, expected)
    np.testing.assert_array_equal(reversed_box_mask(np.zeros((4, 6))), np.ones((4, 6)))


def test_perception_loss_rewards_uncertain_area_recall():
    loss = UncertainAreaPerceptionLoss()
    target = torch.ones(1, 1, 20, 20)
    target[..., 5:15, 5:15] = 0  # a box: 100 in-box (negative) pixels
    logits = torch.full_like(target, 20.0)  # background predicted outside ...
    logits[..., 5:15, 5:15] = -20.0  # ... and every in-box pixel predicted uncertain
    assert loss(logits, target).item() < 1e-6
    values = []
    for rows in (2, 5, 10):  # more and more in-box pixels predicted background (false positives)
        worse = logits.clone()
        worse[..., 5 : 5 + rows, 5:15] = 20.0
        values.append(loss(worse, target).item())
    assert values == sorted(values) and values[0] > 0.15 and values[-1] > 0.99
    np.testing.assert_allclose(values, [0.2, 0.5, 1.0], atol=1e-4)  # = FP / (TN + FP)
    outside = logits.clone()
    outside[..., :5, :] = -20.0  # outside the box predictions do not matter
    assert loss(outside, target).item() < 1e-6
    no_box = torch.ones(1, 1, 20, 20)  # an image without in-box pixels contributes nothing
    both = loss(torch.cat([worse, logits]), torch.cat([target, no_box]))
    assert both.item() == pytest.approx(1.0, abs=1e-4)


def test_pixel_position_aware_loss():
    ppa = PixelPositionAwareLoss(kernel_size=7, reduction="none")
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 10:20, 10:20] = 1
    w = ppa.weights(target)
    assert w[0, 0, 10, 10] > w[0, 0, 15, 15] and w[0, 0, 0, 0] == 1.0  # boundaries weigh more
    good, bad = (target * 2 - 1) * 8, (1 - target * 2) * 8
    per_image = ppa(torch.cat([good[:1], bad[:1]]), target)
    assert per_image.shape == (2,) and per_image[0] < 0.05 < 1.0 < per_image[1]
    with pytest.raises(ValueError, match="must both be"):
        ppa(good, target[:, :, :16])
    with pytest.raises(ValueError, match="odd"):
        PixelPositionAwareLoss(kernel_size=4)


def test_hybrid_loss_terms_follow_the_switches():
    net = XiongHybridNet(HybridConfig(width=4, depth=18))
    x, mask = torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:30, 20:30] = 1
    background = 1 - mask
    out = net(x)
    assert set(HybridLoss()(out, mask, background, torch.tensor([1.0, 0.0]))) == {"ppa_seg", "ppa_aux", "percept", "total"}
    terms = HybridLoss(perception=False)(out, mask, background, torch.tensor([1.0, 0.0]))
    assert set(terms) == {"ppa_seg", "ppa_aux", "total"}
    assert terms["total"].item() == pytest.approx(terms["ppa_seg"].item() + terms["ppa_aux"].item(), rel=1e-6)
    plain = XiongHybridNet(HybridConfig(width=4, depth=18, auxiliary=False, disentangle=False, spatial_prompt=False))
    assert set(HybridLoss()(plain(x), mask, background, torch.ones(2))) == {"ppa_seg", "total"}

    # Weak-only batch: the segmentation decoder gets no gradient, the background decoder does.
    net.zero_grad()
    terms = HybridLoss()(net(x), mask, background, torch.zeros(2))
    terms["total"].backward()
    assert terms["ppa_seg"].item() == 0.0
    assert net.segmentation.head.weight.grad.abs().sum() == 0
    assert net.background.head.weight.grad.abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = XiongHybridNet(HybridConfig(width=8, depth=18))
    x = torch.rand(4, 1, 64, 64) * 0.3
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask = torch.zeros(4, 1, 64, 64)
    for i, (cy, cx) in enumerate([(20, 20), (40, 30), (30, 45), (22, 40)]):
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).float()
        x[i, 0] += 0.6 * disk
        mask[i, 0] = disk
    background = torch.from_numpy(np.stack([reversed_box_mask(m[0].numpy())[None] for m in mask]))
    strong = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss_fn, opt = HybridLoss(kernel_size=7), torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(net(x), mask * strong[:, None, None, None], background, strong)["total"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses[-3:] == sorted(losses[-3:], reverse=True), losses


# --- labels and options -----------------------------------------------------------------------
def _records() -> list[ImageLabels]:
    recs = []
    for i in range(20):  # masked lesion images that also carry a box label (as MIAS imports them)
        recs.append(ImageLabels(f"m{i:02d}", f"/x/m{i}.png", f"p{i}", finding="malignant", mask_path="m.nrrd",
                                box_path="b.nrrd"))
    for i in range(10):  # box-only lesion images
        recs.append(ImageLabels(f"b{i:02d}", f"/x/b{i}.png", f"q{i}", finding="benign", box_path="b.nrrd"))
    for i in range(6):
        recs.append(ImageLabels(f"n{i:02d}", f"/x/n{i}.png", f"r{i}", finding="normal"))
    recs.append(ImageLabels("d00", "/x/d.png", "s0", finding="benign"))  # lesion finding without location
    return recs


def test_label_plan_counts_every_label_once():
    recs = _records()
    full = plan_labels(recs, HybridTrainOptions())
    assert full.report["strong_masks_used"] == 20 and full.report["weak_boxes_used"] == 10
    assert full.report["boxes_on_masked_images_not_counted"] == 20 and full.report["normals_skipped"] == 6
    assert full.report["lesion_findings_without_location_skipped"] == 1
    assert len(full.roles) == 30

    tenth = plan_labels(recs, HybridTrainOptions(strong_fraction=0.1))
    strong = {i for i, r in tenth.roles.items() if r == "strong"}
    assert len(strong) == 3 == tenth.report["strong_masks_used"]  # 10 % of 30 lesion images
    assert tenth.report["weak_boxes_used"] == 10 and tenth.report["weak_boxes_replacing_masks"] == 17
    assert tenth.report["masks_not_used"] == 17 and set(tenth.demoted) | strong == {r.image_id for r in recs[:20]}
    assert tenth.report["strong_fraction_actual"] == pytest.approx(0.1)

    only = plan_labels(recs, HybridTrainOptions(strong_fraction=0.1, mode="strong_only"))
    assert {i for i, r in only.roles.items()} == strong  # the same masks, no boxes
    assert only.report["boxes_skipped"] == 27 and only.report["weak_boxes_used"] == 0
    assert only.report["weak_boxes_replacing_masks"] == 0 and only.report["masks_not_used"] == 17
    other_seed = plan_labels(recs, HybridTrainOptions(strong_fraction=0.1, seed=1))
    assert {i for i, r in other_seed.roles.items() if r == "strong"} != strong

    with_normals = plan_labels(recs, HybridTrainOptions(normals=True))
    assert with_normals.report["normals_used"] == 6 and sum(r == "normal" for r in with_normals.roles.values()) == 6


@pytest.mark.parametrize("bad", [{"strong_fraction": 0.0}, {"strong_fraction": 1.5}, {"mode": "weak"},
                                 {"rows": 100}, {"threshold": 1.0}, {"batch_size": 0}])
def test_bad_options_are_refused(bad):
    with pytest.raises(InputError, match="train_hybrid"):
        HybridTrainOptions.parse(bad, "train_hybrid")


def test_string_options_are_coerced(tmp_path):
    opts = TrainHybrid(tmp_path).options({"strong_fraction": "0.1", "fd": "false", "epochs": "3", "mode": "strong_only"})
    assert opts["strong_fraction"] == 0.1 and opts["fd"] is False and opts["epochs"] == 3
    with pytest.raises(InputError, match="spm"):
        TrainHybrid(tmp_path).options({"spm": "maybe"})


def test_hybrid_dataset_targets(phantom_dir):
    records = [r for r in collect_labels(MammoDatastore(phantom_dir, read_only=True)).images if r.mask_path][:3]
    roles = {records[0].image_id: "strong", records[1].image_id: "weak", records[2].image_id: "weak"}
    data = HybridDataset(records, roles, (64, 64), crop_breast=True)
    strong, weak = data[0], data[1]
    assert strong["strong"] == 1 and strong["mask"].sum() > 0
    assert weak["strong"] == 0 and weak["mask"].sum() == 0  # a demoted mask never reaches Dec_s
    sample = data.base.samples[1]
    np.testing.assert_array_equal(weak["background"][0].numpy(), reversed_box_mask(sample.mask[0].numpy()))
    assert (weak["background"][0][sample.mask[0] > 0] == 0).all()


def test_init_encoder_from_another_checkpoint(tmp_path):
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = ResNetFeatures(18, 4)
            self.fc = torch.nn.Linear(32, 1)

    donor = Classifier()
    save_checkpoint(tmp_path / "donor.pt", donor)
    net = XiongHybridNet(HybridConfig(width=4, depth=18))
    copied = init_encoder(net, tmp_path / "donor.pt")
    assert copied == len(net.encoder.state_dict())
    assert torch.equal(net.encoder.stem[0].weight, donor.backbone.stem[0].weight)
    with pytest.raises(InputError, match="no ResNet encoder tensors match"):
        init_encoder(XiongHybridNet(HybridConfig(width=8, depth=18)), tmp_path / "donor.pt")


# --- training engine and CLI ------------------------------------------------------------------
def _train_args(studies: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "train_hybrid", "--studies", str(studies), "--out", str(out), "--device", "cpu"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)


def test_cli_train_resume_infer_evaluate(phantom_copy, tmp_path, capsys):
    out = tmp_path / "model" / "hybrid_segmentation.pt"
    assert cli(_train_args(phantom_copy, out, "--epochs", "1", "--set", "strong_fraction=0.5")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 1 and summary["labels"]["strong_masks_used"] >= 1
    assert summary["labels"]["weak_boxes_replacing_masks"] >= 1
    ckpt = load_checkpoint(out)
    assert ckpt["network"]["width"] == 4 and ckpt["frame"]["rows"] == 64 and ckpt["method"] == "xiong"
    assert ckpt["validation_images"] and set(ckpt["strong_images"]).isdisjoint(ckpt["validation_images"])

    assert cli(_train_args(phantom_copy, out, "--epochs", "2", "--set", "strong_fraction=0.5")) == 0  # resumes
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 2 and len(load_checkpoint(out.with_name("hybrid_segmentation.last.pt"))["history"]) == 2
    # Another width: the last checkpoint belongs to another network and is not resumed.
    assert cli(_train_args(phantom_copy, out, "--epochs", "1", "--set", "strong_fraction=0.5", "--set", "width=8")) == 0
    capsys.readouterr()
    assert len(load_checkpoint(out.with_name("hybrid_segmentation.last.pt"))["history"]) == 1
    assert load_checkpoint(out)["network"]["width"] == 8

    image = next(iter(sorted(phantom_copy.glob("phantom_*.png"))))
    assert cli(["infer", "hybrid_segmentation", str(image), "--checkpoint", str(out), "--out", str(tmp_path / "inf")]) == 0
    result = json.loads((tmp_path / "inf" / f"{image.stem}.hybrid_segmentation.json").read_text())
    assert 0 <= result["lesion_probability"] <= 1 and result["image_shape"] == [512, 416]

    evald = tmp_path / "eval"
    assert cli(["evaluate", "hybrid_segmentation", "--checkpoint", str(out), "--studies", str(phantom_copy),
                "--out", str(evald), "--split", "val"]) == 0
    metrics = json.loads((evald / "metrics.json").read_text())
    assert metrics["n_images"] == len(ckpt["validation_images"])
    assert metrics["n_dice"] == sum(1 for r in metrics["rows"] if "dice" in r) and "uncertain_recall_mean" in metrics


def test_cli_refuses_bad_training_requests(tmp_path, capsys):
    studies = tmp_path / "boxes_only"
    write_phantom_study(studies, n=6, seed=2, mask_fraction=0.0, dicom=False)
    assert cli(_train_args(studies, tmp_path / "m.pt", "--epochs", "1")) == 2
    assert "needs at least one" in capsys.readouterr().err
    assert cli(_train_args(studies, tmp_path / "m.pt", "--set", "strong_fraction=2")) == 2
    assert "strong_fraction must lie in (0, 1]" in capsys.readouterr().err


def test_benchmark_checkpoint_loads(tmp_path):
    HybridSegmentationInfer.write_benchmark_checkpoint(tmp_path)
    task = HybridSegmentationInfer(path=str(tmp_path / "hybrid_segmentation.pt"))
    net, ckpt = task.load("cpu")
    assert ckpt["frame"]["rows"] == 352 and n_params(net) == n_params(HybridSegmentationInfer.benchmark_module())


def test_without_validation_masks_the_latest_epoch_is_kept(phantom_copy, tmp_path, capsys):
    out = tmp_path / "hybrid_segmentation.pt"
    assert cli(_train_args(phantom_copy, out, "--epochs", "2", "--set", "val_fraction=0")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metric"] == "epoch_seen" and summary["best_epoch"] == 2
    assert load_checkpoint(out)["validation_images"] == []
