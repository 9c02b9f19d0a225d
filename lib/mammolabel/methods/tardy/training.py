"""Training stages of Tardy & Mateus (one engine for the CLI and the MONAI Label server).

Stage 1, :func:`pretrain_reconstruction`: the modified U-Net learns to restore corrupted images
(gamma, irregular in-painting, out-painting; target = the original) from images whose finding
is normal or benign, or that have no finding: no annotation is needed (paper, Sec. 2).

Stage 2, :func:`train_discriminative`: the U-Net, optionally initialised from stage 1, is wrapped
with the subtraction layer and trained on malignant images with their masks (``labels/final``);
``subtraction=False`` trains the paper's baseline, a plain segmentation head. Each epoch is
validated on a patient-wise split: Dice at the fixed threshold 0.5 (the metric that picks the
best checkpoint) and the threshold with the best mean Dice, stored in the checkpoint as the
infer task's default.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from monai.losses import DiceCELoss

from mammolabel.data.dataset import MammoDataset
from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.loop import FitOptions, FitResult, discard_stale_resume, fit
from mammolabel.errors import InputError
from mammolabel.methods.tardy.loss import MalignancyMapLoss
from mammolabel.methods.tardy.network import DiscriminativeSegmenter, FullImageUNet, UNetConfig
from mammolabel.methods.tardy.transforms import reconstruction_corruption

logger = logging.getLogger("mammolabel")

PRETRAIN_STAGE = "pretrain_reconstruction"
DISCRIMINATIVE_STAGE = "train_discriminative"
#: Thresholds tried on the validation split for the infer task's default.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.95, 0.05))
#: The paper averages Dice over its last 10 epochs (Table 1, "DICE_Avg (on 10 eps)").
LAST_EPOCHS = 10
T = TypeVar("T")


@dataclass
class StageOptions:
    """Options both stages share, parsed from the train tasks' options."""

    size: tuple[int, int]
    features: tuple[int, ...]
    removed_long_skips: int
    crop_breast: bool
    batch_size: int
    lr: float
    val_fraction: float
    seed: int
    fit: FitOptions

    @property
    def network(self) -> UNetConfig:
        return UNetConfig(features=list(self.features), removed_long_skips=self.removed_long_skips)


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's global generator seeded, leaving the caller's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def parse_size(text: str) -> tuple[int, int]:
    """``"1536x1536"`` or ``"1536"`` -> (rows, cols)."""
    try:
        parts = [int(p) for p in str(text).lower().replace(" ", "").split("x")]
    except ValueError as e:
        raise InputError(f"size must read ROWSxCOLS (e.g. 1536x1536), got {text!r}") from e
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise InputError(f"size must read ROWSxCOLS (e.g. 1536x1536), got {text!r}")
    return parts[0], parts[1]


def parse_features(text: str) -> tuple[int, ...]:
    """``"32,64,128"`` -> (32, 64, 128)."""
    try:
        features = tuple(int(p) for p in str(text).replace(" ", "").split(",") if p)
    except ValueError as e:
        raise InputError(f"features must be comma-separated channel counts, got {text!r}") from e
    if len(features) < 2 or min(features) < 1:
        raise InputError(f"features needs at least two positive channel counts, got {text!r}")
    return features


def check_size(size: tuple[int, int], config: UNetConfig) -> None:
    if size[0] % config.divisor or size[1] % config.divisor:
        raise InputError(f"size {size[0]}x{size[1]}: rows and columns must be multiples of {config.divisor} "
                         f"for a U-Net with {len(config.features)} levels")


# --- data ------------------------------------------------------------------------------------------
def pretraining_images(inventory: LabelInventory) -> tuple[list[ImageLabels], dict[str, Any]]:
    """Images with a normal or benign finding, or with none (stage 1 needs no annotation)."""
    used = [r for r in inventory.images if r.finding in (None, "normal", "benign")]
    findings = Counter(r.finding or "none" for r in used)
    report = {f"labels_{kind}": n for kind, n in sorted(inventory.counts.items())}
    report.update(needs="image with a normal or benign finding, or no finding", used=len(used),
                  skipped=len(inventory.images) - len(used), skipped_reason="malignant finding",
                  **{f"used_{k}": v for k, v in sorted(findings.items())})
    return used, report


