"""Dahl et al. classifier: network shapes, the paper's mechanisms, training stages, the infer task.

Mechanisms (issue 4): the centre of attention lands on a bright lesion planted in a phantom when
the gradients come from a model that responds to it; examination scores are the maximum over
breasts of the sum of the breast's view scores; the ROI maps back to the original image exactly.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from mammolabel.data.dataset import prepare
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import make_phantom
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.methods.dahl.analysis import analyse
from mammolabel.methods.dahl.evaluation import summarise_rows
from mammolabel.methods.dahl.options import DahlOptions
from mammolabel.methods.dahl.training import roi_inputs
from mammolabel.training.stages import stage_path
from mammolabel.evaluation.benchmark import flops
from mammolabel.evaluation.evaluate import evaluate
from mammolabel.errors import InputError, ModelNotTrainedError
from mammolabel.io import Mammogram, canonicalise, points_from_canonical, read_label, read_mammogram, write_grey_png
from mammolabel.methods.dahl.network import (
    DahlClassifier,
    DahlResNet,
    centre_of_attention,
    crop_rois,
    exam_risk,
    gradient_saliency,
    risk_score,
    roi_boxes,
)
from mammolabel.methods.dahl.inference import probability
from mammolabel.tasks import infer_tasks, train_tasks

ClassificationInfer = infer_tasks()["classification"]
ClassifierTrain = train_tasks()["train_classifier"]

#: A tiny configuration for CPU tests.
TINY = {"depth": 10, "width": 4, "input_rows": 96, "input_cols": 80, "roi_size": 48, "batch_size": 4, "lr": 1e-3}


def tiny_classifier(attention: bool = True, **overrides) -> DahlClassifier:
    options = DahlOptions(**{**TINY, **overrides})
    torch.manual_seed(0)
    return DahlClassifier(**options.network(attention=attention)).eval()


class BlobResponder(nn.Module):
    """A model that responds to bright disks of ``radius`` pixels: positive logit = summed squared excess
    of a zero-mean disk-minus-ring filter's response over ``threshold``; negative logit 0."""

    def __init__(self, radius: float, threshold: float = 0.3):
        super().__init__()
        r = int(2 * radius) + 1
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
        d = (xx**2 + yy**2).sqrt()
        disk, ring = (d <= radius).float(), ((d > radius) & (d <= 2 * radius)).float()
        self.register_buffer("kernel", (disk / disk.sum() - ring / ring.sum())[None, None])
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.shape[-1] // 2
        response = F.conv2d(F.pad(x, (k, k, k, k), mode="replicate"), self.kernel)
        positive = (F.relu(response - self.threshold) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(positive), positive], dim=1)


# --- network ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"depth": 10, "width": 4}, (2, 1, 64, 64)),
        ({"depth": 18, "width": 8}, (1, 1, 96, 64)),
        ({"depth": 50, "width": 4}, (2, 1, 64, 96)),
        ({"depth": 101, "width": 2}, (1, 1, 64, 64)),
    ],
)
def test_resnet_has_two_output_nodes(kwargs, shape):
    net = DahlResNet(**kwargs).eval()
    assert net(torch.rand(shape)).shape == (shape[0], 2)


