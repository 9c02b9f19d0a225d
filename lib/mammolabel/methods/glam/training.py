"""Training stages of GLAM (Liu et al., MIDL 2021, Fig. 3), shared by the CLI and the server.

Training (train task ``train_glam``) uses image-level findings only; the two classes are benign
and malignant (a normal image is negative for both):

1. ``global``: the global module with the summed BCE of its three scales plus sparsity;
2. ``local``: the global module frozen selects the patches; the local module learns with BCE of
   its aggregated prediction plus sparsity of the patch maps;
3. ``joint``: everything, with the fusion module, on the sum of the three losses.

Each stage keeps its best checkpoint at :func:`~mammolabel.training.stages.stage_path` (``<out
stem>.<stage>.pt``) and runs through :func:`mammolabel.training.loop.fit` (device, AMP on GPU,
progress, best and last checkpoints). The ``global`` stage starts from the run's starting weights
(``init``, where they fit); ``local`` from the ``global`` stage's file (its global module frozen, the
rest where it fits) and ``joint`` from the ``local`` stage's file. A stage resumes its saved run
only under the resume rule of :mod:`mammolabel.training.stages`, so a finished stage is not repeated
and one whose options, images or starting file changed is trained afresh. As in the paper ("select
the best segmentation model"), the best epoch of a stage is the one with the best validation Dice of
its saliency map (global map, local map, fused map) on the validation images that have a mask;
without any, the validation loss decides. The segmentation thresholds of every map and class are
chosen on the same validation images and stored in the checkpoint. ``stage=all`` runs the three
stages in turn; the served model at ``out`` is the last stage run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, RandFlipd
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.datastore import LabelInventory
from mammolabel.methods.dahl.patches import resolve_patches
from mammolabel.data.dataset import Sample, prepare_all
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.methods.glam.loss import GlamLoss
from mammolabel.methods.glam.network import CLASSES, STAGES, GlamConfig, GlamNet
from mammolabel.methods.glam.options import GlamOptions
from mammolabel.methods.glam.predict import STAGE_MAPS, STAGE_OUTPUT, stage_maps, stage_predictions
from mammolabel.metrics import auc
from mammolabel.training.checkpoint import load_checkpoint, method_fields, save_checkpoint
from mammolabel.training.loop import fit, resolve_device
from mammolabel.training.stages import file_digest, generator, run_identity, seed_for, stage_path

logger = logging.getLogger("mammolabel")

NAME = "glam"
#: Thresholds tried on the validation maps.
THRESHOLDS = np.round(np.arange(0.02, 0.99, 0.02), 2)


def targets_of(finding: str | None) -> torch.Tensor:
    """Image-level target (benign, malignant) of a finding; normal is negative for both."""
    return torch.tensor([float(finding == c) for c in CLASSES])


class GlamDataset(Dataset):
    """Prepared samples as items ``image`` (1, H, W), ``target`` (2,) and ``index``, through ``transform``.

    ``has_mask`` flags the samples whose lesion mask can score a saliency map.
    """

    def __init__(self, samples: list[Sample], transform: Callable[[dict], dict] | None = None):
        self.samples, self.transform = samples, transform
        self.targets = torch.stack([targets_of(s.finding) for s in samples]) if samples else torch.zeros(0, 2)
        self.has_mask = [s.mask is not None and s.finding in CLASSES for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.samples[index].image, "target": self.targets[index], "index": torch.tensor(index)}
        return self.transform(item) if self.transform is not None else item


def augmentation() -> Compose:
    """Random vertical flips (the rows axis) of the image, as plain tensors."""
    return Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=0), EnsureTyped(keys="image", track_meta=False)])


def dice_curve(saliency: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Dice of ``saliency >= t`` against a binary ``truth`` for every threshold t (both (H, W))."""
    t = truth > 0
    values = np.sort(saliency[t].ravel())
    everything = np.sort(saliency.ravel())
    inside = len(values) - np.searchsorted(values, thresholds, side="left")  # true positives per threshold
    predicted = len(everything) - np.searchsorted(everything, thresholds, side="left")
    denominator = predicted + int(t.sum())
    return np.where(denominator > 0, 2 * inside / np.maximum(denominator, 1), 0.0)


