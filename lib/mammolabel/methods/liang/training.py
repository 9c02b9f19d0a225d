"""Training stages and inference of Liang et al.'s weakly-supervised self-training localization.

Training follows the paper (EMBC 2020, section II) from image-level findings only:

1. the classification network learns normal versus positive (softmax cross-entropy; positives
   also enter flipped and rotated by 90, 180 and 270 degrees, section III-A);
2. self-training rounds, one per tapped Inception block in ``LiangConfig.taps`` order: the round's
   trimaps come from the CAM (first round) or from the previous round's CNN, thresholded at
   ``t_f`` / ``t_b``; its CNN learns them with binary cross-entropy on the frozen classifier's
   feature map. The classifier is not updated after stage 1.

Every stage runs through :func:`mammolabel.training.loop.fit` (device, AMP on GPU, progress, best
and last checkpoints, resume); the stages' files live in ``<out>.stages/`` and the final model
(classifier and all self-training CNNs) is written to ``out``.

Inference (:func:`localize`) brings a canonical image to the input frame, runs the network,
takes the local maxima of the fused map above a threshold as lesion points and maps every point
back to the full canonical image; :func:`render_labelmap` draws the points and heatmap levels.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.draw import disk
from skimage.feature import peak_local_max
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.dataset import Sample, prepare
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.distributed import main_only
from mammolabel.training.loop import FitOptions, fit, resolve_device, to_device
from mammolabel.training.progress import Progress
from mammolabel.errors import InputError
from mammolabel.io.orientation import body_mask
from mammolabel.methods.liang.loss import TrimapBCELoss
from mammolabel.metrics import auc
from mammolabel.methods.liang.network import BACKGROUND, POSITIVE, UNKNOWN, LiangConfig, LiangNet, trimap
from mammolabel.transforms.geometry import Frame, make_frame

logger = logging.getLogger("mammolabel")

#: Findings counted as the positive class, by the ``positive`` option.
POSITIVE_FINDINGS = {"abnormal": ("benign", "malignant"), "malignant": ("malignant",)}

#: The paper's versions of each positive training image: original, horizontal flip, rotations.
AUGMENTATIONS = ("original", "flip", "rot90", "rot180", "rot270")


@dataclass
class LiangOptions:
    """Options of ``train_cam_self_training``; the defaults are the paper's (section II-D, III-A).

    ``epochs`` is the classifier stage; each self-training round runs ``self_training_epochs``.
    ``negatives_background``: the paper derives every trimap from a heatmap; for an image whose
    finding is normal the image label already says that no pixel is a lesion, so its trimap is
    all background (set False to use its CAM trimap like any other image).
    ``breast_only``: pixels outside the breast (the largest bright component) are set to 0 in the
    input, and every map is normalised within the breast and 0 outside it, in training and
    inference alike (not in the paper, whose digital images have an empty background).
    ``point_threshold``, ``max_points`` and ``peak_distance`` (fraction of the input side) define
    the predicted points: local maxima of the fused map; ``heat_levels`` the labelmap's levels.
    """

    size: int = 832
    width: float = 1.0
    head_channels: int = 1024
    first_channels: int = 512
    shared_channels: int = 512
    temperature: float = 1.0
    positive: str = "abnormal"
    crop_breast: bool = True
    breast_only: bool = True
    augment_positives: bool = True
    negatives_background: bool = True
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    epochs: int = 10
    self_training_epochs: int = 10
    t_f: float = 0.6
    t_b: float = 0.1
    point_threshold: float = 0.5
    max_points: int = 3
    peak_distance: float = 0.04
    heat_levels: str = "0.3,0.5,0.7"
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        if self.positive not in POSITIVE_FINDINGS:
            raise InputError(f"option 'positive' must be one of {', '.join(POSITIVE_FINDINGS)}, got {self.positive!r}")
        if self.size < 32 or self.size % 32:
            raise InputError(f"option 'size' must be a multiple of 32 (the classifier's stride), got {self.size}")
        if not 0 <= self.t_b <= self.t_f <= 1:
            raise InputError(f"need 0 <= t_b <= t_f <= 1, got t_b={self.t_b}, t_f={self.t_f}")
        if self.batch_size < 1 or self.epochs < 1 or self.self_training_epochs < 1:
            raise InputError("batch_size, epochs and self_training_epochs must be at least 1")
        self.levels()

    def levels(self) -> list[float]:
        """The heatmap levels as increasing floats in (0, 1]."""
        try:
            values = [float(v) for v in str(self.heat_levels).split(",") if v.strip()]
        except ValueError as e:
            raise InputError(f"option 'heat_levels' must be comma-separated numbers, got {self.heat_levels!r}") from e
        if not values or values != sorted(values) or not all(0 < v <= 1 for v in values):
            raise InputError(f"option 'heat_levels' must increase within (0, 1], got {self.heat_levels!r}")
        return values

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> LiangOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def network_config(self) -> LiangConfig:
        return LiangConfig(width=self.width, head_channels=self.head_channels, first_channels=self.first_channels,
                           shared_channels=self.shared_channels, temperature=self.temperature)


def augment(image: torch.Tensor, variant: str) -> torch.Tensor:
    """One of :data:`AUGMENTATIONS` of a (C, H, W) image (square, so that rotations keep the shape)."""
    if variant == "original":
        return image
    if variant == "flip":
        return torch.flip(image, dims=(-1,))
    return torch.rot90(image, k=int(variant[3:]) // 90, dims=(-2, -1))


def breast_region(image: np.ndarray) -> np.ndarray:
    """{0, 1} float mask of the breast on an input-frame (h, w) image."""
    mask, scale = body_mask(image)
    if scale < 1:
        mask = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=image.shape)[0, 0].numpy()
    return (mask > 0).astype(np.float32)


class TrainingItems(Dataset):
    """Items ``{"image", "region", "label", "item"}`` of prepared samples, each positive in every augmentation.

    ``region`` is the breast (all ones without ``breast_only``) and the image is 0 outside it;
    ``label`` is 1 for a positive finding, 0 otherwise; ``item`` indexes :attr:`items` (the sample
    index and variant), so that per-item pseudo-labels can be looked up.
    """

    def __init__(self, samples: list[Sample], positive: list[bool], augment_positives: bool, breast_only: bool = True):
        self.samples, self.positive = samples, positive
        self.regions = [torch.from_numpy(breast_region(s.image[0].numpy()))[None] if breast_only
                        else torch.ones_like(s.image) for s in samples]
        self.items = [(i, v) for i, p in enumerate(positive)
                      for v in (AUGMENTATIONS if (p and augment_positives) else ("original",))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample, variant = self.items[index]
        region = self.regions[sample]
        return {"image": augment(self.samples[sample].image * region, variant), "region": augment(region, variant),
                "label": torch.tensor(int(self.positive[sample])), "item": torch.tensor(index)}


def _loader(dataset: Dataset, batch_size: int, shuffle_seed: int | None = None) -> DataLoader:
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=generator)


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
    for batch in _loader(dataset, options.batch_size):
        batch = to_device(batch, device)
        _, cam, features = net.cam(batch["image"], batch["region"])
        grid = features[taps[round_index]].shape[-2:]
        source = cam if round_index == 0 else net.self_training_maps(features, batch["region"])[round_index - 1]
        maps = trimap(F.interpolate(source, size=grid, mode="bilinear", align_corners=False), options.t_f, options.t_b)
        if options.negatives_background:
            maps[batch["label"] == 0] = BACKGROUND
        out.append(maps.cpu())
    return torch.cat(out)


def _classifier_stage(net: LiangNet, train: TrainingItems, val: TrainingItems, options: LiangOptions, out: Path,
                      meta: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: the classification network with softmax cross-entropy; best by validation AUC."""
    val_labels = [int(p) for p in val.positive]
    metric = "val_auc" if 0 < sum(val_labels) < len(val_labels) else "val_neg_loss"

    def step(model: LiangNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model.classifier(batch["image"]).logits.float(), batch["label"])

    def validate(model: LiangNet) -> dict[str, float]:
        device = next(model.parameters()).device
        scores, losses = [], []
        for batch in _loader(val, options.batch_size):
            batch = to_device(batch, device)
            logits = model.classifier(batch["image"]).logits.float()
            losses.append(F.cross_entropy(logits, batch["label"], reduction="sum").item())
            scores += torch.softmax(logits, 1)[:, POSITIVE].tolist()
        value = auc(scores, [bool(v) for v in val_labels])
        return {"val_neg_loss": -sum(losses) / max(1, len(scores)), **({"val_auc": value} if value is not None else {})}

    optimizer = torch.optim.SGD(net.classifier.parameters(), lr=options.lr, momentum=options.momentum)
    result = fit(net, optimizer, lambda epoch: _loader(train, options.batch_size, options.seed * 7919 + epoch),
                 math.ceil(len(train) / options.batch_size), step, validate, metric, out,
                 _fit_options(options, options.epochs), meta={**meta, "stage": "classifier"}, desc="liang classifier")
    return {"stage": "classifier", "metric": metric, **asdict(result)}


