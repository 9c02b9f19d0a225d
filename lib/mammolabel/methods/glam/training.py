"""Training stages and inference of GLAM (Liu et al., MIDL 2021), shared by the CLI and the server.

Training (train task ``train_glam``, paper Fig. 3) uses image-level findings only; the two
classes are benign and malignant (a normal image is negative for both):

1. ``global``: the global module with the summed BCE of its three scales plus sparsity;
2. ``local``: the global module frozen selects the patches; the local module learns with BCE of
   its aggregated prediction plus sparsity of the patch maps;
3. ``joint``: everything, with the fusion module, on the sum of the three losses.

Each stage starts from the previous stage's best checkpoint (``<out>.stages/<stage>.pt``) and
runs through :func:`mammolabel.training.loop.fit` (device, AMP on GPU, progress, best and last
checkpoints, resume). As in the paper ("select the best segmentation model"), the best epoch of
a stage is the one with the best validation Dice of its saliency map (global map, local map,
fused map) on the validation images that have a mask; without any, the validation loss decides.
The segmentation thresholds of every map and class are chosen on the same validation images and
stored in the checkpoint. ``stage=all`` runs the three stages in turn; a stage whose options,
training images or starting weights changed is trained afresh, a finished one is not repeated.

Inference (:func:`run_glam`) brings a canonical image to the input frame, runs the network and
returns the maps of every module, the predictions and the patch boxes in full canonical pixels.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.dataset import Sample, prepare
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.distributed import main_only
from mammolabel.training.loop import FitOptions, fit, last_path, resolve_device, stats_path
from mammolabel.training.progress import Progress
from mammolabel.errors import InputError
from mammolabel.methods.glam.loss import GlamLoss
from mammolabel.metrics import auc
from mammolabel.methods.glam.network import CLASSES, STAGES, GlamConfig, GlamNet, GlamOutput
from mammolabel.transforms.geometry import Frame, make_frame

logger = logging.getLogger("mammolabel")

#: Thresholds tried on the validation maps.
THRESHOLDS = np.round(np.arange(0.02, 0.99, 0.02), 2)
#: The module whose saliency map selects each stage's best epoch and whose prediction scores its images.
STAGE_OUTPUT = {"global": "global", "local": "local", "joint": "fused"}
#: The maps each stage's output holds.
STAGE_MAPS = {"global": ("global",), "local": ("global", "local", "fused"), "joint": ("global", "local", "fused")}
#: The map the infer task segments by default, after each stage.
SERVED_MAP = {"global": "global", "local": "fused", "joint": "fused"}
#: Options that may change between a run and its resumption without invalidating a stage.
FREE_OPTIONS = ("epochs", "local_epochs", "joint_epochs", "resume", "device", "stage")


@dataclass
class GlamOptions:
    """Options of ``train_glam``; defaults are the paper's network at its 2944 x 1920 input.

    Attributes:
        rows, cols: input size (multiples of 64); the image is cropped to the breast first.
        patch_size: side of the square patches in input pixels (512; a multiple of 16).
        num_patches: K. global_width, local_width, local_depth: network sizes (16, 64, 34).
        t_global, t_local: top-t% pooling fractions (0.03 and 0.3 as in the authors' code).
        aggregation: ``concat`` or ``attention``.
        stage: ``global``, ``local``, ``joint`` or ``all`` (the three in turn).
        epochs, local_epochs, joint_epochs: epochs of the global, local and joint stages.
        beta: weight of the sparsity loss. lr: Adam learning rate of the global and local stages;
        joint_lr: of the joint stage. batch_size. augment: random vertical flips.
        small_radius_px: lesions with a smaller equivalent radius (pixels of the stored image)
        count as small in the evaluation (30 px: 6 mm on the 200 um MIAS films).
    """

    rows: int = 2944
    cols: int = 1920
    crop_breast: bool = True
    patch_size: int = 512
    num_patches: int = 3
    global_width: int = 16
    local_width: int = 64
    local_depth: int = 34
    t_global: float = 0.03
    t_local: float = 0.3
    aggregation: str = "concat"
    stage: str = "all"
    epochs: int = 10
    local_epochs: int = 10
    joint_epochs: int = 5
    beta: float = 0.01
    lr: float = 1e-3
    joint_lr: float = 1e-4
    batch_size: int = 4
    augment: bool = True
    small_radius_px: float = 30.0
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        if self.stage not in (*STAGES, "all"):
            raise InputError(f"option 'stage' must be one of {', '.join((*STAGES, 'all'))}, got {self.stage!r}")
        if min(self.epochs, self.local_epochs, self.joint_epochs, self.batch_size) < 1:
            raise InputError("epochs, local_epochs, joint_epochs and batch_size must be at least 1")
        if self.beta < 0 or self.lr <= 0 or self.joint_lr <= 0:
            raise InputError("beta must be >= 0 and the learning rates > 0")
        try:
            config = self.network_config()
        except ValueError as e:
            raise InputError(f"invalid network options: {e}") from e
        if self.rows % config.total_stride or self.cols % config.total_stride:
            raise InputError(f"options 'rows' and 'cols' must be multiples of {config.total_stride}, "
                             f"got {self.rows} x {self.cols}")
        if self.patch_size > min(self.rows, self.cols):
            raise InputError(f"option 'patch_size' ({self.patch_size}) must fit the input ({self.rows} x {self.cols})")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> GlamOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def network_config(self) -> GlamConfig:
        return GlamConfig(global_width=self.global_width, local_width=self.local_width, local_depth=self.local_depth,
                          num_patches=self.num_patches, patch_size=(self.patch_size, self.patch_size),
                          t_global=self.t_global, t_local=self.t_local, aggregation=self.aggregation)

    def stage_epochs(self, stage: str) -> int:
        return {"global": self.epochs, "local": self.local_epochs, "joint": self.joint_epochs}[stage]


def targets_of(finding: str | None) -> torch.Tensor:
    """Image-level target (benign, malignant) of a finding; normal is negative for both."""
    return torch.tensor([float(finding == c) for c in CLASSES])


class PreparedSet:
    """Prepared samples as tensors: images (N, 1, H, W) and targets (N, 2); ``has_mask`` flags the lesion masks."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples
        self.images = torch.stack([s.image for s in samples]) if samples else torch.zeros(0)
        self.targets = torch.stack([targets_of(s.finding) for s in samples]) if samples else torch.zeros(0, 2)
        self.has_mask = [s.mask is not None and s.finding in CLASSES for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                augment: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``image``, ``target`` and ``index``; shuffled and randomly flipped when a generator is given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            images = self.images[index]
            if augment and generator is not None:
                flip = torch.rand(len(index), generator=generator) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-2), images)
            yield {"image": images, "target": self.targets[index], "index": index}