def test_default_resnet_is_the_papers_resnet101():
    net = DahlResNet()
    assert [len(getattr(net.net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert net.net.conv1.in_channels == 1 and net.net.fc.out_features == 2
    with pytest.raises(ValueError, match="depth"):
        DahlResNet(depth=42)


@pytest.mark.parametrize(
    "kwargs, image, roi_side",
    [
        ({"input_size": (64, 48), "roi_size": 32, "roi_scale": 1.0}, (2, 1, 300, 200), 32),
        ({"input_size": (64, 64), "roi_size": 32, "roi_scale": 0.25}, (1, 1, 256, 256), 128),
        ({"input_size": (96, 64), "roi_size": 48, "roi_scale": 0.1}, (1, 1, 200, 150), 150),  # clamped to the image
        ({"input_size": (64, 64), "roi_size": 32, "attention": False}, (3, 1, 128, 128), 32),
    ],
)
def test_classifier_output_shapes(kwargs, image, roi_side):
    torch.manual_seed(0)
    model = DahlClassifier(depth=10, width=4, **kwargs).eval()
    out = model(torch.rand(image))
    b = image[0]
    assert out.holistic.shape == (b, 2) and out.saliency.shape == (b, 1, *kwargs["input_size"])
    assert out.coa.shape == (b, 2) and out.roi.shape == (b, 4)
    assert torch.all(out.roi[:, 2] - out.roi[:, 0] == roi_side) and torch.all(out.roi[:, 3] - out.roi[:, 1] == roi_side)
    assert torch.all(out.roi[:, :2] >= 0)
    assert torch.all(out.roi[:, 2] <= image[2]) and torch.all(out.roi[:, 3] <= image[3])
    if kwargs.get("attention", True):
        assert out.attention.shape == (b, 2) and out.ensemble.shape == (b,)
        assert torch.allclose(out.ensemble, (risk_score(out.holistic) + risk_score(out.attention)) / 2)
    else:
        assert out.attention is None and out.ensemble is None


def test_a_few_steps_reduce_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    net = DahlResNet(depth=10, width=8)
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 0, 1])
    x[y == 1, :, 20:40, 20:40] += 1.0  # positives carry a bright square
    losses = train_steps(net, x, y)
    assert losses[-1] < 0.7 * losses[0]


def train_steps(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 8) -> list[float]:
    """The cross-entropy losses of ``steps`` Adam steps on one batch."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_window_max_pooling_answers_the_most_suspicious_window_and_learns():
    torch.manual_seed(0)
    pooled = DahlResNet(depth=10, width=8, window=2)  # windows of 2 x 2 cells = 64 x 64 input pixels
    average = DahlResNet(depth=10, width=8)
    average.load_state_dict(pooled.state_dict())  # the same weights: only the pooling differs
    pooled.eval(), average.eval()
    patch = torch.rand(3, 1, 64, 64)
    assert torch.allclose(pooled(patch), average(patch), atol=1e-5)  # one window: the average pooling
    film = torch.rand(2, 1, 128, 96)
    logits = pooled(film)
    blocks = F.avg_pool2d(pooled.features(film), 2, stride=1).flatten(2).transpose(1, 2)
    risks = risk_score(pooled.net.fc(blocks).transpose(1, 2))  # (B, windows)
    assert logits.shape == (2, 2) and torch.allclose(risk_score(logits), risks.max(dim=1).values, atol=1e-5)

    x, y = torch.rand(4, 1, 128, 128), torch.tensor([0, 1, 0, 1])
    x[y == 1, :, 70:100, 10:40] += 1.0  # positives carry a bright square in one corner
    losses = train_steps(pooled.train(), x, y)
    assert losses[-1] < 0.7 * losses[0]


def test_attention_model_starts_from_the_holistic_weights():
    model = DahlClassifier(depth=10, width=4, input_size=(64, 64), roi_size=32, attention=False)
    model.init_attention()
    holistic, attention = model.holistic.state_dict(), model.attention.state_dict()
    assert holistic.keys() == attention.keys() and all(torch.equal(holistic[k], attention[k]) for k in holistic)
    next(model.attention.parameters()).data.add_(1.0)  # a copy, not the same module
    assert not torch.equal(next(model.attention.parameters()), next(model.holistic.parameters()))


# --- saliency and centre of attention ----------------------------------------------------------
def test_gradient_saliency_is_the_loss_gradient_magnitude_up_to_a_per_image_factor():
    torch.manual_seed(0)
    net = DahlResNet(depth=10, width=4).eval()
    x = torch.rand(2, 1, 64, 64)
    logits, saliency = gradient_saliency(net, x)
    assert torch.allclose(logits, net(x), atol=1e-6) and saliency.shape == x.shape and (saliency >= 0).all()
    pixels = x.clone().requires_grad_(True)
    loss = F.cross_entropy(net(pixels), torch.ones(2, dtype=torch.long), reduction="sum")  # positive class
    (grad,) = torch.autograd.grad(loss, pixels)
    p = torch.softmax(logits, 1)[:, 1]
    assert torch.allclose(grad.abs(), (1 - p)[:, None, None, None] * saliency, rtol=1e-4, atol=1e-9)
    with torch.inference_mode():  # as the server runs it
        _, again = gradient_saliency(net, x)
    assert torch.allclose(again, saliency)


def test_centre_of_attention_is_the_centroid_of_the_top_one_percent():
    saliency = torch.rand(1, 1, 100, 100) * 0.1
    saliency[0, 0, 10:12, 20:22] = 1.0  # 4 pixels centred on (20.5, 10.5)
    saliency[0, 0, 80:82, 60:64] = 2.0  # 8 pixels centred on (61.5, 80.5)
    coa = centre_of_attention(saliency, top_fraction=0.0012)  # 12 pixels: both squares
    assert coa[0].tolist() == pytest.approx([(4 * 20.5 + 8 * 61.5) / 12, (4 * 10.5 + 8 * 80.5) / 12])
    assert centre_of_attention(saliency, top_fraction=0.0008)[0].tolist() == pytest.approx([61.5, 80.5])
    with pytest.raises(ValueError):
        centre_of_attention(saliency, top_fraction=0)


@pytest.mark.parametrize("index", [1, 4])  # a left and a right (stored mirrored) normal phantom
def test_centre_of_attention_lands_on_a_planted_bright_lesion(index):
    phantom = make_phantom(index, seed=0)
    assert phantom.finding == "normal"
    rows, cols = phantom.pixels.shape
    rng = np.random.default_rng(index)
    cx, cy, radius = cols * rng.uniform(0.3, 0.5), rows * rng.uniform(0.35, 0.7), 14.0  # canonical position
    yy, xx = np.mgrid[:rows, :cols]
    lesion = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    if phantom.laterality == "R":  # stored with the chest wall on the right
        lesion = lesion[:, ::-1]
    stored = np.clip(phantom.pixels + 0.5 * lesion, 0, 1).astype(np.float32)
    image = canonicalise(Mammogram(stored, {}))
    assert image.meta["flipped"] == (phantom.laterality == "R")

    model = tiny_classifier(input_rows=256, input_cols=208)
    radius_input = radius * 256 / rows
    for responder, lands in ((BlobResponder(radius_input), True), (BlobResponder(radius_input / 4), False)):
        model.holistic = responder
        analysis = analyse(model, image.pixels)
        (x, y), = points_from_canonical([analysis.coa], image.meta["flipped"], cols)
        assert bool(lesion[int(round(y)), int(round(x))]) == lands, (x, y)
    # a model tuned to a disk four times smaller than the lesion finds no response and attends elsewhere


# --- ROI geometry ------------------------------------------------------------------------------
def test_roi_boxes_are_centred_and_moved_inside_the_image():
    coa = torch.tensor([[50.0, 40.0], [2.0, 3.0], [199.0, 99.0]])
    boxes = roi_boxes(coa, (100, 200), 21)
    assert boxes.tolist() == [[30, 40, 51, 61], [0, 0, 21, 21], [79, 179, 100, 200]]
    with pytest.raises(ValueError):
        roi_boxes(coa, (100, 200), 101)


@pytest.mark.parametrize("roi_scale", [1.0, 0.5])
def test_the_roi_maps_back_to_the_canonical_image_exactly(roi_scale):
    """The Attention model's input is the ROI frame's view of the full image, pixel for pixel."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((400, 300), np.float32)
    pixels[20:380, :250] = rng.random((360, 250))  # a "breast" with a dark border to crop away
    model = tiny_classifier(roi_scale=roi_scale)
    seen = []
    model.attention.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    analysis = analyse(model, pixels)
    roi = analysis.roi_frame
    side = round(model.roi_size / roi_scale)
    assert roi.size == (48, 48) and roi.crop[2] - roi.crop[0] == side and roi.crop[3] - roi.crop[1] == side
    assert torch.equal(seen[0][0, 0], torch.from_numpy(roi.to_input(pixels)))
    if roi_scale == 1.0:  # at the image's own resolution the ROI is a plain cut-out
        r0, c0, r1, c1 = roi.crop
        assert torch.equal(seen[0][0, 0], torch.from_numpy(pixels[r0:r1, c0:c1]))
    centre = roi.point_to_full((48 - 1) / 2, (48 - 1) / 2)
    inside = analysis.frame.crop  # the COA maps to the centre of the ROI unless the ROI was moved inside
    if roi.crop[0] > inside[0] and roi.crop[2] < inside[2] and roi.crop[1] > inside[1] and roi.crop[3] < inside[3]:
        assert centre == pytest.approx(analysis.coa, abs=0.5 / roi_scale + 0.5)
    assert crop_rois(torch.from_numpy(pixels)[None, None], torch.tensor([roi.crop]), 48).shape == (1, 1, 48, 48)


# --- examination scores --------------------------------------------------------------------------
def test_exam_risk_is_the_max_over_breasts_of_the_sum_of_views():
    views = [("L", 1.0), ("L", 0.8), ("R", 2.0), ("R", -1.0)]
    exam, breasts = exam_risk(views)
    assert breasts == pytest.approx({"L": 1.8, "R": 1.0})
    assert exam == pytest.approx(1.8)  # not the largest view (2.0), nor the sum (2.8), nor the mean
    assert exam_risk([("R", -0.5)])[0] == -0.5
    with pytest.raises(ValueError):
        exam_risk([])


# --- training -----------------------------------------------------------------------------------
def tiny_options(**overrides) -> dict:
    return {**TINY, "epochs": 2, "val_fraction": 0.5, "device": "cpu", "resume": True, **overrides}


def train_classifier(inventory, options: dict, out: Path) -> dict:
    """The train task's run on ``options`` as a request gives them, from random weights."""
    return ClassifierTrain(out.parent).run(inventory, options, out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_dir):
    """Both stages trained on the 12 phantoms (target malignant, half of the patients held back)."""
    out = tmp_path_factory.mktemp("dahl") / "classification.pt"
    summary = train_classifier(collect_labels(MammoDatastore(phantom_dir, read_only=True)), tiny_options(), out)
    return out, summary


def test_training_runs_both_stages_and_records_what_it_used(trained):
    out, summary = trained
    assert summary["holistic"]["epochs"] == 2 and summary["attention"]["epochs"] == 2
    assert summary["labels"]["used"] == 12 and summary["labels"]["skipped"] == 0
    assert summary["train_images"] + summary["val_images"] == 12
    # the attention stage scores the validation images with the holistic stage's best model, as that stage did
    assert summary["attention"]["holistic_auc"] == pytest.approx(summary["holistic"]["auc"])
    ckpt = load_checkpoint(out)
    assert ckpt["stage"] == "attention" and ckpt["network"]["attention"] is True and ckpt["target"] == "malignant"
    assert ckpt["network"]["input_size"] == [96, 80] and ckpt["network"]["top_fraction"] == 0.01
    assert len(ckpt["validation_images"]) == summary["val_images"] and ckpt["label_counts"]["needs"] == "finding"
    holistic = load_checkpoint(stage_path(out, "holistic"))
    assert holistic["stage"] == "holistic" and not any(k.startswith("attention.") for k in holistic["model"])
    # the Holistic weights are those of the holistic stage's best epoch; the Attention model was trained
    assert all(torch.equal(ckpt["model"][k], v) for k, v in holistic["model"].items())
    weights = [k[len("holistic."):] for k in holistic["model"] if k.endswith(".weight")]
    assert any(not torch.equal(ckpt["model"][f"attention.{k}"], holistic["model"][f"holistic.{k}"]) for k in weights)


def test_validation_split_is_patient_wise(trained, phantom_dir):
    out, _ = trained
    val = set(load_checkpoint(out)["validation_images"])
    records = collect_labels(MammoDatastore(phantom_dir, read_only=True)).images
    val_patients = {r.patient_id for r in records if r.image_id in val}
    assert val_patients and all((r.image_id in val) == (r.patient_id in val_patients) for r in records)


def test_evaluation_reproduces_the_validation_aucs_of_training(trained, phantom_dir, tmp_path):
    """The infer task scores the held-back images exactly as the attention stage's validation did."""
    out, summary = trained
    ckpt = load_checkpoint(out)
    metrics = evaluate(ClassificationInfer(path=str(out)), collect_labels(MammoDatastore(phantom_dir, read_only=True)),
                       tmp_path, image_ids=set(ckpt["validation_images"]))
    best = summary["attention"]
    aucs = metrics["auc_by_model"]["malignant_vs_rest"]
    assert aucs["attention"] == pytest.approx(best["auc"])
    assert aucs["holistic"] == pytest.approx(best["holistic_auc"])
    assert aucs["ensemble"] == pytest.approx(best["ensemble_auc"])
    assert metrics["ensemble_ge_holistic"] == (aucs["ensemble"] >= aucs["holistic"])
    assert metrics["n_images"] == len(ckpt["validation_images"]) and metrics["n_exams"] >= 1
    assert (tmp_path / "roc.png").is_file() and list(tmp_path.glob("worst_*.png"))


def test_rois_come_from_the_holistic_input_the_training_saw(phantom_dir):
    """Both stages orient an image alike, also when its recorded laterality overrules its pixels."""
    record = next(r for r in collect_labels(MammoDatastore(phantom_dir, read_only=True)).images if r.laterality == "L")
    model = tiny_classifier(attention=False)
    for laterality in ("L", "R"):
        record.laterality = laterality
        with torch.no_grad():
            expected = risk_score(model.holistic(prepare(record, model.input_size).image[None]))
        rois, risks = roi_inputs(model, [record], "test")
        assert risks[0] == pytest.approx(float(expected), abs=1e-5) and rois[0].shape == (1, 48, 48)


def test_stages_resume_and_attention_alone_needs_the_holistic_stage(trained, phantom_dir, tmp_path):
    out, _ = trained
    inventory = collect_labels(MammoDatastore(phantom_dir, read_only=True))
    before = load_checkpoint(out)["model"]
    train_classifier(inventory, tiny_options(), out)  # both stages finished: resumed, nothing trained
    after = load_checkpoint(out)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(InputError, match="stage=holistic"):
        train_classifier(inventory, tiny_options(stage="attention"), tmp_path / "fresh.pt")


def test_changed_options_restart_only_the_stages_they_concern(trained, phantom_dir, tmp_path):
    source, _ = trained
    out = tmp_path / "classification.pt"
    for path in source.parent.glob("classification*"):
        shutil.copy(path, tmp_path / path.name)
    inventory = collect_labels(MammoDatastore(phantom_dir, read_only=True))
    holistic = load_checkpoint(stage_path(out, "holistic"))["model"]

    # an attention-only option: the holistic stage is kept, the attention stage trains afresh
    summary = train_classifier(inventory, tiny_options(stage="attention", roi_size=32), out)
    assert all(torch.equal(holistic[k], v) for k, v in load_checkpoint(stage_path(out, "holistic"))["model"].items())
    assert load_checkpoint(out)["network"]["roi_size"] == 32 and summary["attention"]["epochs"] == 2
    with pytest.raises(InputError, match="same depth, width and input size"):
        train_classifier(inventory, tiny_options(stage="attention", width=8), out)

    # a network option: both stages train afresh (resuming would load weights of another shape)
    summary = train_classifier(inventory, tiny_options(width=8), out)
    assert summary["holistic"]["epochs"] == 2 and load_checkpoint(out)["network"]["width"] == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage": "everything"}, "stage must be one of"),
        ({"target": "benign"}, "target must be one of"),
        ({"depth": 42}, "depth must be one of"),
        ({"input_rows": 16}, "at least 32"),
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"pool": "max"}, "pool must be one of average, window_max"),
        ({"pool": "window_max", "window": 100}, "a window that is a multiple of 32"),
        ({"val_fraction": 0.0}, "no validation images"),
    ],
)
def test_bad_options_are_refused_with_a_message(phantom_dir, tmp_path, overrides, message):
    inventory = collect_labels(MammoDatastore(phantom_dir, read_only=True))
    with pytest.raises(InputError, match=message):
        train_classifier(inventory, tiny_options(**overrides), tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_a_datastore_without_positives_is_refused(phantom_copy, tmp_path):
    store = MammoDatastore(phantom_copy)
    for image_id in store.list_images():
        store.save_label(image_id, "", "finding", {"finding": "normal"})
    with pytest.raises(InputError, match="needs both malignant and other images"):
        train_classifier(collect_labels(store), tiny_options(), tmp_path / "c.pt")


def test_train_task_coerces_string_options(tmp_path):
    task = ClassifierTrain(tmp_path)
    opts = task.options({"depth": "18", "roi_scale": "0.5", "balance": "false", "stage": "holistic"})
    assert opts["depth"] == 18 and opts["roi_scale"] == 0.5 and opts["balance"] is False
    assert task.path == tmp_path / "classification.pt"
    with pytest.raises(InputError, match="width"):
        task.options({"width": "wide"})


# --- infer task ---------------------------------------------------------------------------------
def test_without_checkpoint_the_task_names_its_train_task(tmp_path):
    task = ClassificationInfer(path=str(tmp_path / "classification.pt"))
    with pytest.raises(ModelNotTrainedError, match="train_classifier"):
        task({"image": str(tmp_path / "x.png")})


@pytest.fixture()
def exam_store(tmp_path) -> Path:
    """Patient X with two left views and one right view, patient Y with one image."""
    store = MammoDatastore(tmp_path / "studies")
    for index, (image_id, patient, side) in enumerate(
        [("x_lcc", "X", "L"), ("x_lmlo", "X", "L"), ("x_rmlo", "X", "R"), ("y_lmlo", "Y", "L")]
    ):
        pixels = make_phantom(index, seed=2, shape=(256, 208)).pixels
        png = write_grey_png(tmp_path / f"{image_id}.png", pixels, bits=12)
        store.add_image(image_id, str(png), {"patient_id": patient, "laterality": side})
    return tmp_path / "studies"


def write_tiny_checkpoint(path: Path, **overrides) -> DahlClassifier:
    model = tiny_classifier(**overrides)
    model.train()
    with torch.no_grad():  # a few batch-norm updates, so that the images do not all score alike
        for _ in range(3):
            model.holistic(torch.rand(4, 1, 96, 80))
            model.attention(torch.rand(4, 1, 48, 48))
    config = DahlOptions(**{**TINY, **overrides}).network(attention=True)
    save_checkpoint(path, model, config=config, target="malignant", stage="attention", val_images=[])
    return model


def test_infer_returns_risks_saliency_levels_roi_and_exam(exam_store, tmp_path):
    write_tiny_checkpoint(tmp_path / "classification.pt")
    task = ClassificationInfer(path=str(tmp_path / "classification.pt"))
    task.datastore = MammoDatastore(exam_store, read_only=True)  # as the app serves it
    image = exam_store / "x_rmlo.png"
    label_file, result = task({"image": str(image), "image_id": "x_rmlo", "laterality": "R"})  # as the server asks
    labelmap = read_label(label_file)
    pixels = read_mammogram(image).pixels
    assert labelmap.shape == pixels.shape and labelmap.dtype == np.uint8
    assert set(np.unique(labelmap)) == {0, 1, 2, 3, 4}
    assert result["label_names"] == {"saliency_low": 1, "saliency_medium": 2, "saliency_high": 3, "attention_roi": 4}
    # levels get rarer upwards (top 20%, 5%, 1% of the breast) and stay inside the bright breast
    counts = [int((labelmap == v).sum()) for v in (1, 2, 3)]
    assert counts[0] > counts[1] > counts[2] > 0
    near_breast = ndimage.binary_dilation(pixels > 0.05, iterations=5)
    assert near_breast[(labelmap >= 1) & (labelmap <= 3)].all()

    for model in ("holistic", "attention", "ensemble"):
        assert result[f"{model}_probability"] == pytest.approx(1 / (1 + math.exp(-result[f"{model}_risk"])))
    assert result["ensemble_risk"] == pytest.approx((result["holistic_risk"] + result["attention_risk"]) / 2)
    assert result["model_used"] == "ensemble" and result["target"] == "malignant"

    # the ROI outline in the stored orientation is the JSON box, with the COA inside
    x0, y0, x1, y1 = result["roi"]
    assert result["boxes"][0]["box"] == [x0, y0, x1, y1] and x1 - x0 + 1 == 48 and y1 - y0 + 1 == 48
    assert (labelmap[y0, x0 : x1 + 1] == 4).all() and (labelmap[y1, x0 : x1 + 1] == 4).all()
    assert (labelmap[y0 : y1 + 1, x0] == 4).all() and (labelmap[y0 : y1 + 1, x1] == 4).all()
    assert not (labelmap[:y0] == 4).any() and not (labelmap[:, x1 + 1 :] == 4).any()
    coa = result["coa"]
    assert x0 <= coa["x"] <= x1 and y0 <= coa["y"] <= y1
    assert result["points"][0]["x"] == pytest.approx(coa["x"]) and result["points"][0]["name"] == "centre_of_attention"

    # the examination: max over breasts of the sum of that breast's view risks, each as scored alone
    alone = {i: task({"image": str(exam_store / f"{i}.png"), "image_id": i, "exam": "false", "laterality": side})[1]
             for i, side in (("x_lcc", "L"), ("x_lmlo", "L"), ("x_rmlo", "R"))}
    assert all(r["exam"] is None for r in alone.values())
    exam = result["exam"]
    assert exam["patient_id"] == "X" and [v["image_id"] for v in exam["views"]] == ["x_lcc", "x_lmlo", "x_rmlo"]
    for model in ("holistic", "attention", "ensemble"):
        left = alone["x_lcc"][f"{model}_risk"] + alone["x_lmlo"][f"{model}_risk"]
        right = alone["x_rmlo"][f"{model}_risk"]
        assert exam["breast_risk"][model] == pytest.approx({"L": left, "R": right})
        assert exam[f"{model}_risk"] == pytest.approx(max(left, right))
    assert task({"image": str(exam_store / "y_lmlo.png"), "image_id": "y_lmlo"})[1]["exam"] is None  # a single image
    assert task({"image": str(image)})[1]["exam"] is None  # an image not named in the datastore (the CLI's)


def test_probability_is_the_sigmoid_of_the_risk_even_for_extreme_risks():
    assert probability(0.0) == 0.5 and probability(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert probability(-1000.0) == 0.0 and probability(1000.0) == 1.0 and probability(None) is None


def test_holistic_only_checkpoint_serves_the_holistic_score(tmp_path, exam_store):
    model = tiny_classifier()
    model.attention = None
    config = DahlOptions(**TINY).network(attention=False)
    save_checkpoint(tmp_path / "h.pt", model, config=config, target="abnormal", stage="holistic")
    task = ClassificationInfer(path=str(tmp_path / "h.pt"))
    task.datastore = MammoDatastore(exam_store, read_only=True)
    _, result = task({"image": str(exam_store / "x_lcc.png"), "image_id": "x_lcc"})
    assert result["model_used"] == "holistic" and result["stage"] == "holistic" and result["target"] == "abnormal"
    assert result["attention_risk"] is None and result["ensemble_probability"] is None
    assert result["exam"]["holistic_risk"] is not None and result["exam"]["ensemble_risk"] is None


def test_summary_rows_compare_models_per_image_and_per_exam():
    rows = [
        {"finding": "malignant", "target": "malignant", "holistic_score": 0.2, "attention_score": 0.9,
         "ensemble_score": 0.55, "exam_id": "A", "exam_holistic_score": 0.2, "exam_attention_score": 0.9,
         "exam_ensemble_score": 0.55, "roi_hit": True},
        {"finding": "benign", "target": "malignant", "holistic_score": 0.5, "attention_score": 0.1,
         "ensemble_score": 0.3, "exam_id": "B", "exam_holistic_score": 0.5, "exam_attention_score": 0.1,
         "exam_ensemble_score": 0.3, "roi_hit": False},
        {"finding": "normal", "target": "malignant", "holistic_score": 0.1, "attention_score": 0.2,
         "ensemble_score": 0.15, "exam_id": "B", "exam_holistic_score": 0.5, "exam_attention_score": 0.1,
         "exam_ensemble_score": 0.3},
    ]
    s = summarise_rows(rows)
    assert s["target_question"] == "malignant_vs_rest"
    assert s["auc_by_model"]["malignant_vs_rest"] == {"holistic": 0.5, "attention": 1.0, "ensemble": 1.0}
    assert s["auc_by_model"]["benign_vs_malignant"] == {"holistic": 0.0, "attention": 1.0, "ensemble": 1.0}
    assert s["exam_auc_by_model"]["malignant_vs_rest"] == {"holistic": 0.0, "attention": 1.0, "ensemble": 1.0}
    assert s["n_exams"] == 2 and s["ensemble_ge_holistic"] is True and s["roi_hit_rate"] == 0.5


def test_flops_count_the_saliency_backward_pass():
    model = tiny_classifier()
    total = flops(model, (1, 1, 300, 200))
    forward = flops(model.holistic, (1, 1, 96, 80)) + flops(model.attention, (1, 1, 48, 48))
    assert total > 1.5 * forward  # the gradient of the Holistic model costs about two of its forward passes


def test_benchmark_hooks_build_the_papers_configuration(tmp_path):
    module = ClassificationInfer.benchmark_module()
    assert module.input_size == (976, 976) and module.roi_size == 976 and module.attention is not None
    assert len(module.holistic.net.layer3) == 23  # ResNet-101
    ClassificationInfer.write_benchmark_checkpoint(tmp_path)
    ckpt = load_checkpoint(tmp_path / "classification.pt")
    assert ckpt["network"]["depth"] == 101 and ckpt["stage"] == "attention"
    assert DahlClassifier(**ckpt["network"]).load_state_dict(ckpt["model"]) is not None
