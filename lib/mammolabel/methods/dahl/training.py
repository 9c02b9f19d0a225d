"""The two training stages of the Dahl et al. classifier (§3, §4.2), from image-level findings only.

* ``holistic``: the Holistic ResNet on whole images (cropped to the breast, resized to the input
  size), randomly flipped, rotated and cropped; two-class cross-entropy.
* ``attention``: the trained Holistic model picks each image's centre of attention; the Attention
  model, initialised from the Holistic weights, is trained on the ROIs with the same transforms.

Each stage runs :func:`mammolabel.training.loop.fit` into its own checkpoint
(:func:`~mammolabel.training.stages.stage_path`: ``<out>.holistic.pt``, ``<out>.attention.pt``), each
resumable under the rule of :mod:`mammolabel.training.stages`; the attention stage's run starts
from the holistic stage's file. The last stage run is copied to ``out``, the file the infer task serves.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.dataset import MammoDataset
from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.io import atomic_path, canonicalise, read_mammogram
from mammolabel.methods.dahl.analysis import SALIENCY_LEVELS, analyse, network_device
from mammolabel.methods.dahl.evaluation import positive
from mammolabel.methods.dahl.network import DahlClassifier, risk_score
from mammolabel.methods.dahl.options import ATTENTION_ONLY, DahlOptions
from mammolabel.methods.dahl.patches import resolve_patches
from mammolabel.metrics import auc
from mammolabel.training.checkpoint import load_checkpoint, method_fields
from mammolabel.training.distributed import main_only
from mammolabel.training.loop import FitResult, fit, resolve_device, write_stats
from mammolabel.training.progress import Progress
from mammolabel.training.stages import generator, run_identity, seed_for, stage_path

logger = logging.getLogger("mammolabel")

METHOD = "dahl"


def augmentation(opts: DahlOptions, size: tuple[int, int]) -> Compose:
    """Random vertical flips, rotations and crops (scale and shift) of ``image`` (§4.2).

    Horizontal flips are left out: every network input keeps the chest wall on the left.
    """
    return Compose([
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        RandAffined(keys="image", prob=1.0, rotate_range=(math.radians(opts.rotate_deg),), scale_range=(0.1, 0.1),
                    translate_range=(0.05 * size[0], 0.05 * size[1]), padding_mode="zeros"),
        EnsureTyped(keys="image", track_meta=False),
    ])


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


def loader(dataset: LabelledImages, opts: DahlOptions, stage: str) -> tuple[Callable[[int], DataLoader], int]:
    """``batches(epoch)``: the epoch's shuffled batches, with the epoch's augmentation; and the number of batches."""

    def batches(epoch: int) -> DataLoader:
        if dataset.transform is not None:
            dataset.transform.set_random_state(seed_for(opts.seed, "augment", stage, epoch))
        order = generator(opts.seed, "order", epoch)
        return DataLoader(dataset, batch_size=opts.batch_size, shuffle=True, generator=order)

    return batches, math.ceil(len(dataset) / opts.batch_size)


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


def split(inventory: LabelInventory, opts: DahlOptions) -> tuple[list[ImageLabels], list[ImageLabels], dict[str, Any]]:
    """Training and validation images (patient-wise) with a finding, and the label usage report."""
    records, report = inventory.select("finding")
    train, val = split_by_patient(records, opts.val_fraction, seed_for(opts.seed, "split"))
    truths = [positive(r, opts.target) for r in train]
    if not any(truths) or all(truths):
        raise InputError(
            f"train_classifier: the training split needs both {opts.target} and other images "
            f"({sum(truths)} of {len(train)} are {opts.target}; {report['used']} images have a finding, "
            f"{report['skipped']} have none); add findings, or choose target=abnormal or another val_fraction"
        )
    if not val:
        raise InputError(f"train_classifier: no validation images with val_fraction={opts.val_fraction} "
                         f"({len(records)} images with a finding); raise val_fraction or add findings")
    return train, val, report


class Run:
    """What both stages of one training share: the options, the split, the label report and ``out``."""

    def __init__(self, opts: DahlOptions, train: list[ImageLabels], val: list[ImageLabels], report: dict[str, Any],
                 out: Path, init: Path | None):
        self.opts, self.train, self.val, self.report, self.out, self.init = opts, train, val, report, out, init
        self.train_truth = [float(positive(r, opts.target)) for r in train]
        self.val_truth = [bool(positive(r, opts.target)) for r in val]

    def identity(self, stage: str, network: dict[str, Any], options: dict[str, Any], started_from: Path | None
                 ) -> dict[str, Any]:
        return run_identity(METHOD, stage, network, self.opts.frame(), options, [r.image_id for r in self.train],
                            [r.image_id for r in self.val], started_from=started_from)

    def fields(self, stage: str, network: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint fields of a stage (:func:`~mammolabel.training.checkpoint.method_fields`)."""
        return method_fields(METHOD, network, self.opts.frame(), self.opts.to_dict(), stage, {},
                             [r.image_id for r in self.val], self.report, target=self.opts.target,
                             train_images=len(self.train), saliency_levels=list(SALIENCY_LEVELS))

    def stage(self, stage: str, model: DahlClassifier, trained: torch.nn.Module, images: list[torch.Tensor],
              validate: Callable[[DahlClassifier], dict[str, float]], epochs: int, network: dict[str, Any],
              identity: dict[str, Any], init: Path | None = None, select_start: bool = False) -> FitResult:
        """Train ``trained`` (the part of ``model`` named ``stage``) on ``images`` into the stage's file
        (``select_start``: the starting weights compete in model selection)."""
        size = tuple(images[0].shape[-2:])
        transform = augmentation(self.opts, size) if self.opts.augment else None
        batches, steps = loader(LabelledImages(images, self.train_truth, self.opts.target, transform), self.opts, stage)
        weights = class_weights(self.train_truth, self.opts.balance)
        target = self.opts.target

        def step(model: DahlClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = getattr(model, stage)(batch["image"])
            return F.cross_entropy(logits.float(), batch[target].long(), weight=weights.to(logits.device))

        optimizer = torch.optim.Adam(trained.parameters(), lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        return fit(model, optimizer, batches, steps, step, validate, selection_metric(self.val_truth),
                   stage_path(self.out, stage), self.opts.fit_options(epochs, select_start),
                   meta=self.fields(stage, network),
                   desc=stage, identity=identity, init=init or self.init)


def train_holistic(run: Run) -> FitResult:
    """Stage 1: the Holistic model on whole images (§3.1)."""
    opts = run.opts
    size = (opts.input_rows, opts.input_cols)
    torch.manual_seed(seed_for(opts.seed, "weights", "holistic"))
    network = opts.network(attention=False)
    model = DahlClassifier(**network)
    images = [s.image for s in MammoDataset(run.train, size, crop_breast=True).samples]
    val_images = torch.stack([s.image for s in MammoDataset(run.val, size, crop_breast=True).samples])

    def validate(model: DahlClassifier) -> dict[str, float]:
        return risk_metrics(risks_of(model.holistic, val_images, opts.batch_size), run.val_truth)

    # patch pretraining (when asked) gives the starting weights, else the fine-tuned checkpoint
    patches = resolve_patches(opts.patches, run.out.parent)
    start = patches or run.init
    # the attention-only options do not concern this stage: changing them keeps its saved run
    identity = run.identity("holistic", {k: v for k, v in network.items() if k not in ATTENTION_ONLY},
                            {k: v for k, v in opts.to_dict().items() if k not in ATTENTION_ONLY}, start)
    # the patch classifier itself (slid over the film with pool=window_max) competes with its fine-tuned epochs
    return run.stage("holistic", model, model.holistic, images, validate, opts.epochs, network, identity, start,
                     select_start=patches is not None)


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


def train_attention(run: Run) -> FitResult:
    """Stage 2: ROIs from the Holistic model's COA; the Attention model starts from its weights (§3.2, §4.2)."""
    opts, holistic = run.opts, stage_path(run.out, "holistic")
    if not holistic.is_file():
        raise InputError(f"train_classifier: stage 'attention' needs the holistic stage's checkpoint {holistic}; "
                         "run stage=holistic (or both) first")
    ckpt = load_checkpoint(holistic)
    network = opts.network(attention=False)
    trained = {k: ckpt["network"][k] for k in ("depth", "width", "input_size")}
    if trained != {k: network[k] for k in trained}:
        raise InputError(f"train_classifier: the holistic stage was trained with {trained}; train the attention "
                         "stage with the same depth, width and input size, or run stage=both")
    model = DahlClassifier(**network)
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(opts.device)).eval()
    train_rois, _ = roi_inputs(model, run.train, "attention ROIs (train)")
    val_rois, val_holistic = roi_inputs(model, run.val, "attention ROIs (validation)")
    model.init_attention()
    model.holistic.requires_grad_(False)
    val_images, holistic_risk = torch.stack(val_rois), np.asarray(val_holistic)

    def validate(model: DahlClassifier) -> dict[str, float]:
        attention = risks_of(model.attention, val_images, opts.batch_size)
        return {**risk_metrics(attention, run.val_truth), **risk_metrics(holistic_risk, run.val_truth, "holistic_"),
                **risk_metrics((holistic_risk + attention) / 2, run.val_truth, "ensemble_")}

    network["attention"] = True
    identity = run.identity("attention", network, opts.to_dict(), holistic)
    return run.stage("attention", model, model.attention, train_rois, validate, opts.attention_epochs or opts.epochs,
                     network, identity)


def stage_summary(result: FitResult) -> dict[str, Any]:
    """Best epoch of a stage with its validation metrics."""
    best = result.history[result.best_epoch - 1]
    metrics = {k: v for k, v in best.items() if k != "epoch"}
    return {"best_epoch": result.best_epoch, "epochs": result.epochs_run, **metrics}


def train_classifier(inventory: LabelInventory, opts: DahlOptions, out: Path, init: Path | None = None
                     ) -> dict[str, Any]:
    """Run the stages ``opts.stage`` asks for and write ``out`` (from ``init``'s weights where they fit)."""
    out = Path(out)
    train, val, report = split(inventory, opts)
    logger.info(f"train_classifier: {len(train)} training and {len(val)} validation images "
                f"(target {opts.target}); labels {report}")
    run = Run(opts, train, val, report, out, init)
    summary: dict[str, Any] = {"checkpoint": str(out), "stage": opts.stage, "target": opts.target, "labels": report,
                               "train_images": len(train), "val_images": len(val)}
    if opts.stage in ("holistic", "both"):
        summary["holistic"] = stage_summary(train_holistic(run))
    if opts.stage in ("attention", "both"):
        summary["attention"] = stage_summary(train_attention(run))
    last = stage_path(out, "holistic" if opts.stage == "holistic" else "attention")

    def publish() -> None:
        with atomic_path(out, suffix=".pt") as tmp:
            shutil.copyfile(last, tmp)

    main_only(publish)
    write_stats(out, summary)
    return summary
