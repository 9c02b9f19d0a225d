"""Train task ``pretrain_patches``: a lesion-versus-tissue patch classifier whose weights start the Dahl models.

Shen et al., "Deep learning to improve breast cancer detection on screening mammography" (Sci Rep
2019), first train a patch classifier on lesion patches and normal-tissue patches at the film's full
resolution, then initialise the whole-image classifier from it. Here the patch classifier is the
Dahl classifier network itself (the same backbone, depth and width, two outputs: tissue, lesion), so
that ``train_classifier --set patches=auto`` starts its Holistic model (and through it the Attention
model) from these weights. Lesion patches are centred on each located lesion (its box) with a random
shift of up to half its radius; tissue patches come from the breast of every film, away from every
located lesion, never from films whose lesions have no location. Patches are cut once (seeded) at
full resolution; each epoch flips and turns them (MONAI ``RandFlipd``, ``RandRotate90d``).

The stage is shared: GLAM's recipe runs it too (:data:`PATCH_TRAINER` is an optional trainer of both
methods), and ``train_glam --set patches=auto`` starts its local module from the patch classifier's ResNet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotate90d
from torch.utils.data import DataLoader, Dataset

from mammolabel.breast import segment_breast
from mammolabel.methods.contract import Trainer
from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError
from mammolabel.io import canonicalise, read_mammogram
from mammolabel.methods.dahl.network import DahlClassifier, risk_score
from mammolabel.methods.dahl.options import network_problems
from mammolabel.metrics import auc
from mammolabel.training.checkpoint import method_fields
from mammolabel.training.loop import fit
from mammolabel.training.options import TrainOptions
from mammolabel.training.progress import Progress
from mammolabel.training.stages import generator, run_identity, seed_for

logger = logging.getLogger("mammolabel")

NAME = "pretrain_patches"


@dataclass
class PatchOptions(TrainOptions):
    """Options of ``pretrain_patches`` (the network's must match ``train_classifier``'s to be used there).

    Attributes:
        backbone, depth, width: the classifier network (as ``train_classifier``'s).
        patch_size: side of a patch in film pixels (full resolution; 256 px is 51 mm on a 200 µm film).
        lesion_patches: patches per located lesion; tissue_patches: patches per film.
        batch_size, lr, weight_decay: Adam.
    """

    epochs: int = 10
    backbone: str = "resnet"
    depth: int = 101
    width: int = 64
    patch_size: int = 256
    lesion_patches: int = 8
    tissue_patches: int = 4
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4

    def problems(self) -> list[str]:
        problems = network_problems(self.backbone, self.depth)
        if self.patch_size < 32 or min(self.lesion_patches, self.tissue_patches, self.batch_size, self.width) < 1:
            problems.append("patch_size must be at least 32; lesion_patches, tissue_patches, batch_size and width "
                            "at least 1")
        return problems

    def network(self) -> dict[str, Any]:
        """The Dahl classifier's settings (Holistic model only) that these weights fit."""
        return {"depth": self.depth, "width": self.width, "attention": False, "backbone": self.backbone}


def lesions_of(record: ImageLabels, width: int, flipped: bool) -> list[tuple[float, float, float]]:
    """(x, y, radius) of each located lesion in canonical pixels, from its boxes."""
    found = []
    for x0, y0, x1, y1 in record.boxes:
        cx = (x0 + x1) / 2
        found.append(((width - 1 - cx) if flipped else cx, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2))
    return found


def cut(pixels: np.ndarray, x: float, y: float, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` patch centred on (x, y), zero outside the film: (1, size, size)."""
    padded = np.pad(pixels, size, mode="constant")
    r0, c0 = int(round(y)) + size - size // 2, int(round(x)) + size - size // 2
    return torch.from_numpy(np.ascontiguousarray(padded[r0:r0 + size, c0:c0 + size], np.float32))[None]


def film_patches(record: ImageLabels, opts: PatchOptions, rng: np.random.Generator) -> tuple[list, list]:
    """Lesion and tissue patches of one film (tissue only when every lesion of the film is located)."""
    image = canonicalise(read_mammogram(record.image_path), record.laterality)
    pixels, size = image.pixels, opts.patch_size
    lesions = lesions_of(record, pixels.shape[1], bool(image.meta["flipped"]))
    positives = [cut(pixels, x + rng.uniform(-r, r) / 2, y + rng.uniform(-r, r) / 2, size)
                 for x, y, r in lesions for _ in range(opts.lesion_patches)]
    if record.finding != "normal" and not lesions:
        return positives, []
    ys, xs = np.nonzero(segment_breast(pixels).breast)
    far = np.ones(len(xs), bool)
    for x, y, r in lesions:
        far &= np.hypot(xs - x, ys - y) > r + size / 2
    picks = rng.choice(np.flatnonzero(far), size=min(opts.tissue_patches, int(far.sum())), replace=False)
    return positives, [cut(pixels, xs[i], ys[i], size) for i in picks]


class Patches(Dataset):
    """Patches with their class (1 lesion, 0 tissue), flipped and turned by a seeded MONAI transform."""

    def __init__(self, records: list[ImageLabels], opts: PatchOptions, purpose: str, augment: bool):
        rng = np.random.default_rng(seed_for(opts.seed, "patches", purpose))
        self.items: list[tuple[torch.Tensor, int]] = []
        progress = Progress(len(records), f"{NAME}: cut {purpose} patches", every_s=15)
        for record in records:
            lesion, tissue = film_patches(record, opts, rng)
            self.items += [(p, 1) for p in lesion] + [(p, 0) for p in tissue]
            progress.update()
        self.transform = Compose([RandFlipd("image", prob=0.5, spatial_axis=0), RandRotate90d("image", prob=0.75),
                                  EnsureTyped("image", track_meta=False)]) if augment else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.items[index]
        item = {"image": image, "label": torch.tensor(label)}
        return self.transform(item) if self.transform is not None else item

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]


def pretrain_patches(inventory: LabelInventory, opts: PatchOptions, out: Path, init: Path | None = None
                     ) -> dict[str, Any]:
    """Train the patch classifier into ``out`` (a Dahl Holistic-model checkpoint); return a summary."""
    records = [r for r in inventory.images if r.finding]
    train_records, val_records = split_by_patient(records, opts.val_fraction, seed_for(opts.seed, "split"))
    train, val = Patches(train_records, opts, "train", True), Patches(val_records, opts, "validation", False)
    counts = {"train_lesion": sum(train.labels), "train_tissue": len(train) - sum(train.labels),
              "val_lesion": sum(val.labels), "val_tissue": len(val) - sum(val.labels)}
    if not (counts["train_lesion"] and counts["train_tissue"] and counts["val_lesion"] and counts["val_tissue"]):
        raise InputError(f"{NAME}: needs lesion and tissue patches in training and validation (located lesions: "
                         f"boxes or masks); got {counts}")
    logger.info(f"{NAME}: {counts}")
    torch.manual_seed(seed_for(opts.seed, "weights", "patches"))
    network = opts.network()
    model = DahlClassifier(**network)
    weights = torch.tensor([len(train) / (2 * counts["train_tissue"]), len(train) / (2 * counts["train_lesion"])])
    val_images, val_truth = torch.stack([p for p, _ in val.items]), [bool(y) for y in val.labels]

    def batches(epoch: int) -> DataLoader:
        train.transform.set_random_state(seed_for(opts.seed, "augment", "patches", epoch))
        return DataLoader(train, batch_size=opts.batch_size, shuffle=True, generator=generator(opts.seed, "order", epoch))

    def step(model: DahlClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model.holistic(batch["image"])
        return F.cross_entropy(logits.float(), batch["label"].long(), weight=weights.to(logits.device))

    def validate(model: DahlClassifier) -> dict[str, float]:
        device = next(model.parameters()).device
        risk = torch.cat([risk_score(model.holistic(val_images[i:i + opts.batch_size].to(device))).float().cpu()
                          for i in range(0, len(val_images), opts.batch_size)]).numpy()
        return {"patch_auc": auc(risk, val_truth) or 0.5}

    frame = {"rows": opts.patch_size, "cols": opts.patch_size, "crop_breast": False}
    identity = run_identity("dahl", NAME, network, frame, opts.to_dict(), [r.image_id for r in train_records],
                            [r.image_id for r in val_records], started_from=init)
    meta = method_fields("dahl", network, frame, opts.to_dict(), NAME, {}, [r.image_id for r in val_records], counts)
    optimizer = torch.optim.Adam(model.holistic.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    result = fit(model, optimizer, batches, -(-len(train) // opts.batch_size), step, validate,
                 "patch_auc", out, opts.fit_options(), meta=meta,
                 desc=NAME, identity=identity, init=init)
    return {"checkpoint": str(out), "patches": counts, "best_epoch": result.best_epoch,
            "best_patch_auc": result.best_metric}


def resolve_patches(value: str, model_dir: Path) -> Path | None:
    """``patches`` of ``train_classifier``: ``auto`` = ``<model_dir>/pretrain_patches.pt`` if it exists,
    empty or ``none`` = no patch pretraining (the paper's setting), else a path."""
    text = str(value).strip()
    if text.lower() in ("", "none"):
        return None
    if text.lower() == "auto":
        candidate = model_dir / f"{NAME}.pt"
        return candidate if candidate.is_file() else None
    if not Path(text).is_file():
        raise InputError(f"patches: checkpoint not found: {text} (use 'auto', 'none' or a path)")
    return Path(text)


#: The shared optional stage (a trainer of the Dahl and the GLAM methods); one checkpoint, ``pretrain_patches.pt``.
PATCH_TRAINER = Trainer(
    name=NAME,
    description="Lesion-versus-tissue patch classifier at full resolution (Shen et al.), whose weights start the "
                "Holistic model (train_classifier patches=auto) and GLAM's local module (train_glam patches=auto)",
    options=PatchOptions,
    #: The cpu presets' ResNet-18 of width 16 (the Dahl models' and GLAM's local module's) on 256 px patches.
    cpu_preset={"depth": 18, "width": 16, "patch_size": 256, "batch_size": 16, "epochs": 6},
    run=pretrain_patches,
    checkpoint=NAME,
    optional=True,
)
