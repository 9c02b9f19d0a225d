"""Engine of the Dahl et al. classifier: training stages, image analysis, exam scores, evaluation rows.

Everything the ``classification`` infer task and the ``train_classifier`` train task share (the
CLI and the server call the same functions). See :mod:`mammolabel.methods.dahl.network` for the model.

Training (§3, §4.2) is two stages with image-level findings only:

* ``holistic``: the Holistic ResNet on whole images (cropped to the breast, resized to the input
  size), randomly flipped, rotated and cropped; two-class cross-entropy.
* ``attention``: the trained Holistic model picks each image's centre of attention; the Attention
  model, initialised from the Holistic weights, is trained on the ROIs with the same transforms.

Each stage runs :func:`mammolabel.training.loop.fit` into its own checkpoint (``<out>.holistic.pt``,
``<out>.attention.pt``, each resumable); the last stage run is copied to ``out``, the file the infer
task serves, with the network configuration, the target, the label usage and the validation images.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.dataset import MammoDataset
from mammolabel.data.datastore import LabelInventory, MammoDatastore
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.distributed import main_only
from mammolabel.training.loop import FitOptions, FitResult, fit, last_path, resolve_device, write_stats
from mammolabel.training.progress import Progress
from mammolabel.errors import InputError
from mammolabel.io import atomic_path, canonicalise, read_mammogram
from mammolabel.io.orientation import body_mask
from mammolabel.metrics import auc, point_hits
from mammolabel.methods.dahl.network import DEPTHS, DahlClassifier, exam_risk, risk_score
from mammolabel.transforms.geometry import Frame, make_frame

logger = logging.getLogger("mammolabel")

STAGES = ("holistic", "attention", "both")
#: Options that only the attention stage uses (changing them does not retrain the holistic stage).
ATTENTION_ONLY = ("roi_size", "roi_scale", "top_fraction")
TARGETS = ("malignant", "abnormal")
MODELS = ("holistic", "attention", "ensemble")

#: Labelmap values of the ``classification`` task.
LABELS = {"saliency_low": 1, "saliency_medium": 2, "saliency_high": 3, "attention_roi": 4}
#: Saliency quantiles inside the breast where the low, medium and high levels start (high = top 1%,
#: the share of pixels whose centroid is the COA).
SALIENCY_LEVELS = (0.80, 0.95, 0.99)
#: Gaussian smoothing of the saliency map for display, as a fraction of the input size.
SALIENCY_SMOOTHING = 0.01
#: MONAI Label's index file of a local datastore (how an image's folder is recognised as one).
DATASTORE_INDEX = "datastore_v2.json"


@dataclass
class DahlOptions:
    """Options of ``train_classifier``. Defaults are the paper's setting (§4.2); reduce sizes on a CPU.

    Attributes:
        stage: ``holistic``, ``attention`` (needs a finished holistic stage) or ``both``.
        target: ``malignant`` (malignant vs benign and normal, the paper's cancer vs rest) or
            ``abnormal`` (benign or malignant vs normal).
        depth, width: ResNet depth and first-stage width (the paper: ResNet-101, 64).
        input_rows, input_cols: the Holistic model's input (the paper: 976 x 976).
        roi_size: side of the Attention model's input (the paper: 976).
        roi_scale: ROI pixels per image pixel (1.0: the image's own resolution).
        top_fraction: share of most salient pixels whose centroid is the COA (the paper: 1%).
        batch_size: the paper: 4.
        lr, weight_decay: Adam (the paper does not say which optimiser it used).
        balance: weight the cross-entropy by inverse class frequency (positives are rare).
        augment: random vertical flips, rotations (``rotate_deg``) and crops (scale and shift).
        attention_epochs: epochs of the attention stage (0: the same as ``epochs``).
    """

    stage: str = "both"
    target: str = "malignant"
    depth: int = 101
    width: int = 64
    input_rows: int = 976
    input_cols: int = 976
    roi_size: int = 976
    roi_scale: float = 1.0
    top_fraction: float = 0.01
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    balance: bool = True
    augment: bool = True
    rotate_deg: float = 10.0
    attention_epochs: int = 0

    def check(self) -> None:
        """Raise :class:`InputError` for option values the engine cannot use."""
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage must be one of {', '.join(STAGES)}")
        if self.target not in TARGETS:
            problems.append(f"target must be one of {', '.join(TARGETS)}")
        if self.depth not in DEPTHS:
            problems.append(f"depth must be one of {', '.join(map(str, DEPTHS))}")
        if min(self.width, self.input_rows, self.input_cols, self.roi_size, self.batch_size) < 1:
            problems.append("width, input_rows, input_cols, roi_size and batch_size must be positive")
        if min(self.input_rows, self.input_cols, self.roi_size) < 32:
            problems.append("input_rows, input_cols and roi_size must be at least 32 (the ResNet's stride)")
        if self.roi_scale <= 0 or self.lr <= 0:
            problems.append("roi_scale and lr must be positive")
        if not 0 < self.top_fraction <= 1:
            problems.append("top_fraction must lie in (0, 1]")
        if problems:
            raise InputError("train_classifier: " + "; ".join(problems))

    def network(self, attention: bool) -> dict[str, Any]:
        """Keyword arguments of :class:`DahlClassifier` (stored in checkpoints as ``config``)."""
        return {"depth": self.depth, "width": self.width, "input_size": [self.input_rows, self.input_cols],
                "roi_size": self.roi_size, "roi_scale": self.roi_scale, "top_fraction": self.top_fraction,
                "attention": attention}


def options_from(values: dict[str, Any]) -> DahlOptions:
    """The :class:`DahlOptions` part of a train task's option dict, checked."""
    opts = DahlOptions(**{f.name: values[f.name] for f in fields(DahlOptions) if f.name in values})
    opts.check()
    return opts


def stage_path(out: Path, stage: str) -> Path:
    """Checkpoint of one training stage, beside ``out``."""
    return out.with_name(f"{out.stem}.{stage}.pt")


# --- analysis of one image (inference, ROI extraction, exam views) ------------------------------
@dataclass
class Analysis:
    """The model's view of one canonical image.

    Attributes:
        frame: the Holistic model's input frame (breast crop resized to the input size).
        roi_frame: the ROI (canonical full-image pixels) resized to the Attention model's input.
        saliency: (h, w) gradient magnitude at the Holistic model's input size.
        coa: centre of attention (x, y) in canonical full-image pixels.
        holistic, attention, ensemble: risk scores (attention and ensemble None for a Holistic-only model).
    """

    frame: Frame
    roi_frame: Frame
    saliency: np.ndarray
    coa: tuple[float, float]
    holistic: float
    attention: float | None
    ensemble: float | None

    def risk(self, model: str) -> float | None:
        return getattr(self, model)

    @property
    def main(self) -> str:
        """The best model available: the Ensemble when there is an Attention model, else the Holistic."""
        return "holistic" if self.ensemble is None else "ensemble"


def network_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def analyse(model: DahlClassifier, pixels: np.ndarray) -> Analysis:
    """Run the paper's pipeline on one canonical (rows, cols) image in [0, 1] (model in eval mode)."""
    frame = make_frame(pixels, model.input_size, crop_breast=True)
    r0, c0, r1, c1 = frame.crop
    crop = torch.from_numpy(np.ascontiguousarray(pixels[r0:r1, c0:c1], dtype=np.float32))[None, None]
    with torch.no_grad():  # the saliency step records its own gradients
        out = model(crop.to(network_device(model)))
    b0, a0, b1, a1 = (int(v) for v in out.roi[0])
    roi_frame = Frame(crop=(r0 + b0, c0 + a0, r0 + b1, c0 + a1), size=(model.roi_size, model.roi_size),
                      full_shape=frame.full_shape)
    x, y = (float(v) for v in out.coa[0])

    def value(t: torch.Tensor | None) -> float | None:
        return None if t is None else float(t.reshape(-1)[0])

    return Analysis(
        frame=frame,
        roi_frame=roi_frame,
        saliency=out.saliency[0, 0].float().cpu().numpy(),
        coa=(c0 + x, r0 + y),
        holistic=value(risk_score(out.holistic)),
        attention=None if out.attention is None else value(risk_score(out.attention)),
        ensemble=value(out.ensemble),
    )


def saliency_maps(analysis: Analysis, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labelmap and heatmap of an analysed canonical image.

    The labelmap holds the smoothed saliency in three levels inside the breast (quantiles
    :data:`SALIENCY_LEVELS` of the breast's values) and the ROI outline (:data:`LABELS`); the
    heatmap is the smoothed saliency scaled to [0, 1].
    """
    sigma = SALIENCY_SMOOTHING * max(analysis.frame.size)
    smooth = ndimage.gaussian_filter(analysis.saliency.astype(np.float32), sigma)
    heat = analysis.frame.to_full(smooth / max(float(smooth.max()), 1e-12))
    mask, _ = body_mask(pixels)
    mask = torch.from_numpy(mask)[None, None].float()
    breast = F.interpolate(mask, size=pixels.shape, mode="nearest")[0, 0].numpy() > 0
    labelmap = np.zeros(pixels.shape, np.uint8)
    if breast.any():
        levels = np.quantile(heat[breast], SALIENCY_LEVELS)
        labelmap[breast] = np.digitize(heat[breast], levels).astype(np.uint8)
    r0, c0, r1, c1 = analysis.roi_frame.crop
    t = max(1, round(max(pixels.shape) / 400))
    roi = LABELS["attention_roi"]
    labelmap[r0 : r0 + t, c0:c1] = roi
    labelmap[r1 - t : r1, c0:c1] = roi
    labelmap[r0:r1, c0 : c0 + t] = roi
    labelmap[r0:r1, c1 - t : c1] = roi
    return labelmap, heat


# --- examination scores (§3.4) --------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """One image of an examination, with the risk scores of the three models."""

    image_id: str
    side: str
    holistic: float
    attention: float | None
    ensemble: float | None


def image_side(meta: dict[str, Any], info: dict[str, Any] | None = None) -> str:
    """Breast side: the datastore's image info, else the file's laterality, else the chest-wall side.

    Viewers hang a right breast with its chest wall on the right, so an image that canonical
    orientation had to flip is a right breast.
    """
    side = (info or {}).get("laterality") or meta.get("laterality")
    return str(side).upper()[:1] if side else ("R" if meta.get("flipped") else "L")


def exam_images(image_path: str) -> tuple[str, str, list[tuple[str, str, dict[str, Any]]]] | None:
    """The examination of the image at ``image_path`` in the local datastore holding it.

    Returns (image id, patient id, [(image id, path, image info) of every image of that patient]),
    or None when the image is not in a local datastore or has no patient id.
    """
    folder = Path(image_path).resolve().parent
    if not (folder / DATASTORE_INDEX).is_file():
        return None
    store = MammoDatastore(folder, read_only=True)
    target = Path(image_path).resolve()
    images = {i: store.get_image_uri(i) for i in store.list_images()}
    found = next((i for i, uri in images.items() if uri and Path(uri).resolve() == target), None)
    patient = store.get_image_info(found).get("patient_id") if found else None
    if not patient:
        return None
    infos = {i: store.get_image_info(i) for i in sorted(images)}
    views = [(i, images[i], info) for i, info in infos.items() if info.get("patient_id") == patient]
    return found, str(patient), views


def exam_summary(patient_id: str, views: list[View]) -> dict[str, Any]:
    """Examination risk of each model: max over breasts of the sum of the breast's view risks (§3.4)."""
    summary: dict[str, Any] = {"patient_id": patient_id, "views": [asdict(v) for v in views], "breast_risk": {}}
    for model in MODELS:
        risks = [(v.side, getattr(v, model)) for v in views]
        if any(r is None for _, r in risks):
            summary[f"{model}_risk"] = None
            continue
        summary[f"{model}_risk"], summary["breast_risk"][model] = exam_risk(risks)
    return summary


# --- evaluation rows --------------------------------------------------------------------------
def positive(record: ImageLabels, target: str) -> bool | None:
    """Truth of the training target for a record (None without a finding)."""
    return record.malignant if target == "malignant" else record.abnormal


def evaluation_row(record: ImageLabels, result: dict[str, Any]) -> dict[str, Any]:
    """Per-image evaluation row of a ``classification`` result (original orientation)."""
    main = result["model_used"]
    row: dict[str, Any] = {
        "score": result[f"{main}_risk"],
        "abnormal_score": result[f"{main}_risk"],
        "target": result["target"],
        **{f"{m}_score": result[f"{m}_risk"] for m in MODELS},
    }
    truth = positive(record, result["target"])
    if truth is not None:
        p = result[f"{main}_probability"]
        row["confidence"] = p if truth else 1 - p
    exam = result.get("exam")
    if exam:
        row["exam_id"] = exam["patient_id"]
        row.update({f"exam_{m}_score": exam[f"{m}_risk"] for m in MODELS})
    coa = (result["coa"]["x"], result["coa"]["y"])
    circles = [(p[0], p[1], r) for p, r in zip(record.points, record.radii)]
    if record.boxes or circles:
        row["hit"] = point_hits(coa, boxes=record.boxes, circles=circles)
    if record.points:
        x0, y0, x1, y1 = result["roi"]
        row["roi_hit"] = any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in record.points)
    return row


#: The ROC questions of the evaluation: a finding's truth, or None where the question does not apply.
QUESTIONS = {
    "malignant_vs_rest": lambda finding: finding == "malignant",
    "normal_vs_abnormal": lambda finding: finding != "normal",
    "benign_vs_malignant": lambda finding: None if finding == "normal" else finding == "malignant",
}


def model_aucs(items: list[tuple[dict[str, Any], bool]], prefix: str = "") -> dict[str, float | None]:
    """AUC of each model's ``<prefix><model>_score`` over (row, truth) pairs (models without scores left out)."""
    return {m: auc([r[f"{prefix}{m}_score"] for r, _ in items], [t for _, t in items])
            for m in MODELS if items and all(r.get(f"{prefix}{m}_score") is not None for r, _ in items)}


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """AUC of each model on each question, per image and per examination, and the ROI hit rate.

    An examination is positive when one of its images is; it is left out of a question that does
    not apply to one of its images.
    """
    exams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("exam_id") and r.get("finding"):
            exams[r["exam_id"]].append(r)
    by_image, by_exam = {}, {}
    for question, truth_of in QUESTIONS.items():
        images = [(r, t) for r in rows if r.get("finding") and (t := truth_of(r["finding"])) is not None]
        exam_items = []
        for exam in exams.values():
            truths = [truth_of(r["finding"]) for r in exam]
            if None not in truths:
                exam_items.append((exam[0], any(truths)))
        by_image[question], by_exam[question] = model_aucs(images), model_aucs(exam_items, "exam_")
    target = rows[0]["target"] if rows else "malignant"
    question = "malignant_vs_rest" if target == "malignant" else "normal_vs_abnormal"
    holistic, ensemble = by_image[question].get("holistic"), by_image[question].get("ensemble")
    roi_hits = [float(r["roi_hit"]) for r in rows if r.get("roi_hit") is not None]
    return {
        "target_question": question,
        "auc_by_model": by_image,
        "exam_auc_by_model": by_exam,
        "n_exams": len(exams),
        "ensemble_ge_holistic": None if holistic is None or ensemble is None else ensemble >= holistic,
        "roi_hit_rate": float(np.mean(roi_hits)) if roi_hits else None,
    }


# --- training ----------------------------------------------------------------------------------
def augmentation(opts: DahlOptions, size: tuple[int, int], seed: int) -> Compose:
    """Random vertical flips, rotations and crops (scale and shift) of ``image`` (§4.2).

    Horizontal flips are left out: every network input keeps the chest wall on the left.
    """
    transform = Compose([
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        RandAffined(keys="image", prob=1.0, rotate_range=(math.radians(opts.rotate_deg),), scale_range=(0.1, 0.1),
                    translate_range=(0.05 * size[0], 0.05 * size[1]), padding_mode="zeros"),
        EnsureTyped(keys="image", track_meta=False),
    ])
    transform.set_random_state(seed)
    return transform


class LabelledImages(Dataset):
    """Network inputs (1, h, w) with their targets as dicts ``{"image", <target>}``, optionally transformed.

    (A MONAI ``Compose`` must be tested with ``is not None``: its truth value builds a new
    ``Compose``, which reseeds the shared random transforms and breaks reproducibility.)
    """

    def __init__(self, images: list[torch.Tensor], targets: list[float], target: str, transform: Compose | None = None):
        self.images, self.targets, self.target, self.transform = images, targets, target, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index], self.target: torch.tensor(self.targets[index])}
        return self.transform(item) if self.transform is not None else item


def class_weights(targets: list[float], balance: bool) -> torch.Tensor:
    """Cross-entropy weights (negative, positive): inverse class frequency when ``balance``."""
    n_pos = sum(targets)
    n_neg = len(targets) - n_pos
    if not balance:
        return torch.ones(2)
    return torch.tensor([len(targets) / (2 * n_neg), len(targets) / (2 * n_pos)], dtype=torch.float32)


def risks_of(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Risk scores of a ResNet on (N, 1, h, w) images, in batches on the network's device."""
    device = network_device(net)
    return np.concatenate([risk_score(net(images[i : i + batch_size].to(device))).float().cpu().numpy()
                           for i in range(0, len(images), batch_size)])


def _loader(dataset: Dataset, batch_size: int, seed: int):
    """``batches(epoch)``, shuffled in an order fixed by ``seed`` and the epoch, and the number of batches."""

    def batches(epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)

    return batches, math.ceil(len(dataset) / batch_size)


def _split(inventory: LabelInventory, opts: DahlOptions, val_fraction: float, seed: int):
    records, report = inventory.select("finding")
    train, val = split_by_patient(records, val_fraction, seed)
    truths = [positive(r, opts.target) for r in train]
    if not any(truths) or all(truths):
        raise InputError(
            f"train_classifier: the training split needs both {opts.target} and other images "
            f"({sum(truths)} of {len(train)} are {opts.target}; {report['used']} images have a finding, "
            f"{report['skipped']} have none); add findings, or choose target=abnormal or another val_fraction"
        )
    if not val:
        raise InputError(f"train_classifier: no validation images with val_fraction={val_fraction} "
                         f"({len(records)} images with a finding); raise val_fraction or add findings")
    return train, val, report


def risk_metrics(risk: np.ndarray, truth: list[bool], prefix: str = "") -> dict[str, float]:
    """Validation metrics of risk scores: minus their cross-entropy, and their AUC when both classes are present."""
    risk = np.asarray(risk, np.float64)
    metrics = {f"{prefix}neg_val_loss": -float(np.mean(np.logaddexp(0.0, np.where(truth, -risk, risk))))}
    value = auc(risk, truth)
    if value is not None:
        metrics[f"{prefix}auc"] = value
    return metrics


def selection_metric(truth: list[bool]) -> str:
    """The validation AUC picks the best epoch; minus the loss when the validation images are of one class."""
    if any(truth) and not all(truth):
        return "auc"
    logger.warning("train_classifier: the validation images are all of one class; the best epoch is chosen "
                   "by validation loss, and no AUC is reported")
    return "neg_val_loss"


def restart_if_changed(out: Path, signature: dict[str, Any]) -> None:
    """Forget a stage's previous run (its ``.last.pt``) when it was made with other settings.

    Resuming continues a run only with the same options, validation images and, for the attention
    stage, the same Holistic model; anything else would mix two trainings.
    """
    last = last_path(out)
    if last.exists() and load_checkpoint(last).get("signature") != signature:
        logger.info(f"train_classifier: {out.name} was trained with other settings; this stage starts afresh")
        main_only(last.unlink)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit_options(values: dict[str, Any], epochs: int) -> FitOptions:
    return FitOptions(epochs=epochs, device=str(values.get("device", "auto")), resume=bool(values.get("resume", True)))


def train_holistic(train: list[ImageLabels], val: list[ImageLabels], opts: DahlOptions, fit_opts: FitOptions,
                   out: Path, meta: dict[str, Any], seed: int) -> FitResult:
    """Stage 1: the Holistic model on whole images (§3.1)."""
    torch.manual_seed(seed)
    size = (opts.input_rows, opts.input_cols)
    model = DahlClassifier(**opts.network(attention=False))
    train_truth = [float(positive(r, opts.target)) for r in train]
    train_images = [s.image for s in MammoDataset(train, size, crop_breast=True).samples]
    transform = augmentation(opts, size, seed) if opts.augment else None
    train_ds = LabelledImages(train_images, train_truth, opts.target, transform)
    val_images = torch.stack([s.image for s in MammoDataset(val, size, crop_breast=True).samples])
    val_truth = [bool(positive(r, opts.target)) for r in val]
    weights = class_weights(train_truth, opts.balance)
    batches, steps = _loader(train_ds, opts.batch_size, seed)

    def step(model: DahlClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model.holistic(batch["image"])
        return F.cross_entropy(logits.float(), batch[opts.target].long(), weight=weights.to(logits.device))

    def validate(model: DahlClassifier) -> dict[str, float]:
        return risk_metrics(risks_of(model.holistic, val_images, opts.batch_size), val_truth)

    optimizer = torch.optim.Adam(model.holistic.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    signature = {k: v for k, v in meta["signature"].items() if k not in ATTENTION_ONLY}
    meta = {**meta, "signature": signature}
    restart_if_changed(out, signature)
    return fit(model, optimizer, batches, steps, step, validate, selection_metric(val_truth), out, fit_opts,
               meta={**meta, "stage": "holistic", "config": opts.network(attention=False)}, desc="holistic")


def roi_inputs(model: DahlClassifier, records: list[ImageLabels], desc: str) -> tuple[list[torch.Tensor], list[float]]:
    """Each image's ROI at the Attention model's input size, and its Holistic risk (model in eval mode)."""
    rois, risks = [], []
    progress = Progress(len(records), desc, every_s=15)
    with torch.no_grad():
        for record in records:
            pixels = canonicalise(read_mammogram(record.image_path), record.laterality).pixels
            analysis = analyse(model, pixels)
            rois.append(torch.from_numpy(analysis.roi_frame.to_input(pixels))[None])
            risks.append(analysis.holistic)
            progress.update()
    return rois, risks


def train_attention(train: list[ImageLabels], val: list[ImageLabels], opts: DahlOptions, fit_opts: FitOptions,
                    holistic: Path, out: Path, meta: dict[str, Any], seed: int) -> FitResult:
    """Stage 2: ROIs from the Holistic model's COA; the Attention model starts from its weights (§3.2, §4.2)."""
    if not holistic.is_file():
        raise InputError(f"train_classifier: stage 'attention' needs the holistic stage's checkpoint {holistic}; "
                         "run stage=holistic (or both) first")
    ckpt = load_checkpoint(holistic)
    config = opts.network(attention=False)
    trained = {k: ckpt["config"][k] for k in ("depth", "width", "input_size")}
    if trained != {k: config[k] for k in trained}:
        raise InputError(f"train_classifier: the holistic stage was trained with {trained}; train the attention "
                         "stage with the same depth, width and input size, or run stage=both")
    model = DahlClassifier(**config)
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(fit_opts.device)).eval()
    train_rois, _ = roi_inputs(model, train, "attention ROIs (train)")
    val_rois, val_holistic = roi_inputs(model, val, "attention ROIs (validation)")
    model.init_attention()
    model.holistic.requires_grad_(False)

    train_truth = [float(positive(r, opts.target)) for r in train]
    val_truth = [bool(positive(r, opts.target)) for r in val]
    size = (model.roi_size, model.roi_size)
    transform = augmentation(opts, size, seed) if opts.augment else None
    train_ds = LabelledImages(train_rois, train_truth, opts.target, transform)
    val_images = torch.stack(val_rois)
    weights = class_weights(train_truth, opts.balance)
    batches, steps = _loader(train_ds, opts.batch_size, seed)

    def step(model: DahlClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model.attention(batch["image"])
        return F.cross_entropy(logits.float(), batch[opts.target].long(), weight=weights.to(logits.device))

    def validate(model: DahlClassifier) -> dict[str, float]:
        attention = risks_of(model.attention, val_images, opts.batch_size)
        holistic = np.asarray(val_holistic)
        return {**risk_metrics(attention, val_truth), **risk_metrics(holistic, val_truth, "holistic_"),
                **risk_metrics((holistic + attention) / 2, val_truth, "ensemble_")}

    optimizer = torch.optim.Adam(model.attention.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    config["attention"] = True
    meta = {**meta, "signature": {**meta["signature"], "holistic": file_digest(holistic)}}
    restart_if_changed(out, meta["signature"])
    return fit(model, optimizer, batches, steps, step, validate, selection_metric(val_truth), out, fit_opts,
               meta={**meta, "stage": "attention", "config": config}, desc="attention")


def stage_summary(result: FitResult) -> dict[str, Any]:
    """Best epoch of a stage with its validation metrics."""
    best = result.history[result.best_epoch - 1]
    metrics = {k: v for k, v in best.items() if k != "epoch"}
    return {"best_epoch": result.best_epoch, "epochs": result.epochs_run, **metrics}


def train_classifier(inventory: LabelInventory, values: dict[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """Run the stages asked for (``values`` = the train task's options) and write ``out``; return a summary."""
    opts = options_from(values)
    out = Path(out)
    seed, epochs = int(values.get("seed", 0)), int(values.get("epochs", 10))
    train, val, report = _split(inventory, opts, float(values.get("val_fraction", 0.2)), seed)
    logger.info(f"train_classifier: {len(train)} training and {len(val)} validation images "
                f"(target {opts.target}); labels {report}")
    val_ids = [r.image_id for r in val]
    settings = {k: v for k, v in asdict(opts).items() if k not in ("stage", "attention_epochs")}
    meta = {"method": "dahl", "target": opts.target, "labels": report, "val_images": val_ids,
            "train_images": len(train), "options": asdict(opts), "saliency_levels": list(SALIENCY_LEVELS),
            "signature": {**settings, "seed": seed, "val_images": val_ids}}
    summary: dict[str, Any] = {"checkpoint": str(out), "stage": opts.stage, "target": opts.target, "labels": report,
                               "train_images": len(train), "val_images": len(val)}
    if opts.stage in ("holistic", "both"):
        result = train_holistic(train, val, opts, _fit_options(values, epochs), stage_path(out, "holistic"), meta, seed)
        summary["holistic"] = stage_summary(result)
    if opts.stage in ("attention", "both"):
        result = train_attention(train, val, opts, _fit_options(values, opts.attention_epochs or epochs),
                                 stage_path(out, "holistic"), stage_path(out, "attention"), meta, seed)
        summary["attention"] = stage_summary(result)
    last = stage_path(out, "holistic" if opts.stage == "holistic" else "attention")

    def publish() -> None:
        with atomic_path(out, suffix=".pt") as tmp:
            shutil.copyfile(last, tmp)

    main_only(publish)
    write_stats(out, summary)
    return summary
