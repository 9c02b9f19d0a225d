"""Training stages of Tardy & Mateus (one engine for the CLI and the MONAI Label server).

Stage 1, :func:`pretrain_reconstruction`: the modified U-Net learns to restore corrupted images
(gamma, irregular in-painting, out-painting; target = the original) from images whose finding
is normal or benign, or that have no finding: no annotation is needed (paper, Sec. 2).

Stage 2, :func:`train_discriminative`: the U-Net, optionally initialised from stage 1, is wrapped
with the subtraction layer and trained on malignant images with their masks (``labels/final``);
``no_subtraction`` trains the paper's baseline, a plain segmentation head. Each epoch is
validated on a patient-wise split: Dice at the fixed threshold 0.5 (the metric that picks the
best checkpoint) and the threshold with the best mean Dice, stored in the checkpoint as the
infer task's default.

Each stage trains into its stage files (:func:`mammolabel.training.stages.stage_path`); its best
epoch is then written at ``out`` with its threshold, and its progress beside ``out``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.dataset import MammoDataset
from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.methods.tardy.loss import MalignancyMapLoss
from mammolabel.methods.tardy.network import DiscriminativeSegmenter, FullImageUNet, UNetConfig
from mammolabel.methods.tardy.options import CHOOSE_ON_VALIDATION, DiscriminativeOptions, PretrainOptions, UNetOptions
from mammolabel.methods.tardy.transforms import reconstruction_corruption
from mammolabel.metrics import dice
from mammolabel.training.checkpoint import load_checkpoint, method_fields, save_checkpoint
from mammolabel.training.loop import FitResult, fit, write_stats
from mammolabel.training.stages import generator, run_identity, seed_for, stage_path, stats_path

logger = logging.getLogger("mammolabel")

#: The method's name, stored in its checkpoints.
NAME = "tardy"
PRETRAIN_STAGE = "pretrain_reconstruction"
DISCRIMINATIVE_STAGE = "train_discriminative"
#: Thresholds tried on the validation split for the infer task's default.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.95, 0.05))
#: The paper averages Dice over its last 10 epochs (Table 1, "DICE_Avg (on 10 eps)").
LAST_EPOCHS = 10


def check_size(rows: int, cols: int, config: UNetConfig) -> None:
    if rows % config.divisor or cols % config.divisor:
        raise InputError(f"size {rows}x{cols}: rows and columns must be multiples of {config.divisor} "
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


def split(records: list[ImageLabels], options: UNetOptions, what: str) -> tuple[list[ImageLabels], list[ImageLabels]]:
    """Patient-wise split; with too few patients the training images also validate (said in the log)."""
    train, val = split_by_patient(records, options.val_fraction, seed_for(options.seed, "split"))
    if not val:
        logger.warning(f"{what}: too few patients for a validation split; validating on the training images")
        val = train
    return train, val


def loader(dataset: Dataset, options: UNetOptions, epoch: int) -> DataLoader:
    """One epoch's batches, in the order :func:`~mammolabel.training.stages.generator` draws for it."""
    return DataLoader(dataset, batch_size=options.batch_size, shuffle=True,
                      generator=generator(options.seed, "order", epoch))


def fresh_network(config: UNetConfig, seed: int, subtraction: bool | None = None) -> torch.nn.Module:
    """The U-Net (``subtraction`` None) or the discriminative model, its initial weights drawn from
    ``seed_for(seed, "weights")``; torch's global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "weights"))
        return FullImageUNet(config) if subtraction is None else DiscriminativeSegmenter(config, subtraction)


def frame_of(options: UNetOptions) -> dict[str, Any]:
    return {"rows": options.rows, "cols": options.cols, "crop_breast": options.crop_breast}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def publish(stage_file: Path, out: Path, **updates: Any) -> None:
    """Write the stage's best checkpoint (with ``updates``) at ``out`` and its progress beside ``out``."""
    ckpt = load_checkpoint(stage_file)
    save_checkpoint(out, ckpt.pop("model"), **{**ckpt, **updates})
    write_stats(out, json.loads(stats_path(stage_file).read_text()))


# --- stage 1: self-supervised reconstruction -------------------------------------------------------
def pretrain_reconstruction(inventory: LabelInventory, options: PretrainOptions, out: Path,
                            init: Path | None = None) -> dict[str, Any]:
    """Train :class:`FullImageUNet` to restore corrupted images; the best (highest validation PSNR) at ``out``."""
    config = options.network()
    records, report = pretraining_images(inventory)
    if not records:
        raise InputError(f"{PRETRAIN_STAGE} needs images with a normal or benign finding (or none); "
                         f"found none ({report})")
    train, val = split(records, options, PRETRAIN_STAGE)
    size = (options.rows, options.cols)
    logger.info(f"{PRETRAIN_STAGE}: {len(train)} training and {len(val)} validation images at "
                f"{size[0]}x{size[1]}; labels {report}")
    rates = {"gamma_prob": options.gamma_prob, "paint_prob": options.paint_prob, "inpaint_rate": options.inpaint_rate}
    corruption = reconstruction_corruption(**rates)
    train_set = MammoDataset(train, size, options.crop_breast, transform=corruption)
    # Fixed corruptions for validation, so that epochs compare on the same inputs.
    fixed = reconstruction_corruption(**rates).set_random_state(seed_for(options.seed, "validation corruption"))
    val_pairs = [fixed({"image": item["image"]}) for item in MammoDataset(val, size, options.crop_breast)]
    network = fresh_network(config, options.seed)

    def batches(epoch: int) -> DataLoader:
        corruption.set_random_state(seed_for(options.seed, "augment", epoch))
        return loader(train_set, options, epoch)

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

    train_ids, val_ids = [r.image_id for r in train], [r.image_id for r in val]
    frame = frame_of(options)
    meta = method_fields(NAME, config.to_dict(), frame, options.to_dict(), PRETRAIN_STAGE, {}, val_ids, report,
                         corruption=rates, validated_on_training_images=val is train)
    identity = run_identity(NAME, PRETRAIN_STAGE, config.to_dict(), frame, options.to_dict(), train_ids, val_ids,
                            started_from=init)
    best = stage_path(out, PRETRAIN_STAGE)
    optimizer = torch.optim.Adam(network.parameters(), lr=options.lr)
    result = fit(network, optimizer, batches, math.ceil(len(train_set) / options.batch_size), step, validate, "psnr",
                 best, options.fit_options(), meta,
                 desc=PRETRAIN_STAGE, identity=identity, init=init)
    publish(best, out)
    return {**summary(result, "psnr", out), "labels": report, "train_images": len(train), "val_images": len(val)}