def dice_curve(saliency: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Dice of ``saliency >= t`` against a binary ``truth`` for every threshold t (both (H, W))."""
    t = truth > 0
    values = np.sort(saliency[t].ravel())
    everything = np.sort(saliency.ravel())
    inside = len(values) - np.searchsorted(values, thresholds, side="left")  # true positives per threshold
    predicted = len(everything) - np.searchsorted(everything, thresholds, side="left")
    denominator = predicted + int(t.sum())
    return np.where(denominator > 0, 2 * inside / np.maximum(denominator, 1), 0.0)


def stage_maps(net: GlamNet, out: GlamOutput, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The saliency maps (B, 2, H, W) at input resolution that an output holds: global, and local/fused."""
    maps = {"global": net.upsampled_global(out, size)}
    if out.local_saliency is not None:
        maps.update(local=out.local_saliency, fused=out.fused_saliency)
    return maps


def stage_predictions(out: GlamOutput) -> dict[str, torch.Tensor]:
    predictions = {"global": out.global_prediction}
    if out.local_prediction is not None:
        predictions.update(local=out.local_prediction, fused=out.fused_prediction)
    return predictions


@torch.no_grad()
def validation_scores(net: GlamNet, data: PreparedSet, stage: str, batch_size: int,
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
    for batch in data.batches(batch_size):
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


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Fingerprint of a state dict's values (which weights a stage started from)."""
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _stage_paths(stages_dir: Path, stage: str) -> list[Path]:
    best = stages_dir / f"{stage}.pt"
    return [best, last_path(best), stats_path(best)]


def _is_stale(stages_dir: Path, stage: str, meta: dict[str, Any]) -> bool:
    """Whether the stage's files on disk came from other options, training images or starting weights."""
    last = last_path(stages_dir / f"{stage}.pt")
    if not last.exists():
        return False
    old = load_checkpoint(last)
    same = {k: v for k, v in meta["options"].items() if k not in FREE_OPTIONS}
    return (old.get("train_images") != meta["train_images"] or old.get("init_digest") != meta["init_digest"]
            or any(old.get("options", {}).get(k) != v for k, v in same.items()))


def _initial_weights(net: GlamNet, stages_dir: Path, stage: str) -> None:
    """Start ``stage`` from the previous stage's best: the global module for ``local``, everything for ``joint``."""
    if stage == "global":
        return
    previous = STAGES[STAGES.index(stage) - 1]
    path = stages_dir / f"{previous}.pt"
    if not path.exists():
        raise InputError(f"stage '{stage}' starts from the '{previous}' stage's checkpoint {path}, which does not "
                         f"exist; run train_glam with stage={previous} (or stage=all) first")
    ckpt = load_checkpoint(path)
    if GlamConfig.from_dict(ckpt["config"]).to_dict() != net.config.to_dict() and stage == "joint":
        raise InputError(f"stage 'joint' needs the network of the local stage ({path}); the options differ")
    state = ckpt["model"]
    if stage == "local":
        state = {k: v for k, v in state.items() if k.startswith("global_module.")}
        own = {k: v for k, v in net.state_dict().items() if k.startswith("global_module.")}
        if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in own.items()}:
            raise InputError(f"the global stage at {path} was trained with another global network; "
                             "use the same sizes or run stage=global again")
    net.load_state_dict(state, strict=stage == "joint")


def _run_stage(net: GlamNet, stage: str, train: PreparedSet, val: PreparedSet, options: GlamOptions,
               stages_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Train one stage; return its summary with the thresholds chosen on validation."""
    path = stages_dir / f"{stage}.pt"
    loss_fn = GlamLoss(beta=options.beta)
    map_name = STAGE_OUTPUT[stage]
    metric = "val_dice" if any(val.has_mask) else "val_neg_loss"

    def step(model: GlamNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if stage == "local":
            model.global_module.eval()  # frozen: its batch norms keep their statistics
        return loss_fn(model(batch["image"], stage), batch["target"], stage)

    def validate(model: GlamNet) -> dict[str, float]:
        scores = validation_scores(model, val, stage, options.batch_size, loss_fn)
        chosen = choose_thresholds(scores["curves"], STAGE_MAPS[stage])
        out = {"val_neg_loss": -scores["loss"],
               **_aucs(scores["predictions"][map_name], val.targets.numpy())}
        for name, per_class in chosen.items():
            value = _mean_dice(per_class)
            if value is not None:
                out[f"val_dice_{name}"] = value
        if f"val_dice_{map_name}" in out:
            out["val_dice"] = out[f"val_dice_{map_name}"]
        return out

    module = {"global": net.global_module, "local": net.local_module, "joint": net}[stage]
    lr = options.joint_lr if stage == "joint" else options.lr
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(options.seed * 7919 + 1000 * STAGES.index(stage) + epoch)
        return train.batches(options.batch_size, generator, options.augment)

    result = fit(net, optimizer, batches, math.ceil(len(train) / options.batch_size), step, validate, metric, path,
                 FitOptions(epochs=options.stage_epochs(stage), device=options.device, resume=options.resume),
                 meta={**meta, "stage": stage}, desc=f"glam {stage}")

    best = load_checkpoint(path)
    net.load_state_dict(best["model"])
    if "thresholds" not in best:  # fit rewrites the best checkpoint, without thresholds, whenever it improves
        net.eval()
        with torch.no_grad():
            curves = validation_scores(net, val, stage, options.batch_size)["curves"]
        best["thresholds"] = choose_thresholds(curves, STAGE_MAPS[stage])
        save_checkpoint(path, best.pop("model"), **best)
    thresholds = load_checkpoint(path)["thresholds"]
    logger.info(f"glam {stage}: validation Dice by map and class at the chosen thresholds: "
                f"{ {n: {c: v['dice'] for c, v in d.items()} for n, d in thresholds.items()} }")
    return {"stage": stage, "metric": metric, "thresholds": thresholds, **asdict(result)}


def train_glam(inventory: LabelInventory, options: GlamOptions, out: str | Path) -> dict[str, Any]:
    """Run the requested stage(s) and write the served model (the last stage run) to ``out``.

    Image-level findings train the network; masks of validation images pick the best epoch and
    the thresholds (counted in the label report as ``val_masks``). The split is patient-wise; its
    validation ids are stored in the checkpoint (``val_images``).
    """
    out = Path(out)
    records, report = inventory.select("finding")
    train_records, val_records = split_by_patient(records, options.val_fraction, options.seed)
    if not any(r.finding in CLASSES for r in train_records) or len({r.finding for r in train_records}) < 2:
        raise InputError(f"train_glam needs training images with a benign or malignant finding and images with "
                         f"another finding; the datastore has {report}")
    if not val_records:
        raise InputError(f"train_glam needs validation images (val_fraction={options.val_fraction}); "
                         f"the datastore has {report}")
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    net = GlamNet(options.network_config()).to(device)
    stages_dir = out.with_name(out.stem + ".stages")
    run = STAGES if options.stage == "all" else (options.stage,)
    _initial_weights(net, stages_dir, run[0])  # refuses a missing or mismatched previous stage before any work
    size = (options.rows, options.cols)
    progress = Progress(len(records), "glam: prepare images", every_s=15)
    prepared = {}
    for r in records:
        prepared[r.image_id] = prepare(r, size, options.crop_breast)
        progress.update()
    train = PreparedSet([prepared[r.image_id] for r in train_records])
    val = PreparedSet([prepared[r.image_id] for r in val_records])
    report.update(train_images=len(train), val_images=len(val),
                  **{f"train_{c}": int(train.targets[:, i].sum()) for i, c in enumerate(CLASSES)},
                  **{f"val_{c}": int(val.targets[:, i].sum()) for i, c in enumerate(CLASSES)},
                  val_masks=sum(val.has_mask), train_masks_unused=sum(s.mask is not None for s in train.samples))
    logger.info(f"glam: label usage {report}")

    stages_dir.mkdir(parents=True, exist_ok=True)
    base = {"config": net.config.to_dict(), "options": asdict(options), "label_report": report,
            "val_images": [r.image_id for r in val_records], "train_images": [r.image_id for r in train_records],
            "input": {"rows": options.rows, "cols": options.cols, "crop_breast": options.crop_breast}}
    summary = []
    for stage in run:
        _initial_weights(net, stages_dir, stage)
        meta = {**base, "init_digest": None if stage == "global" else state_digest(net.state_dict())}
        if not options.resume or _is_stale(stages_dir, stage, meta):
            logger.info(f"glam {stage}: starting afresh (resume off, or other options, images or starting weights)")
            main_only(lambda: [p.unlink(missing_ok=True) for p in _stage_paths(stages_dir, stage)])
        summary.append(_run_stage(net, stage, train, val, options, stages_dir, meta))
    final = load_checkpoint(stages_dir / f"{run[-1]}.pt")
    save_checkpoint(out, final.pop("model"), **final, stages=summary)
    logger.info(f"glam: model of stage '{run[-1]}' written to {out}")
    return {"checkpoint": str(out), "label_report": report, "stages": [
        {k: s[k] for k in ("stage", "metric", "best_metric", "best_epoch", "epochs_run")} for s in summary]}


# --- inference ---------------------------------------------------------------------------------

@dataclass
class GlamResult:
    """What :func:`run_glam` finds on one canonical image.

    Attributes:
        stage: the stage the checkpoint finished (which maps and predictions are trained).
        predictions: {module: {class: probability}} for ``global`` and, after the local stage,
            ``local`` and ``fused``.
        maps: {name: (2, h, w) input-frame saliency} for the same modules.
        patches: the selected patches, ``{"box": [x0, y0, x1, y1]}`` (inclusive, full canonical
            pixels) with ``"attention"`` under attention aggregation; empty after the global stage.
        frame: the input frame.
    """

    stage: str
    predictions: dict[str, dict[str, float]]
    maps: dict[str, np.ndarray]
    patches: list[dict[str, Any]]
    frame: Frame


def patch_box(frame: Frame, corner: tuple[int, int], patch_size: tuple[int, int]) -> list[int]:
    """Inclusive full-image box [x0, y0, x1, y1] of the input pixels ``corner`` + ``patch_size``."""
    sy, sx = frame.scale
    r, c = corner
    r0, c0 = frame.crop[0], frame.crop[1]
    return [int(math.floor(c0 + c / sx)), int(math.floor(r0 + r / sy)),
            int(math.ceil(c0 + (c + patch_size[1]) / sx)) - 1, int(math.ceil(r0 + (r + patch_size[0]) / sy)) - 1]


def run_glam(net: GlamNet, pixels: np.ndarray, stage: str, options: GlamOptions,
             device: str | torch.device = "cpu") -> GlamResult:
    """Run the model trained up to ``stage`` on a canonical (rows, cols) image in [0, 1]."""
    frame = make_frame(pixels, (options.rows, options.cols), options.crop_breast)
    x = torch.from_numpy(frame.to_input(pixels))[None, None].to(device)
    with torch.inference_mode():
        out = net(x, "global" if stage == "global" else "joint")
        maps = {k: v[0].float().cpu().numpy() for k, v in stage_maps(net, out, frame.size).items()}
        predictions = {k: dict(zip(CLASSES, v[0].float().cpu().tolist())) for k, v in stage_predictions(out).items()}
    patches = []
    if out.corners is not None:
        for k, (r, c) in enumerate(out.corners[0].tolist()):
            entry: dict[str, Any] = {"box": patch_box(frame, (r, c), net.config.patch_size)}
            if out.attention is not None:
                entry["attention"] = float(out.attention[0, k])
            patches.append(entry)
    return GlamResult(stage, predictions, maps, patches, frame)


def segment(maps: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Labelmap (H, W) of a (2, H, W) saliency: 1 benign, 2 malignant where the map reaches the class threshold.

    Where both classes reach their thresholds the one exceeding it by the larger ratio wins.
    """
    ratios = np.stack([maps[i] / max(thresholds[c], 1e-6) for i, c in enumerate(CLASSES)])
    labels = np.argmax(ratios, axis=0).astype(np.uint8) + 1
    labels[ratios.max(axis=0) < 1] = 0
    return labels


# --- side-by-side timing against the authors' public code ------------------------------------------

def reference_glam(reference_dir: str | Path, num_patches: int) -> torch.nn.Module:
    """The authors' public GLAM model (nyukat/GLAM, random weights) imported from ``reference_dir``.

    Their code imports torchvision (only ``conv3x3`` and ``transforms``) and OpenCV, neither of
    which this project installs; when missing, stand-ins enter ``sys.modules`` before the import:
    ``conv3x3`` re-expressed (a 3x3 convolution, padding 1, no bias) and empty modules for the
    rest, which their inference never calls. Their window search divides integer tensors with
    ``/``, an integer division in the PyTorch 0.4 it was written for and a float division since
    PyTorch 1.5 (wrong patch rows, and with K > 1 a crash when a patch is pasted back); it is
    re-expressed with floor division. Their code runs otherwise unchanged.
    """
    import importlib
    import importlib.util
    import sys
    import types

    def missing(name: str) -> bool:
        return name not in sys.modules and importlib.util.find_spec(name) is None

    if missing("torchvision"):
        vision = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")

        def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> torch.nn.Conv2d:
            return torch.nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)

        resnet.conv3x3 = conv3x3
        vision.models, models.resnet = models, resnet
        vision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": vision, "torchvision.models": models, "torchvision.models.resnet": resnet,
                            "torchvision.transforms": vision.transforms})
    if missing("cv2"):
        sys.modules["cv2"] = types.ModuleType("cv2")
    root = str(Path(reference_dir).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    glam = importlib.import_module("src.modeling.glam")

    def max_window(image: torch.Tensor, window: tuple[int, int], pooling_logic: str = "avg") -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(image, window, stride=1)
        index = pooled.flatten(2).argmax(dim=-1)
        return torch.stack([index // pooled.shape[-1], index % pooled.shape[-1]], dim=-1)

    glam.common_functions.get_max_window = max_window
    parameters = {"device_type": "cpu", "gpu_number": 0, "cam_size": (184, 120), "top_k_per_class": num_patches,
                  "crop_shape": (512, 512), "percent_k": 0.03, "detection_pooling_percent_k": 0.3}
    return glam.MILSingleImageModel(parameters).eval()


def side_by_side(reference_dir: str | Path, num_patches: tuple[int, ...] = (1, 3), repeats: int = 3) -> dict[str, Any]:
    """CPU forward latency at 2944 x 1920 of the authors' GLAM and of ours (same sizes, random weights).

    Interleaved in one process (theirs, ours, theirs, ...) so that both see the same machine load;
    medians and the ratio ours / theirs per K.
    """
    import statistics
    import time

    from mammolabel.evaluation.benchmark import FULL_FIELD, machine

    x = torch.rand(1, 1, *FULL_FIELD)
    results: dict[str, Any] = {"machine": machine(), "input": list(FULL_FIELD), "repeats": repeats,
                               "reference": "nyukat/GLAM src/modeling/glam.py MILSingleImageModel (random weights)"}
    for k in num_patches:
        theirs = reference_glam(reference_dir, k)
        ours = GlamNet(GlamOptions(num_patches=k).network_config()).eval()
        times: dict[str, list[float]] = {"theirs": [], "ours": []}
        with torch.inference_mode():
            theirs(x)  # warm-up
            ours(x)
            for _ in range(repeats):
                for name, model in (("theirs", theirs), ("ours", ours)):
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
        entry = {name: {"latency_s": statistics.median(t), "runs_s": t} for name, t in times.items()}
        entry["parameters"] = {"theirs": sum(p.numel() for p in theirs.parameters()),
                               "ours": sum(p.numel() for p in ours.parameters())}
        entry["latency_ratio_ours_over_theirs"] = entry["ours"]["latency_s"] / entry["theirs"]["latency_s"]
        results[f"K={k}"] = entry
        logger.info(f"glam side-by-side K={k}: {entry}")
    return results


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Time the authors' GLAM beside ours at 2944 x 1920 on CPU")
    parser.add_argument("--reference", required=True, help="a checkout of nyukat/GLAM (outside this repository)")
    parser.add_argument("--merge-into", type=Path, help="benchmark JSON to add the results to, as 'side_by_side'")
    parser.add_argument("--patches", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    found = side_by_side(args.reference, tuple(args.patches), args.repeats)
    if args.merge_into:
        report = json.loads(args.merge_into.read_text()) if args.merge_into.exists() else {}
        report["side_by_side"] = found
        args.merge_into.write_text(json.dumps(report, indent=2))
    print(json.dumps(found, indent=2))