@torch.no_grad()
def validation_scores(net: GlamNet, data: GlamDataset, stage: str, batch_size: int,
                      loss_fn: GlamLoss | None = None) -> dict[str, Any]:
    """Dice curves of every map on the validation images with a mask, predictions and the mean loss.

    Returns ``curves`` {map: {class: [curve (T,), ...]}}, ``predictions`` {name: (N, 2) array}
    and ``loss`` (mean per image, when ``loss_fn`` is given).
    """
    device = next(net.parameters()).device
    forward_stage = "global" if stage == "global" else "joint"
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    predictions: dict[str, list[np.ndarray]] = {}
    total = 0.0
    for batch in DataLoader(data, batch_size=batch_size):
        image = batch["image"].to(device)
        out = net(image, forward_stage)
        if loss_fn is not None:
            total += float(loss_fn(out, batch["target"].to(device), stage)) * len(image)
        for name, p in stage_predictions(out).items():
            predictions.setdefault(name, []).append(p.float().cpu().numpy())
        maps = {k: v.float().cpu().numpy() for k, v in stage_maps(net, out, image.shape[-2:]).items()}
        for row, index in enumerate(batch["index"].tolist()):
            if not data.has_mask[index]:
                continue
            sample = data.samples[index]
            c = CLASSES.index(sample.finding)
            truth = sample.mask[0].numpy()
            for name, m in maps.items():
                curves.setdefault(name, {}).setdefault(CLASSES[c], []).append(dice_curve(m[row, c], truth))
    return {"curves": curves, "predictions": {k: np.concatenate(v) for k, v in predictions.items()},
            "loss": total / max(1, len(data))}


