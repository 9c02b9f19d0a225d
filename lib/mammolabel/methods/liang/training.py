"""Training stages of Liang et al.'s weakly-supervised self-training localization (EMBC 2020, section II).

Training uses image-level findings only:

1. stage ``classifier``: the classification network learns normal versus positive (softmax
   cross-entropy; positives also enter flipped and rotated by 90, 180 and 270 degrees, section III-A);
2. stages ``self_training_block<i>``, one self-training round per tapped Inception block in
   ``LiangConfig.taps`` order: the round's trimaps come from the CAM (first round) or from the
   previous round's CNN, thresholded at ``t_f`` / ``t_b``; its CNN learns them with binary
   cross-entropy on the frozen classifier's feature map. The classifier is not updated after stage 1.

Every stage trains only its own module through :func:`mammolabel.training.loop.fit` into
``stage_path(out, stage)``, under the resume rule of :mod:`mammolabel.training.stages`: the
classifier starts from the run's ``init`` weights, each round from the previous stage's file (and
its own CNN from ``init`` where it fits). The final model (classifier and every self-training CNN)
is written to ``out``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.dataset import prepare_all
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.methods.liang.data import TrainingItems, loader
from mammolabel.methods.liang.loss import TrimapBCELoss
from mammolabel.methods.liang.network import BACKGROUND, POSITIVE, UNKNOWN, LiangNet, trimap
from mammolabel.methods.liang.options import NAME, POSITIVE_FINDINGS, LiangOptions
from mammolabel.metrics import auc
from mammolabel.training.checkpoint import load_checkpoint, method_fields, save_checkpoint
from mammolabel.training.loop import fit, resolve_device, to_device
from mammolabel.training.stages import generator, initial_digest, run_identity, seed_for, stage_path

logger = logging.getLogger("mammolabel")


@torch.no_grad()
def pseudo_labels(net: LiangNet, dataset: TrainingItems, round_index: int, options: LiangOptions,
                  device: torch.device) -> torch.Tensor:
    """Trimaps (N, 1, h, w) of round ``round_index`` on the grid of its feature map, one per item.

    Round 0 thresholds the CAM, round k the map of round k-1's CNN (section II-C); the source map
    is resized (bilinear) to the round's grid first. Normal images are all background when
    ``options.negatives_background``.
    """
    net.eval()
    taps = net.config.taps
    out = []
    for batch in loader(dataset, options.batch_size):
        batch = to_device(batch, device)
        _, cam, features = net.cam(batch["image"], batch["region"])
        grid = features[taps[round_index]].shape[-2:]
        source = cam if round_index == 0 else net.self_training_maps(features, batch["region"])[round_index - 1]
        maps = trimap(F.interpolate(source, size=grid, mode="bilinear", align_corners=False), options.t_f, options.t_b)
        if options.negatives_background:
            maps[batch["label"] == 0] = BACKGROUND
        out.append(maps.cpu())
    return torch.cat(out)


def train_only(net: nn.Module, module: nn.Module) -> None:
    """Let only ``module``'s parameters be trained: the stage's ``init`` weights go to it alone
    (:func:`~mammolabel.training.loop.load_matching` keeps frozen modules)."""
    net.requires_grad_(False)
    module.requires_grad_(True)


def _classifier_stage(net: LiangNet, train: TrainingItems, val: TrainingItems, options: LiangOptions, out: Path,
                      meta: dict[str, Any], identity: dict[str, Any], init: Path | None) -> dict[str, Any]:
    """Stage 1: the classification network with softmax cross-entropy; best by validation AUC."""
    val_labels = [int(p) for p in val.positive]
    metric = "val_auc" if 0 < sum(val_labels) < len(val_labels) else "val_neg_loss"

    def step(model: LiangNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model.classifier(batch["image"]).logits.float(), batch["label"])

    def validate(model: LiangNet) -> dict[str, float]:
        device = next(model.parameters()).device
        scores, losses = [], []
        for batch in loader(val, options.batch_size):
            batch = to_device(batch, device)
            logits = model.classifier(batch["image"]).logits.float()
            losses.append(F.cross_entropy(logits, batch["label"], reduction="sum").item())
            scores += torch.softmax(logits, 1)[:, POSITIVE].tolist()
        value = auc(scores, [bool(v) for v in val_labels])
        return {"val_neg_loss": -sum(losses) / max(1, len(scores)), **({"val_auc": value} if value is not None else {})}

    train_only(net, net.classifier)
    optimizer = torch.optim.SGD(net.classifier.parameters(), lr=options.lr, momentum=options.momentum)
    def batches(epoch: int) -> DataLoader:
        return loader(train, options.batch_size, generator(options.seed, "order", epoch))

    result = fit(net, optimizer, batches, math.ceil(len(train) / options.batch_size), step, validate, metric, out,
                 options.fit_options(), meta=meta, desc="liang classifier", identity=identity,
                 init=init)
    return {"stage": "classifier", "metric": metric, **asdict(result)}


def _self_training_round(net: LiangNet, index: int, train: TrainingItems, val: TrainingItems, options: LiangOptions,
                         out: Path, meta: dict[str, Any], identity: dict[str, Any], init: Path | None,
                         device: torch.device) -> dict[str, Any]:
    """One self-training round: CNN ``index`` learns this round's trimaps on its frozen feature map."""
    tap = net.config.taps[index]
    stage = f"self_training_block{tap}"
    targets = {"train": pseudo_labels(net, train, index, options, device),
               "val": pseudo_labels(net, val, index, options, device)}
    counts = {f"{name}_{kind}": float((t == value).float().mean()) for name, t in targets.items()
              for kind, value in (("foreground", 1.0), ("background", 0.0))}
    logger.info(f"liang self-training round {index + 1} (block {tap}): trimap fractions {counts}")
    if counts["train_foreground"] == 0:
        logger.warning(f"liang self-training round {index + 1}: no confident foreground (> t_f = {options.t_f}) "
                       "in the previous map; this round learns background only")
    loss_fn = TrimapBCELoss()

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for batch in loader(train, options.batch_size, generator(options.seed, "order", stage, epoch)):
            yield {"image": batch["image"], "trimap": targets["train"][batch["item"]]}

    def step(model: LiangNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        model.classifier.eval()  # frozen after stage 1: its batch norms keep their statistics
        with torch.no_grad():
            feature = model.classifier(batch["image"]).features[tap]
        return loss_fn(model.self_training[index](feature).float(), batch["trimap"])

    def validate(model: LiangNet) -> dict[str, float]:
        total, known = 0.0, 0.0
        sum_loss = TrimapBCELoss(reduction="sum")
        for batch in loader(val, options.batch_size):
            target = targets["val"][batch["item"]].to(device)
            feature = model.classifier(batch["image"].to(device)).features[tap]
            total += float(sum_loss(model.self_training[index](feature).float(), target))
            known += float((target != UNKNOWN).sum())
        return {"val_neg_bce": -total / known} if known else {}  # no confident validation pixel: nothing to compare

    train_only(net, net.self_training[index])
    optimizer = torch.optim.SGD(net.self_training[index].parameters(), lr=options.lr, momentum=options.momentum)
    result = fit(net, optimizer, batches, math.ceil(len(train) / options.batch_size), step, validate, "val_neg_bce",
                 out, options.fit_options(options.self_training_epochs), meta=meta,
                 desc=f"liang self-training block {tap}", identity=identity, init=init)
    return {"stage": stage, "trimap": counts, **asdict(result)}


def _load_best(net: LiangNet, path: Path) -> None:
    net.load_state_dict(load_checkpoint(path)["model"])


def train_liang(inventory: LabelInventory, options: LiangOptions, out: str | Path,
                init: Path | None = None) -> dict[str, Any]:
    """Train the classifier, then every self-training round; write the final model to ``out``.

    Only image-level findings are used (other label kinds are counted, not used). The split is
    patient-wise; its validation image ids are stored in the checkpoint (``validation_images``).
    """
    out = Path(out)
    records, report = inventory.select("finding")
    positives = POSITIVE_FINDINGS[options.positive]
    train_records, val_records = split_by_patient(records, options.val_fraction, seed_for(options.seed, "split"))
    if not train_records or not any(r.finding in positives for r in train_records) or all(
            r.finding in positives for r in train_records):
        raise InputError(f"train_cam_self_training needs training images both with and without a positive "
                         f"({options.positive}) finding; the datastore has {report}")
    if not val_records:
        raise InputError(f"train_cam_self_training needs validation images (val_fraction={options.val_fraction}); "
                         f"the datastore has {report}")
    torch.manual_seed(seed_for(options.seed, "weights"))
    device = resolve_device(options.device)
    net = LiangNet(options.network_config())
    size = (options.size, options.size)
    prepared = prepare_all(records, size, options.crop_breast, "liang: prepare images")

    def items(recs: list, augmented: bool) -> TrainingItems:
        return TrainingItems([prepared[r.image_id] for r in recs], [r.finding in positives for r in recs], augmented,
                             options.breast_only)

    train, val = items(train_records, options.augment_positives), items(val_records, False)
    report.update(positive=options.positive, train_images=len(train_records), val_images=len(val_records),
                  train_positive=sum(train.positive), val_positive=sum(val.positive), train_items=len(train))
    logger.info(f"liang: label usage {report}")
    network, frame, values = net.config.to_dict(), options.frame(), options.to_dict()
    train_ids, val_ids = [r.image_id for r in train_records], [r.image_id for r in val_records]
    start = initial_digest(init, out)

    def meta(stage: str) -> dict[str, Any]:
        return method_fields(NAME, network, frame, values, stage, {}, val_ids, report, train_images=train_ids,
                             initial_weights=start)

    def identity(stage: str, started_from: Path | None, digest: str | None = None) -> dict[str, Any]:
        return run_identity(NAME, stage, network, frame, values, train_ids, val_ids, started_from=started_from,
                            start_digest=digest)

    path = stage_path(out, "classifier")
    summary = [_classifier_stage(net, train, val, options, path, meta("classifier"),
                                 identity("classifier", None, start), init)]
    _load_best(net, path)
    for index, tap in enumerate(net.config.taps):
        stage, previous = f"self_training_block{tap}", path
        path = stage_path(out, stage)
        summary.append(_self_training_round(net, index, train, val, options, path, meta(stage),
                                            identity(stage, previous), init, device))
        _load_best(net, path)
    save_checkpoint(out, net, **meta(summary[-1]["stage"]), stages=summary)
    logger.info(f"liang: final model written to {out}")
    return {"checkpoint": str(out), "label_report": report, "stages": [
        {k: s[k] for k in ("stage", "best_metric", "best_epoch", "epochs_run") if k in s} for s in summary]}