def discriminative_images(inventory: LabelInventory) -> tuple[list[ImageLabels], dict[str, Any]]:
    """Images with a mask in ``labels/final`` whose finding is malignant (or not given)."""
    with_mask, report = inventory.select("mask")
    used = [r for r in with_mask if r.finding in (None, "malignant")]
    report.update(needs="mask (labels/final) of a malignant image", used=len(used),
                  skipped=len(inventory.images) - len(used),
                  skipped_without_mask=len(inventory.images) - len(with_mask),
                  skipped_mask_not_malignant=len(with_mask) - len(used))
    return used, report


def split(records: list[ImageLabels], options: StageOptions, what: str) -> tuple[list[ImageLabels], list[ImageLabels]]:
    """Patient-wise split; with too few patients the training images also validate (said in the log)."""
    train, val = split_by_patient(records, options.val_fraction, options.seed)
    if not val:
        logger.warning(f"{what}: too few patients for a validation split; validating on the training images")
        val = train
    return train, val


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def stack(items: list[dict[str, torch.Tensor]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in keys}


def fit_options(options: dict[str, Any]) -> FitOptions:
    return FitOptions(epochs=int(options["epochs"]), device=str(options["device"]), resume=bool(options["resume"]))


def stage_options(options: dict[str, Any]) -> StageOptions:
    """Task options (as the train tasks coerce them) -> :class:`StageOptions`."""
    stage = StageOptions(size=parse_size(options["size"]), features=parse_features(options["features"]),
                         removed_long_skips=int(options["removed_long_skips"]),
                         crop_breast=bool(options["crop_breast"]), batch_size=int(options["batch_size"]),
                         lr=float(options["lr"]), val_fraction=float(options["val_fraction"]),
                         seed=int(options["seed"]), fit=fit_options(options))
    if stage.batch_size < 1 or stage.lr <= 0:
        raise InputError("batch_size must be at least 1 and lr positive")
    return stage


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- stage 1: self-supervised reconstruction -------------------------------------------------------
def pretrain_reconstruction(inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train :class:`FullImageUNet` to restore corrupted images; the best (highest validation PSNR) at ``out``.

    ``options`` adds to :class:`StageOptions`'s keys ``gamma_prob``, ``paint_prob`` and ``inpaint_rate``.
    """
    stage = stage_options(options)
    config = stage.network
    try:
        check_size(stage.size, config)
        network = seeded(stage.seed, lambda: FullImageUNet(config))
    except ValueError as e:
        raise InputError(str(e)) from e
    records, report = pretraining_images(inventory)
    if not records:
        raise InputError(f"{PRETRAIN_STAGE} needs images with a normal or benign finding (or none); "
                         f"found none ({report})")
    train, val = split(records, stage, PRETRAIN_STAGE)
    logger.info(f"{PRETRAIN_STAGE}: {len(train)} training and {len(val)} validation images at "
                f"{stage.size[0]}x{stage.size[1]}; labels {report}")
    corruption_args = dict(gamma_prob=float(options["gamma_prob"]), paint_prob=float(options["paint_prob"]),
                           inpaint_rate=float(options["inpaint_rate"]))
    try:
        corruption = reconstruction_corruption(**corruption_args)
    except ValueError as e:
        raise InputError(str(e)) from e
    train_set = MammoDataset(train, stage.size, stage.crop_breast)
    # Fixed corruptions for validation, so that epochs compare on the same inputs.
    corruption.set_random_state(stage.seed + 7919)
    val_pairs = [corruption({"image": item["image"]}) for item in MammoDataset(val, stage.size, stage.crop_breast)]

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        corruption.set_random_state(stage.seed * 100_003 + epoch)
        order = epoch_order(len(train_set), stage.seed, epoch)
        for start in range(0, len(order), stage.batch_size):
            items = [corruption({"image": train_set[int(i)]["image"]}) for i in order[start : start + stage.batch_size]]
            yield stack(items, ("image", "target"))

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(batch["image"]).float(), batch["target"])  # reconstruction loss

    def validate(model: torch.nn.Module) -> dict[str, float]:
        device = model_device(model)
        errors = []
        for pair in val_pairs:
            restored = model(pair["image"][None].to(device)).float().clamp(0, 1)
            errors.append(float((restored - pair["target"][None].to(device)).pow(2).mean()))
        mse = float(np.mean(errors))
        return {"val_mse": mse, "psnr": float(np.mean([10 * math.log10(1 / max(e, 1e-10)) for e in errors]))}

    meta = {"stage": PRETRAIN_STAGE, "network": config.to_dict(), "size": list(stage.size),
            "crop_breast": stage.crop_breast, "corruption": corruption_args, "labels": report,
            "train_images": [r.image_id for r in train], "val_images": [r.image_id for r in val],
            "validated_on_training_images": val is train}
    if stage.fit.resume:
        discard_stale_resume(out, meta, ("stage", "network", "size", "crop_breast", "corruption"))
    optimizer = torch.optim.Adam(network.parameters(), lr=stage.lr)
    result = fit(network, optimizer, batches, math.ceil(len(train_set) / stage.batch_size), step, validate, "psnr",
                 out, stage.fit, meta, desc=PRETRAIN_STAGE)
    return {**summary(result, "psnr"), "labels": report, "train_images": len(train), "val_images": len(val)}


# --- stage 2: discriminative segmentation ----------------------------------------------------------
def load_pretrained(path: str | Path) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The backbone config and weights of a ``pretrain_reconstruction`` checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != PRETRAIN_STAGE:
        raise InputError(f"{path}: not a {PRETRAIN_STAGE} checkpoint (stage {ckpt.get('stage')!r})")
    return UNetConfig(**ckpt["network"]), ckpt["model"]


def initialise_backbone(model: DiscriminativeSegmenter, weights: dict[str, torch.Tensor]) -> None:
    """Copy pretrained U-Net weights into ``model.backbone``; every backbone key must be present."""
    try:
        model.backbone.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise InputError(f"the pretraining checkpoint does not fit the backbone: {e}") from e


def resolve_pretrained(value: str, model_dir: Path) -> Path | None:
    """``auto``: ``<model_dir>/pretrain_reconstruction.pt`` when it exists; ``none`` or empty: scratch."""
    text = str(value).strip()
    if text.lower() in ("", "none", "scratch"):
        return None
    if text.lower() == "auto":
        candidate = model_dir / f"{PRETRAIN_STAGE}.pt"
        return candidate if candidate.is_file() else None
    path = Path(text)
    if not path.is_file():
        raise InputError(f"pretrained checkpoint not found: {path} (use 'auto', 'none' or a path)")
    return path


def parse_threshold(value: str) -> float | None:
    """``auto`` -> None (choose on validation), otherwise a number in (0, 1)."""
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        threshold = float(text)
    except ValueError as e:
        raise InputError(f"threshold must be 'auto' or a number in (0, 1), got {value!r}") from e
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie in (0, 1), got {threshold}")
    return threshold


def mean_dice(probabilities: list[torch.Tensor], masks: list[torch.Tensor], threshold: float) -> float:
    """Mean over images of the Dice of ``probability >= threshold`` with the mask (1 when both are empty)."""
    scores = []
    for p, m in zip(probabilities, masks):
        pred, truth = p >= threshold, m > 0.5
        total = int(pred.sum() + truth.sum())
        scores.append(1.0 if total == 0 else float(2 * (pred & truth).sum() / total))
    return float(np.mean(scores))


def segmentation_loss(subtraction: bool, mse_weight: float) -> torch.nn.Module:
    """Dice + squared error for the subtraction output; Dice + binary cross-entropy for the plain head's logits."""
    if subtraction:
        return MalignancyMapLoss(mse_weight=mse_weight)
    return DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)


def train_discriminative(inventory: LabelInventory, options: dict[str, Any], out: Path,
                         model_dir: Path | None = None) -> dict[str, Any]:
    """Train :class:`DiscriminativeSegmenter` on malignant images with masks; the best (validation Dice) at ``out``.

    ``options`` adds to :class:`StageOptions`'s keys ``pretrained`` (``auto``, ``none`` or a path),
    ``no_subtraction`` (the plain segmentation head), ``mse_weight`` (subtraction loss) and ``threshold`` (``auto``:
    the threshold with the best validation Dice). With a pretrained backbone its stored sizes are used.
    """
    stage = stage_options(options)
    pretrained = resolve_pretrained(options["pretrained"], Path(model_dir or out.parent))
    config, weights = load_pretrained(pretrained) if pretrained else (stage.network, None)
    if pretrained and config.to_dict() != stage.network.to_dict():
        logger.info(f"{DISCRIMINATIVE_STAGE}: using the pretrained backbone's sizes {config.to_dict()}")
    check_size(stage.size, config)
    fixed_threshold = parse_threshold(options["threshold"])
    model = seeded(stage.seed, lambda: DiscriminativeSegmenter(config, subtraction=not bool(options["no_subtraction"])))
    if weights is not None:
        initialise_backbone(model, weights)
    records, report = discriminative_images(inventory)
    if not records:
        raise InputError(f"{DISCRIMINATIVE_STAGE} needs malignant images with a mask in labels/final; "
                         f"found none ({report})")
    train, val = split(records, stage, DISCRIMINATIVE_STAGE)
    head = "subtraction" if model.subtraction else "segmentation (no subtraction)"
    logger.info(f"{DISCRIMINATIVE_STAGE}: {head} head, {'from ' + str(pretrained) if pretrained else 'from scratch'}; "
                f"{len(train)} training and {len(val)} validation images at {stage.size[0]}x{stage.size[1]}; "
                f"labels {report}")
    train_set = MammoDataset(train, stage.size, stage.crop_breast)
    val_set = MammoDataset(val, stage.size, stage.crop_breast)
    loss_fn = segmentation_loss(model.subtraction, float(options["mse_weight"]))

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = epoch_order(len(train_set), stage.seed, epoch)
        for start in range(0, len(order), stage.batch_size):
            yield stack([train_set[int(i)] for i in order[start : start + stage.batch_size]], ("image", "mask"))

    def step(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(network(batch["image"]), batch["mask"])

    def validate(network: torch.nn.Module) -> dict[str, float]:
        device = model_device(network)
        probabilities, masks, losses = [], [], []
        for item in val_set:
            output = network(item["image"][None].to(device)).float()
            losses.append(float(loss_fn(output, item["mask"][None].to(device))))
            probabilities.append(network.probability(output)[0, 0].cpu())
            masks.append(item["mask"][0])
        by_threshold = {t: mean_dice(probabilities, masks, t) for t in THRESHOLDS}
        best = fixed_threshold if fixed_threshold is not None else max(by_threshold, key=by_threshold.get)
        return {"val_loss": float(np.mean(losses)), "dice": mean_dice(probabilities, masks, 0.5),
                "threshold": best, "dice_at_threshold": mean_dice(probabilities, masks, best)}

    meta = {"stage": DISCRIMINATIVE_STAGE, "network": config.to_dict(), "subtraction": model.subtraction,
            "size": list(stage.size), "crop_breast": stage.crop_breast, "labels": report,
            "initialised_from": str(pretrained) if pretrained else None,
            "train_images": [r.image_id for r in train], "val_images": [r.image_id for r in val],
            "validated_on_training_images": val is train}
    if stage.fit.resume:
        discard_stale_resume(out, meta, ("stage", "network", "subtraction", "size", "crop_breast", "initialised_from"))
    optimizer = torch.optim.Adam(model.parameters(), lr=stage.lr)
    result = fit(model, optimizer, batches, math.ceil(len(train_set) / stage.batch_size), step, validate, "dice",
                 out, stage.fit, meta, desc=DISCRIMINATIVE_STAGE)
    threshold = float(result.history[result.best_epoch - 1]["threshold"])
    ckpt = load_checkpoint(out)
    save_checkpoint(out, ckpt.pop("model"), **{**ckpt, "threshold": threshold})
    return {**summary(result, "dice"), "threshold": threshold, "head": head,
            "initialised_from": meta["initialised_from"], "labels": report,
            "train_images": len(train), "val_images": len(val)}


def summary(result: FitResult, metric: str) -> dict[str, Any]:
    """The fit result with the paper's two figures: the best epoch's metric and the mean of the last epochs."""
    values = [float(h[metric]) for h in result.history]
    last = values[-LAST_EPOCHS:]
    return {"checkpoint": result.path, "metric": metric, "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, f"{metric}_max": max(values),
            f"{metric}_avg_last{len(last)}": float(np.mean(last)), "history": result.history}