def _self_training_round(net: LiangNet, index: int, train: TrainingItems, val: TrainingItems, options: LiangOptions,
                         out: Path, meta: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One self-training round: CNN ``index`` learns this round's trimaps on its frozen feature map."""
    tap = net.config.taps[index]
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
        for batch in _loader(train, options.batch_size, options.seed * 7919 + 1000 * (index + 1) + epoch):
            yield {"image": batch["image"], "trimap": targets["train"][batch["item"]]}

    def step(model: LiangNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        model.classifier.eval()  # frozen after stage 1: its batch norms keep their statistics
        with torch.no_grad():
            feature = model.classifier(batch["image"]).features[tap]
        return loss_fn(model.self_training[index](feature).float(), batch["trimap"])

    def validate(model: LiangNet) -> dict[str, float]:
        total, known = 0.0, 0.0
        sum_loss = TrimapBCELoss(reduction="sum")
        for batch in _loader(val, options.batch_size):
            target = targets["val"][batch["item"]].to(device)
            feature = model.classifier(batch["image"].to(device)).features[tap]
            total += float(sum_loss(model.self_training[index](feature).float(), target))
            known += float((target != UNKNOWN).sum())
        return {"val_neg_bce": -total / known} if known else {}  # no confident validation pixel: nothing to compare

    optimizer = torch.optim.SGD(net.self_training[index].parameters(), lr=options.lr, momentum=options.momentum)
    result = fit(net, optimizer, batches, math.ceil(len(train) / options.batch_size), step, validate, "val_neg_bce",
                 out, _fit_options(options, options.self_training_epochs),
                 meta={**meta, "stage": f"self_training_block{tap}"}, desc=f"liang self-training block {tap}")
    return {"stage": f"self_training_block{tap}", "trimap": counts, **asdict(result)}


def _fit_options(options: LiangOptions, epochs: int) -> FitOptions:
    return FitOptions(epochs=epochs, device=options.device, resume=options.resume)


def _stale(stages_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether the stages on disk were trained with other options or images (then they are not resumed)."""
    last = stages_dir / "classifier.last.pt"
    if not last.exists():
        return False
    old = load_checkpoint(last)
    free = ("epochs", "self_training_epochs", "resume", "device")  # may change between a run and its resumption
    same = {k: v for k, v in meta["options"].items() if k not in free}
    stale = old.get("train_images") != meta["train_images"] or any(old["options"].get(k) != v for k, v in same.items())
    if stale:
        logger.info(f"liang: {stages_dir} holds a run with other options or images; starting afresh")
    return stale


def _load_best(net: LiangNet, path: Path) -> None:
    net.load_state_dict(load_checkpoint(path)["model"])


def train_liang(inventory: LabelInventory, options: LiangOptions, out: str | Path) -> dict[str, Any]:
    """Train the classifier, then every self-training round; write the final model to ``out``.

    Only image-level findings are used (other label kinds are counted, not used). The split is
    patient-wise; its validation image ids are stored in the checkpoint (``val_images``).
    """
    out = Path(out)
    records, report = inventory.select("finding")
    positives = POSITIVE_FINDINGS[options.positive]
    train_records, val_records = split_by_patient(records, options.val_fraction, options.seed)
    if not train_records or not any(r.finding in positives for r in train_records) or all(
            r.finding in positives for r in train_records):
        raise InputError(f"train_cam_self_training needs training images both with and without a positive "
                         f"({options.positive}) finding; the datastore has {report}")
    if not val_records:
        raise InputError(f"train_cam_self_training needs validation images (val_fraction={options.val_fraction}); "
                         f"the datastore has {report}")
    torch.manual_seed(options.seed)
    device = resolve_device(options.device)
    net = LiangNet(options.network_config())
    size = (options.size, options.size)
    progress = Progress(len(records), "liang: prepare images", every_s=15)
    prepared = {}
    for r in records:
        prepared[r.image_id] = prepare(r, size, options.crop_breast)
        progress.update()

    def items(recs: list, augmented: bool) -> TrainingItems:
        return TrainingItems([prepared[r.image_id] for r in recs], [r.finding in positives for r in recs], augmented,
                             options.breast_only)

    train, val = items(train_records, options.augment_positives), items(val_records, False)
    report.update(positive=options.positive, train_images=len(train_records), val_images=len(val_records),
                  train_positive=sum(train.positive), val_positive=sum(val.positive), train_items=len(train))
    logger.info(f"liang: label usage {report}")
    meta = {"config": net.config.to_dict(), "options": asdict(options), "label_report": report,
            "val_images": [r.image_id for r in val_records], "train_images": [r.image_id for r in train_records]}
    stages_dir = out.with_name(out.stem + ".stages")
    if stages_dir.exists() and (not options.resume or _stale(stages_dir, meta)):
        main_only(lambda: shutil.rmtree(stages_dir))
    main_only(lambda: stages_dir.mkdir(parents=True, exist_ok=True))

    summary = [_classifier_stage(net, train, val, options, stages_dir / "classifier.pt", meta)]
    _load_best(net, stages_dir / "classifier.pt")
    for index, tap in enumerate(net.config.taps):
        path = stages_dir / f"self_training_block{tap}.pt"
        summary.append(_self_training_round(net, index, train, val, options, path, meta, device))
        _load_best(net, path)
    save_checkpoint(out, net, **meta, stages=summary)
    logger.info(f"liang: final model written to {out}")
    return {"checkpoint": str(out), "label_report": report, "stages": [
        {k: s[k] for k in ("stage", "best_metric", "best_epoch", "epochs_run") if k in s} for s in summary]}


# --- inference ---------------------------------------------------------------------------------

@dataclass
class Localization:
    """What :func:`localize` finds on one canonical image.

    Attributes:
        probability: positive-class probability of the image.
        maps: input-frame (h, w) maps in [0, 1]: ``cam``, ``self_training_block<i>`` and ``fused``.
        points: local maxima of the fused map, ``{"x", "y", "score"}`` in full canonical pixels.
        peaks: for every map its maximum, ``{"x", "y", "score"}`` in full canonical pixels.
        frame: the input frame (crop and size) the maps live in.
    """

    probability: float
    maps: dict[str, np.ndarray]
    points: list[dict[str, float]]
    peaks: dict[str, dict[str, float]]
    frame: Frame


def map_points(heat: np.ndarray, frame: Frame, threshold: float, max_points: int,
               min_distance: int) -> list[dict[str, float]]:
    """Local maxima of an input-frame map above ``threshold`` (best first), as full canonical points."""
    peaks = peak_local_max(heat, min_distance=max(1, min_distance), threshold_abs=threshold, exclude_border=False)
    ranked = sorted(((float(heat[r, c]), int(c), int(r)) for r, c in peaks), reverse=True)[:max_points]
    return [_full_point(frame, x, y, score) for score, x, y in ranked]


def _full_point(frame: Frame, x: int, y: int, score: float) -> dict[str, float]:
    fx, fy = frame.point_to_full(x, y)
    return {"x": fx, "y": fy, "score": score}


def localize(net: LiangNet, pixels: np.ndarray, options: LiangOptions,
             device: str | torch.device = "cpu") -> Localization:
    """Run the model on a canonical (rows, cols) image in [0, 1] and find the lesion points."""
    frame = make_frame(pixels, (options.size, options.size), options.crop_breast)
    image = frame.to_input(pixels)
    region = breast_region(image) if options.breast_only else np.ones_like(image)
    x, region_t = (torch.from_numpy(a)[None, None].to(device) for a in (image * region, region))
    with torch.inference_mode():
        out = net(x, region_t)
    names = ["cam", *(f"self_training_block{t}" for t in net.config.taps), "fused"]
    maps = {name: F.interpolate(m.float(), size=frame.size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            for name, m in zip(names, [out.cam, *out.self_training, out.fused])}
    peaks = {}
    for name, heat in maps.items():
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peaks[name] = _full_point(frame, int(x), int(y), float(heat[y, x]))
    points = map_points(maps["fused"], frame, options.point_threshold, options.max_points,
                        int(round(options.peak_distance * options.size)))
    return Localization(float(out.probability[0]), maps, points, peaks, frame)


def render_labelmap(heat: np.ndarray, points: list[dict[str, float]], levels: list[float], radius: float) -> np.ndarray:
    """uint8 labelmap: heat levels as labels 2, 3... (``heat >= levels[i]``), then a disk (label 1) per point."""
    labelmap = np.zeros(heat.shape, np.uint8)
    for i, level in enumerate(levels):
        labelmap[heat >= level] = 2 + i
    for p in points:
        rr, cc = disk((p["y"], p["x"]), radius, shape=heat.shape)
        labelmap[rr, cc] = 1
    return labelmap
