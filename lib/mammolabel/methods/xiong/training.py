"""Training of Xiong et al.'s hybrid strong/weak segmentation (train task ``train_hybrid``).

One engine for the CLI (``mammolabel train train_hybrid``) and the server (``/train/train_hybrid``):

1. Labels (paper Sec. 2): every ``final`` mask is a strong label ``y^s``, every ``box`` a weak
   label whose reversed box mask ``y^w`` supervises the background decoder. A box on a masked image
   is that image's ``y^w`` and is not counted again as a weak label. ``strong_fraction`` keeps
   masks on only that share of the training lesion images (seeded) and uses the others' boxes
   (their box label, or boxes of their mask): the paper's 10 % strong / 90 % weak budget.
   ``mode="strong_only"`` trains the paper's Strong-Only baseline (plain U-Net on the strong set).
2. Patient-wise train/validation split over every labelled image; validation Dice on the
   validation images with masks picks the best checkpoint.
3. Adam (lr 1e-4), poly decay ``lr = lr0 (1 - epoch / epochs)^0.9``, random vertical and
   horizontal flips, batch 8, total loss of Eq. 3 (:class:`~mammolabel.methods.xiong.loss.HybridLoss`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd
from torch.utils.data import DataLoader, Dataset, RandomSampler

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.dataset import MammoDataset
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.loop import FitOptions, discard_stale_resume, fit
from mammolabel.errors import InputError
from mammolabel.methods.xiong.loss import HybridLoss, reversed_box_mask
from mammolabel.metrics import dice
from mammolabel.methods.xiong.network import STRIDE, HybridConfig, XiongHybridNet

logger = logging.getLogger("mammolabel")

MODES = ("hybrid", "strong_only")
STRONG, WEAK, NORMAL = "strong", "weak", "normal"


@dataclass
class HybridTrainOptions:
    """Options of ``train_hybrid`` (paper values as defaults; sizes reducible for CPU runs).

    Attributes:
        epochs, device, val_fraction, seed, resume: as every train task.
        rows, cols: network input size (352 x 352 in the paper; multiples of 32).
        crop_breast: crop to the breast before resizing.
        depth, width: ResNet encoder depth (34) and first-stage width (64).
        fd, spm, pl: feature disentanglement, spatial prompting, perception loss (ablation switches).
        mode: "hybrid" or "strong_only" (masks only, no auxiliary branch).
        strong_fraction: share of the training lesion images that keep their mask (1 = all masks).
        normals: also train on normal films (an empty mask, everything definite background).
        batch_size, lr, poly_power: optimisation (8, 1e-4, 0.9).
        steps_per_epoch: optimisation steps per epoch (0 = one pass over the training images);
            set it to compare runs on different numbers of images with the same number of steps.
        threshold: probability above which a pixel is lesion.
        ppa_kernel: averaging window of the pixel-position-aware weights.
        lesion_fraction: share of encoder channels that become lesion-related features.
        init_encoder: a MammoLabel checkpoint whose ResNet encoder initialises ours ("" = random init).
    """

    epochs: int = 50
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    resume: bool = True
    rows: int = 352
    cols: int = 352
    crop_breast: bool = True
    depth: int = 34
    width: int = 64
    fd: bool = True
    spm: bool = True
    pl: bool = True
    mode: str = "hybrid"
    strong_fraction: float = 1.0
    normals: bool = False
    batch_size: int = 8
    lr: float = 1e-4
    poly_power: float = 0.9
    steps_per_epoch: int = 0
    threshold: float = 0.5
    ppa_kernel: int = 31
    lesion_fraction: float = 0.5
    init_encoder: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HybridTrainOptions:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.strong_fraction <= 1:
            problems.append(f"strong_fraction must lie in (0, 1], got {self.strong_fraction}")
        if self.rows < STRIDE or self.cols < STRIDE or self.rows % STRIDE or self.cols % STRIDE:
            problems.append(f"rows and cols must be positive multiples of {STRIDE}, got {self.rows} x {self.cols}")
        if self.batch_size < 1 or self.steps_per_epoch < 0 or self.lr <= 0:
            problems.append("batch_size must be >= 1, steps_per_epoch >= 0 and lr > 0")
        if not 0 < self.threshold < 1:
            problems.append(f"threshold must lie in (0, 1), got {self.threshold}")
        if problems:
            raise InputError("train_hybrid: " + "; ".join(problems))

    def network(self) -> HybridConfig:
        """Network configuration implied by the options (strong_only = plain U-Net)."""
        hybrid = self.mode == "hybrid"
        try:
            return HybridConfig(depth=self.depth, width=self.width, auxiliary=hybrid, disentangle=hybrid and self.fd,
                                spatial_prompt=hybrid and self.spm, lesion_fraction=self.lesion_fraction)
        except ValueError as e:
            raise InputError(f"train_hybrid: {e}") from e


@dataclass
class LabelPlan:
    """Which training image is used how, and the label usage report."""

    roles: dict[str, str] = field(default_factory=dict)  # image id -> strong / weak / normal
    demoted: list[str] = field(default_factory=list)  # masked images used through their boxes
    report: dict[str, Any] = field(default_factory=dict)


def plan_labels(records: list[ImageLabels], options: HybridTrainOptions) -> LabelPlan:
    """Assign each training image a role and count the labels used and skipped (nothing counted twice)."""
    masked = sorted(r.image_id for r in records if r.mask_path)
    boxed = sorted(r.image_id for r in records if r.box_path and not r.mask_path)
    normal = sorted(r.image_id for r in records if not r.mask_path and not r.box_path and r.finding == "normal")
    unlocated = [r.image_id for r in records if not r.mask_path and not r.box_path and r.finding != "normal"]
    lesion_images = len(masked) + len(boxed)

    strong, demoted = list(masked), []
    if options.strong_fraction < 1 and masked:
        n_strong = min(len(masked), max(1, round(options.strong_fraction * lesion_images)))
        order = np.random.default_rng([options.seed, 7]).permutation(len(masked))
        strong = sorted(masked[i] for i in order[:n_strong])
        demoted = sorted(masked[i] for i in order[n_strong:])
    weak = sorted(boxed + demoted) if options.mode == "hybrid" else []

    roles = {i: STRONG for i in strong} | {i: WEAK for i in weak}
    if options.normals:
        roles |= {i: NORMAL for i in normal}
    boxes_on_strong = sum(1 for r in records if r.image_id in strong and r.box_path)
    report = {
        "mode": options.mode,
        "train_images": len(records),
        "lesion_images": lesion_images,
        "strong_masks_used": len(strong),
        "weak_boxes_used": len(boxed) if options.mode == "hybrid" else 0,
        "weak_boxes_replacing_masks": len(demoted) if options.mode == "hybrid" else 0,
        "masks_not_used": len(demoted),
        "boxes_skipped": len(boxed) + len(demoted) if options.mode == "strong_only" else 0,
        "boxes_on_masked_images_not_counted": boxes_on_strong,
        "normals_used": len(normal) if options.normals else 0,
        "normals_skipped": 0 if options.normals else len(normal),
        "lesion_findings_without_location_skipped": len(unlocated),
        "strong_fraction_actual": round(len(strong) / lesion_images, 4) if lesion_images else 0.0,
    }
    return LabelPlan(roles, demoted, report)


def _plain(value: Any) -> Any:
    return value.as_tensor() if isinstance(value, MetaTensor) else value


class HybridDataset(Dataset):
    """Training items of the hybrid framework, prepared once and kept in memory.

    Items: ``image`` (1, h, w); ``mask`` (1, h, w) = ``y^s`` (zeros unless strong); ``background``
    (1, h, w) = reversed box mask ``y^w`` (from the box label, else from the mask's boxes; all ones
    for a normal film); ``strong`` (scalar 0/1). With ``flips`` the three maps are flipped together.
    """

    KEYS = ("image", "mask", "background")

    def __init__(self, records: list[ImageLabels], roles: dict[str, str], size: tuple[int, int],
                 crop_breast: bool, flips: bool = False, seed: int = 0):
        self.base = MammoDataset(records, size, crop_breast)
        self.items: list[dict[str, torch.Tensor]] = []
        for sample in self.base.samples:
            role = roles[sample.image_id]
            empty = torch.zeros_like(sample.image)
            weak_source = sample.box if sample.box is not None else sample.mask
            background = reversed_box_mask(weak_source[0].numpy() if weak_source is not None else empty[0].numpy())
            self.items.append({
                "image": sample.image,
                "mask": sample.mask if role == STRONG else empty,
                "background": torch.from_numpy(background)[None],
                "strong": torch.tensor(float(role in (STRONG, NORMAL))),
            })
        self.transform = None
        if flips:
            self.transform = Compose([RandFlipd(self.KEYS, prob=0.5, spatial_axis=0),
                                      RandFlipd(self.KEYS, prob=0.5, spatial_axis=1)])
            self.transform.set_random_state(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.items[index])
        if self.transform is not None:
            item = {k: _plain(v) for k, v in self.transform(item).items()}
        return item


def init_encoder(model: XiongHybridNet, path: str | Path) -> int:
    """Initialise ``model.encoder`` from another MammoLabel checkpoint's ResNet encoder; return tensors copied.

    The checkpoint's keys are matched to ours by suffix (e.g. ``backbone.stages.0.0.conv1.weight``
    to ``stages.0.0.conv1.weight``); one prefix must supply every encoder tensor with our shape
    (same depth and width), otherwise nothing is copied and a clear error is raised.
    """
    state = load_checkpoint(path)["model"]
    ours = model.encoder.state_dict()
    prefixes = {k[: len(k) - len(o)] for k in state for o in ours if k.endswith(o) and (k == o or k[-len(o) - 1] == ".")}
    best: dict[str, torch.Tensor] = {}
    for prefix in sorted(prefixes):
        found = {o: state[prefix + o] for o in ours if prefix + o in state and state[prefix + o].shape == ours[o].shape}
        if len(found) > len(best):
            best = found
    if len(best) < len(ours):
        raise InputError(f"{path}: no ResNet encoder tensors match this network (depth {model.config.depth}, "
                         f"width {model.config.width}): at best {len(best)} of {len(ours)} tensors fit")
    model.encoder.load_state_dict(best)
    logger.info(f"train_hybrid: encoder initialised from {path} ({len(best)} tensors)")
    return len(best)


def _batches(dataset: Dataset, options: HybridTrainOptions) -> tuple[Callable[[int], Iterator[dict]], int]:
    """The epoch's batches (shuffled, or ``steps_per_epoch`` batches drawn with replacement) and their number."""

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(options.seed * 1000 + epoch)
        steps = options.steps_per_epoch
        sampler = RandomSampler(dataset, replacement=steps > 0, generator=generator,
                                num_samples=steps * options.batch_size if steps else None)
        return iter(DataLoader(dataset, batch_size=options.batch_size, sampler=sampler))

    n = options.steps_per_epoch or -(-len(dataset) // options.batch_size)
    return batches, n


@torch.no_grad()
def validation_metrics(model: XiongHybridNet, dataset: HybridDataset, threshold: float,
                       batch_size: int = 8) -> dict[str, float]:
    """Validation at input resolution: mean Dice of the lesion masks and, with the auxiliary branch, the
    share of lesion pixels inside the uncertain area (recall) and the share of all pixels it covers."""
    device = next(model.parameters()).device
    dices, recalls, fractions = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        out = model(batch["image"].to(device))
        pred = (torch.sigmoid(out.segmentation.float()) > threshold).cpu().numpy()
        truth = batch["mask"].numpy() > 0
        dices += [dice(p, t) or 0.0 for p, t in zip(pred, truth)]
        if out.background is not None:
            uncertain = (torch.sigmoid(out.background.float()) < 0.5).cpu().numpy()
            recalls += [float((u & t).sum() / max(1, t.sum())) for u, t in zip(uncertain, truth)]
            fractions += [float(u.mean()) for u in uncertain]
    metrics = {"dice": float(np.mean(dices))}
    if recalls:
        metrics.update(uncertain_recall=float(np.mean(recalls)), uncertain_fraction=float(np.mean(fractions)))
    return metrics


def train_hybrid(inventory: LabelInventory, values: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Train the hybrid network on a datastore's labels and write the best checkpoint to ``out``."""
    options = HybridTrainOptions.from_dict(values)
    records = [r for r in inventory.images if r.kinds]
    if not records:
        raise InputError("train_hybrid: the datastore has no labelled images")
    train, val = split_by_patient(records, options.val_fraction, options.seed)
    plan = plan_labels(train, options)
    if not any(role == STRONG for role in plan.roles.values()):
        raise InputError("train_hybrid: no training image has a lesion mask ('final' label); "
                         "the segmentation decoder needs at least one (the rest may be boxes)")
    used = [r for r in train if r.image_id in plan.roles]
    report = {**{f"labels_{k}": n for k, n in sorted(inventory.counts.items())}, **plan.report}
    val_masked = [r for r in val if r.mask_path]
    report.update(val_images=len(val), val_images_with_mask=len(val_masked))
    logger.info(f"train_hybrid: label usage {report}")

    size = (options.rows, options.cols)
    train_set = HybridDataset(used, plan.roles, size, options.crop_breast, flips=True, seed=options.seed)
    val_set = HybridDataset(val_masked, {r.image_id: STRONG for r in val_masked}, size, options.crop_breast)

    torch.manual_seed(options.seed)
    config = options.network()
    model = XiongHybridNet(config)
    if options.init_encoder:
        report["encoder_tensors_initialised"] = init_encoder(model, options.init_encoder)
    loss_fn = HybridLoss(perception=options.pl, kernel_size=options.ppa_kernel)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: max(0.0, 1.0 - epoch / options.epochs) ** options.poly_power)

    def step(net: XiongHybridNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(net(batch["image"]), batch["mask"], batch["background"], batch["strong"])["total"]

    epochs_seen = iter(range(1, 1 << 30))

    def validate(net: XiongHybridNet) -> dict[str, float]:
        if len(val_set):
            return validation_metrics(net, val_set, options.threshold, options.batch_size)
        return {"epoch_seen": float(next(epochs_seen))}  # no validation mask: keep the latest epoch

    batches, steps = _batches(train_set, options)
    meta = {
        "method": "xiong",
        "network": config.to_dict(),
        "input": {"rows": options.rows, "cols": options.cols, "crop_breast": options.crop_breast},
        "threshold": options.threshold,
        "labels": report,
        "options": asdict(options),
        "val_images": sorted(r.image_id for r in val),
        "strong_images": sorted(i for i, role in plan.roles.items() if role == STRONG),
    }
    if options.resume:
        discard_stale_resume(Path(out), meta, ("network", "input", "options", "strong_images", "val_images"))
    fit_options = FitOptions(epochs=options.epochs, device=options.device, resume=options.resume)
    metric = "dice" if len(val_set) else "epoch_seen"
    result = fit(model, optimizer, batches, steps, step, validate, metric, out, fit_options, meta=meta,
                 scheduler=scheduler, desc="train_hybrid")
    return {"checkpoint": result.path, "metric": metric, "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "labels": report,
            "last": result.history[-1] if result.history else {}}
