"""Training of Xiong et al.'s hybrid strong/weak segmentation (train task ``train_hybrid``, one stage ``hybrid``).

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

The single stage trains straight into the served checkpoint ``out`` (its latest epoch and progress
beside it, as :func:`mammolabel.training.loop.fit` keeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, RandFlipd
from torch.utils.data import DataLoader, RandomSampler

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.dataset import MammoDataset
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.methods.xiong.loss import HybridLoss, reversed_box_mask
from mammolabel.methods.xiong.network import XiongHybridNet
from mammolabel.methods.xiong.options import HybridTrainOptions
from mammolabel.metrics import dice
from mammolabel.training import distributed
from mammolabel.training.checkpoint import load_checkpoint, method_fields
from mammolabel.training.loop import fit
from mammolabel.training.stages import generator, initial_digest, run_identity, seed_for

logger = logging.getLogger("mammolabel")

NAME, STAGE = "xiong", "hybrid"
STRONG, WEAK, NORMAL = "strong", "weak", "normal"


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
        order = np.random.default_rng(seed_for(options.seed, "strong_masks")).permutation(len(masked))
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


class HybridDataset(Dataset):
    """Training items of the hybrid framework, prepared once and kept in memory (a MONAI dictionary dataset).

    Items: ``image`` (1, h, w); ``mask`` (1, h, w) = ``y^s`` (zeros unless strong); ``background``
    (1, h, w) = reversed box mask ``y^w`` (from the box label, else from the mask's boxes; all ones
    for a normal film); ``strong`` (scalar 0/1). With ``flips`` the three maps are flipped together
    (MONAI ``RandFlipd``, seeded by :meth:`reseed`).
    """

    KEYS = ("image", "mask", "background")

    def __init__(self, records: list[ImageLabels], roles: dict[str, str], size: tuple[int, int],
                 crop_breast: bool, flips: bool = False):
        self.base = MammoDataset(records, size, crop_breast)
        items = []
        for sample in self.base.samples:
            role = roles[sample.image_id]
            empty = torch.zeros_like(sample.image)
            weak_source = sample.box if sample.box is not None else sample.mask
            background = reversed_box_mask(weak_source[0].numpy() if weak_source is not None else empty[0].numpy())
            items.append({
                "image": sample.image,
                "mask": sample.mask if role == STRONG else empty,
                "background": torch.from_numpy(background)[None],
                "strong": torch.tensor(float(role in (STRONG, NORMAL))),
            })
        flip = Compose([RandFlipd(self.KEYS, prob=0.5, spatial_axis=0), RandFlipd(self.KEYS, prob=0.5, spatial_axis=1),
                        EnsureTyped(self.KEYS, data_type="tensor", track_meta=False)])
        super().__init__(items, transform=flip if flips else None)

    def reseed(self, seed: int) -> None:
        """Seed the flips (a no-op without them)."""
        if self.transform is not None:
            self.transform.set_random_state(seed)


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


def _batches(dataset: HybridDataset, options: HybridTrainOptions) -> tuple[Callable[[int], DataLoader], int]:
    """The epoch's batches (shuffled, or ``steps_per_epoch`` batches drawn with replacement) and their number.

    Each epoch's order and flips are seeded by the run's seed and the epoch (the flips also by the rank, which
    loads its own share of the batches under torchrun).
    """

    def batches(epoch: int) -> DataLoader:
        dataset.reseed(seed_for(options.seed, "augment", epoch, distributed.rank()))
        steps = options.steps_per_epoch
        sampler = RandomSampler(dataset, replacement=steps > 0, generator=generator(options.seed, "order", epoch),
                                num_samples=steps * options.batch_size if steps else None)
        return DataLoader(dataset, batch_size=options.batch_size, sampler=sampler)

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


def train_hybrid(inventory: LabelInventory, options: HybridTrainOptions, out: Path,
                 init: Path | None = None) -> dict[str, Any]:
    """Train the hybrid network on a datastore's labels into ``out`` (from ``init``'s weights where they fit)."""
    out = Path(out)
    records = [r for r in inventory.images if r.kinds]
    if not records:
        raise InputError("train_hybrid: the datastore has no labelled images")
    train, val = split_by_patient(records, options.val_fraction, options.seed)
    plan = plan_labels(train, options)
    strong = sorted(i for i, role in plan.roles.items() if role == STRONG)
    if not strong:
        raise InputError("train_hybrid: no training image has a lesion mask ('final' label); "
                         "the segmentation decoder needs at least one (the rest may be boxes)")
    used = [r for r in train if r.image_id in plan.roles]
    report = {**{f"labels_{k}": n for k, n in sorted(inventory.counts.items())}, **plan.report}
    val_masked = [r for r in val if r.mask_path]
    report.update(val_images=len(val), val_images_with_mask=len(val_masked))
    logger.info(f"train_hybrid: label usage {report}")

    size = (options.rows, options.cols)
    train_set = HybridDataset(used, plan.roles, size, options.crop_breast, flips=True)
    val_set = HybridDataset(val_masked, {r.image_id: STRONG for r in val_masked}, size, options.crop_breast)

    torch.manual_seed(seed_for(options.seed, "weights"))
    network = options.network()
    model = XiongHybridNet(network)
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
    val_ids = sorted(r.image_id for r in val)
    start = initial_digest(init, out)
    meta = method_fields(NAME, asdict(network), options.frame(), options.to_dict(), STAGE,
                         {"lesion": options.threshold}, val_ids, report, strong_images=strong, initial_weights=start)
    identity = run_identity(NAME, STAGE, asdict(network), options.frame(), options.to_dict(),
                            [r.image_id for r in used], val_ids, start_digest=start, strong_images=sorted(strong))
    fit_options = options.fit_options()
    metric = "dice" if len(val_set) else "epoch_seen"
    result = fit(model, optimizer, batches, steps, step, validate, metric, out, fit_options, meta=meta,
                 scheduler=scheduler, desc="train_hybrid", identity=identity, init=init)
    return {"checkpoint": result.path, "metric": metric, "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "labels": report,
            "last": result.history[-1] if result.history else {}}