def choose_thresholds(curves: dict[str, dict[str, list[np.ndarray]]],
                      names: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per map of ``names`` and class: the threshold with the best mean validation Dice, that Dice, the image count.

    A class without validation masks keeps threshold 0.5 with Dice None.
    """
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        per_class = curves.get(name, {})
        chosen[name] = {}
        for c in CLASSES:
            if per_class.get(c):
                mean = np.mean(per_class[c], axis=0)
                best = int(np.argmax(mean))
                chosen[name][c] = {"threshold": float(THRESHOLDS[best]), "dice": float(mean[best]),
                                   "n": len(per_class[c])}
            else:
                chosen[name][c] = {"threshold": 0.5, "dice": None, "n": 0}
    return chosen


def _mean_dice(per_class: dict[str, dict[str, Any]]) -> float | None:
    values = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    return float(np.mean(values)) if values else None


def _aucs(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    out = {}
    malignant = auc(predictions[:, 1].tolist(), (targets[:, 1] > 0).tolist())
    abnormal = auc(predictions.max(axis=1).tolist(), (targets.max(axis=1) > 0).tolist())
    if malignant is not None:
        out["val_auc_malignant"] = malignant
    if abnormal is not None:
        out["val_auc_abnormal"] = abnormal
    return out


def _previous_stage(out: Path, stage: str) -> Path | None:
    """The file ``stage`` starts from (None for ``global``); refused when it does not exist."""
    if stage == "global":
        return None
    previous = STAGES[STAGES.index(stage) - 1]
    path = stage_path(out, previous)
    if not path.exists():
        raise InputError(f"stage '{stage}' starts from the '{previous}' stage's checkpoint {path}, which does not "
                         f"exist; run train_glam with stage={previous} (or stage=all) first")
    return path


def _start_from_previous(net: GlamNet, out: Path, stage: str) -> Path | None:
    """Load the previous stage's best into ``net``: for ``local`` its global module (and the rest where it fits),
    for ``joint`` everything. Returns that file (None for ``global``)."""
    path = _previous_stage(out, stage)
    if path is None:
        return None
    ckpt = load_checkpoint(path, NAME)
    state, own = ckpt["model"], net.state_dict()
    if stage == "joint":
        if GlamConfig(**ckpt["network"]) != net.config:
            raise InputError(f"stage 'joint' needs the network of the local stage ({path}); the options differ")
        net.load_state_dict(state)
        return path
    glob = {k for k in own if k.startswith("global_module.")}
    if any(k not in state or state[k].shape != own[k].shape for k in glob):
        raise InputError(f"the global stage at {path} was trained with another global network; "
                         "use the same sizes or run stage=global again")
    net.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    return path


def init_local_from_patches(net: GlamNet, path: Path) -> int:
    """Copy the ResNet of a ``pretrain_patches`` checkpoint into the local module's trunk; return tensors copied.

    The patch classifier is a MONAI ResNet (``conv1``, ``bn1``, ``layer1``-``layer4``) with the trunk's blocks;
    only its strides differ (the local module keeps stride 4), which no weight depends on. Every trunk tensor
    must be supplied with its shape (the same depth and width), otherwise a clear error is raised.
    """
    state = load_checkpoint(path)["model"]
    renamed = {"stem.0.": "holistic.net.conv1.", "stem.1.": "holistic.net.bn1.",
               **{f"stages.{i}.": f"holistic.net.layer{i + 1}." for i in range(len(net.local_module.trunk.stages))}}
    ours = net.local_module.trunk.state_dict()
    found = {}
    for key, value in ours.items():
        prefix = next((p for p in renamed if key.startswith(p)), None)
        theirs = state.get(renamed[prefix] + key[len(prefix):]) if prefix else None
        if theirs is not None and theirs.shape == value.shape:
            found[key] = theirs
    if len(found) < len(ours):
        raise InputError(f"patches: {path} does not fit the local module (local_depth and local_width must be "
                         f"pretrain_patches' depth and width): {len(found)} of {len(ours)} tensors fit")
    net.local_module.trunk.load_state_dict(found)
    logger.info(f"glam local: the local module's ResNet starts from {path} ({len(found)} tensors)")
    return len(found)


def _run_stage(net: GlamNet, stage: str, train: GlamDataset, val: GlamDataset, options: GlamOptions, out: Path,
               fields: dict[str, Any], identity: dict[str, Any], init: Path | None) -> dict[str, Any]:
    """Train one stage into its stage file; return its summary with the thresholds chosen on validation."""
    path = stage_path(out, stage)
    loss_fn = GlamLoss(beta=options.beta)
    map_name = STAGE_OUTPUT[stage]
    metric = "val_dice" if any(val.has_mask) else "val_neg_loss"
    net.global_module.requires_grad_(stage != "local")  # frozen in the local stage

    def step(model: GlamNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if stage == "local":
            model.global_module.eval()  # frozen: its batch norms keep their statistics
        return loss_fn(model(batch["image"], stage), batch["target"], stage)

    def validate(model: GlamNet) -> dict[str, float]:
        scores = validation_scores(model, val, stage, options.batch_size, loss_fn)
        chosen = choose_thresholds(scores["curves"], STAGE_MAPS[stage])
        found = {"val_neg_loss": -scores["loss"], **_aucs(scores["predictions"][map_name], val.targets.numpy())}
        for name, per_class in chosen.items():
            value = _mean_dice(per_class)
            if value is not None:
                found[f"val_dice_{name}"] = value
        if f"val_dice_{map_name}" in found:
            found["val_dice"] = found[f"val_dice_{map_name}"]
        return found

    module = {"global": net.global_module, "local": net.local_module, "joint": net}[stage]
    lr = options.joint_lr if stage == "joint" else options.lr
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def batches(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        if train.transform is not None:
            train.transform.set_random_state(seed_for(options.seed, "augment", stage, epoch))
        return DataLoader(train, batch_size=options.batch_size, shuffle=True,
                          generator=generator(options.seed, "order", stage, epoch))

    result = fit(net, optimizer, batches, math.ceil(len(train) / options.batch_size), step, validate, metric, path,
                 options.fit_options(options.stage_epochs(stage)),
                 meta=fields, desc=f"glam {stage}", identity=identity, init=init)
    net.global_module.requires_grad_(True)

    best = load_checkpoint(path, NAME)
    net.load_state_dict(best["model"])
    if not best.get("thresholds"):  # fit rewrites the best checkpoint, without thresholds, whenever it improves
        net.eval()
        with torch.no_grad():
            curves = validation_scores(net, val, stage, options.batch_size)["curves"]
        best["thresholds"] = choose_thresholds(curves, STAGE_MAPS[stage])
        save_checkpoint(path, best.pop("model"), **best)
    thresholds = load_checkpoint(path, NAME)["thresholds"]
    logger.info(f"glam {stage}: validation Dice by map and class at the chosen thresholds: "
                f"{ {n: {c: v['dice'] for c, v in d.items()} for n, d in thresholds.items()} }")
    return {"stage": stage, "metric": metric, "thresholds": thresholds, **asdict(result)}


def train_glam(inventory: LabelInventory, options: GlamOptions, out: str | Path,
               init: Path | None = None) -> dict[str, Any]:
    """Run the requested stage(s) and write the served model (the last stage run) to ``out``.

    Image-level findings train the network; masks of validation images pick the best epoch and
    the thresholds (counted in the label counts as ``val_masks``). The split is patient-wise; its
    validation ids are stored in the checkpoint (``validation_images``). ``init``'s weights start the
    ``global`` stage where they fit; the later stages start from the stage before.
    """
    out = Path(out)
    records, report = inventory.select("finding")
    train_records, val_records = split_by_patient(records, options.val_fraction, seed_for(options.seed, "split"))
    if not any(r.finding in CLASSES for r in train_records) or len({r.finding for r in train_records}) < 2:
        raise InputError(f"train_glam needs training images with a benign or malignant finding and images with "
                         f"another finding; the datastore has {report}")
    if not val_records:
        raise InputError(f"train_glam needs validation images (val_fraction={options.val_fraction}); "
                         f"the datastore has {report}")
    device = resolve_device(options.device)
    torch.manual_seed(seed_for(options.seed, "weights"))
    net = GlamNet(options.network_config()).to(device)
    run = STAGES if options.stage == "all" else (options.stage,)
    _previous_stage(out, run[0])  # refuses a missing previous stage before any work
    size = (options.rows, options.cols)
    prepared = prepare_all(records, size, options.crop_breast, "glam: prepare images")
    train = GlamDataset([prepared[r.image_id] for r in train_records], augmentation() if options.augment else None)
    val = GlamDataset([prepared[r.image_id] for r in val_records])
    report.update(train_images=len(train), val_images=len(val),
                  **{f"train_{c}": int(train.targets[:, i].sum()) for i, c in enumerate(CLASSES)},
                  **{f"val_{c}": int(val.targets[:, i].sum()) for i, c in enumerate(CLASSES)},
                  val_masks=sum(val.has_mask), train_masks_unused=sum(s.mask is not None for s in train.samples))
    logger.info(f"glam: label usage {report}")

    out.parent.mkdir(parents=True, exist_ok=True)
    network, frame, opts = asdict(net.config), options.frame(), options.to_dict()
    train_ids, val_ids = [r.image_id for r in train_records], [r.image_id for r in val_records]
    patches = resolve_patches(options.patches, out.parent)
    summary = []
    for stage in run:
        previous = _start_from_previous(net, out, stage)
        if stage == "local" and patches is not None:
            init_local_from_patches(net, patches)
        identity = run_identity(NAME, stage, network, frame, opts, train_ids, val_ids,
                                started_from=previous or init,
                                patches=file_digest(patches) if patches and stage == "local" else None)
        fields = method_fields(NAME, network, frame, opts, stage, {}, val_ids, report, train_images=train_ids)
        summary.append(_run_stage(net, stage, train, val, options, out, fields, identity,
                                  init if stage == "global" else None))
    final = load_checkpoint(stage_path(out, run[-1]), NAME)
    save_checkpoint(out, final.pop("model"), **final, stages=summary)
    logger.info(f"glam: model of stage '{run[-1]}' written to {out}")
    return {"checkpoint": str(out), "label_report": report, "stages": [
        {k: s[k] for k in ("stage", "metric", "best_metric", "best_epoch", "epochs_run")} for s in summary]}