# --- stage 2: discriminative segmentation ----------------------------------------------------------
def load_pretrained(path: str | Path) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The backbone config and weights of a ``pretrain_reconstruction`` checkpoint."""
    ckpt = load_checkpoint(path, NAME)
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


def mean_dice(probabilities: list[torch.Tensor], masks: list[torch.Tensor], threshold: float) -> float:
    """Mean over images of the Dice of ``probability >= threshold`` with the mask (1 when both are empty)."""
    scores = [dice(p.numpy() >= threshold, m.numpy() > 0.5) for p, m in zip(probabilities, masks)]
    return float(np.mean([1.0 if s is None else s for s in scores]))


def segmentation_loss(subtraction: bool, mse_weight: float) -> torch.nn.Module:
    """Dice + squared error for the subtraction output; Dice + binary cross-entropy for the plain head's logits."""
    if subtraction:
        return MalignancyMapLoss(mse_weight=mse_weight)
    return DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)


def train_discriminative(inventory: LabelInventory, options: DiscriminativeOptions, out: Path,
                         init: Path | None = None) -> dict[str, Any]:
    """Train :class:`DiscriminativeSegmenter` on malignant images with masks; the best (validation Dice) at ``out``.

    ``options.pretrained`` ``auto`` looks for the stage-1 checkpoint beside ``out`` (the model folder); a
    pretrained backbone's stored sizes are used. ``init`` (fine-tuning) then replaces the weights where it fits.
    """
    pretrained = resolve_pretrained(options.pretrained, out.parent)
    config, weights = load_pretrained(pretrained) if pretrained else (options.network(), None)
    if pretrained and config.to_dict() != options.network().to_dict():
        logger.info(f"{DISCRIMINATIVE_STAGE}: using the pretrained backbone's sizes {config.to_dict()}")
    check_size(options.rows, options.cols, config)
    fixed_threshold = None if options.threshold == CHOOSE_ON_VALIDATION else options.threshold
    model = fresh_network(config, options.seed, subtraction=not options.no_subtraction)
    if weights is not None:
        initialise_backbone(model, weights)
    records, report = discriminative_images(inventory)
    if not records:
        raise InputError(f"{DISCRIMINATIVE_STAGE} needs malignant images with a mask in labels/final; "
                         f"found none ({report})")
    train, val = split(records, options, DISCRIMINATIVE_STAGE)
    head = "subtraction" if model.subtraction else "segmentation (no subtraction)"
    size = (options.rows, options.cols)
    logger.info(f"{DISCRIMINATIVE_STAGE}: {head} head, {'from ' + str(pretrained) if pretrained else 'from scratch'}; "
                f"{len(train)} training and {len(val)} validation images at {size[0]}x{size[1]}; labels {report}")
    train_set = MammoDataset(train, size, options.crop_breast)
    val_set = MammoDataset(val, size, options.crop_breast)
    loss_fn = segmentation_loss(model.subtraction, options.mse_weight)

    def batches(epoch: int) -> DataLoader:
        return loader(train_set, options, epoch)

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

    train_ids, val_ids = [r.image_id for r in train], [r.image_id for r in val]
    frame = frame_of(options)
    pretrained_from = str(pretrained) if pretrained else None
    thresholds = {"lesion": fixed_threshold} if fixed_threshold is not None else {}
    meta = method_fields(NAME, config.to_dict(), frame, options.to_dict(), DISCRIMINATIVE_STAGE, thresholds, val_ids,
                         report, subtraction=model.subtraction, pretrained_from=pretrained_from,
                         validated_on_training_images=val is train)
    identity = run_identity(NAME, DISCRIMINATIVE_STAGE, config.to_dict(), frame, options.to_dict(), train_ids,
                            val_ids, started_from=pretrained or init)
    best = stage_path(out, DISCRIMINATIVE_STAGE)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    result = fit(model, optimizer, batches, math.ceil(len(train_set) / options.batch_size), step, validate, "dice",
                 best, options.fit_options(), meta,
                 desc=DISCRIMINATIVE_STAGE, identity=identity, init=init)
    threshold = float(result.history[result.best_epoch - 1]["threshold"])
    publish(best, out, thresholds={"lesion": threshold})
    return {**summary(result, "dice", out), "threshold": threshold, "head": head, "initialised_from": pretrained_from,
            "labels": report, "train_images": len(train), "val_images": len(val)}


def summary(result: FitResult, metric: str, out: Path) -> dict[str, Any]:
    """The fit result with the paper's two figures: the best epoch's metric and the mean of the last epochs."""
    values = [float(h[metric]) for h in result.history]
    last = values[-LAST_EPOCHS:]
    return {"checkpoint": str(out), "metric": metric, "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, f"{metric}_max": max(values),
            f"{metric}_avg_last{len(last)}": float(np.mean(last)), "history": result.history}
