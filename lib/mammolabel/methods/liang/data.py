"""Training items of Liang et al.: prepared images, their breast regions and the paper's five versions of a positive.

Section III-A: every positive training image also enters horizontally flipped and rotated by 90,
180 and 270 degrees (MONAI's ``Flipd`` and ``Rotate90d`` on the image and its region alike).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Flipd, Identityd, MapTransform, Rotate90d
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset

from mammolabel.data.dataset import Sample
from mammolabel.io.orientation import body_mask

KEYS = ("image", "region")

#: The paper's versions of each positive training image: original, horizontal flip, rotations.
VARIANTS: dict[str, MapTransform] = {
    "original": Identityd(KEYS, allow_missing_keys=True),
    "flip": Flipd(KEYS, spatial_axis=1, allow_missing_keys=True),
    **{f"rot{90 * k}": Rotate90d(KEYS, k=k, allow_missing_keys=True) for k in (1, 2, 3)},
}
AUGMENTATIONS = tuple(VARIANTS)


def augment_item(item: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """One of :data:`AUGMENTATIONS` of the (C, H, W) tensors of ``item`` (square, so that rotations keep the shape)."""
    return {k: convert_to_tensor(v, track_meta=False) for k, v in VARIANTS[variant](dict(item)).items()}


def augment(image: torch.Tensor, variant: str) -> torch.Tensor:
    """One of :data:`AUGMENTATIONS` of a (C, H, W) image."""
    return augment_item({"image": image}, variant)["image"]


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
        item = augment_item({"image": self.samples[sample].image * region, "region": region}, variant)
        return {**item, "label": torch.tensor(int(self.positive[sample])), "item": torch.tensor(index)}


def loader(dataset: Dataset, batch_size: int, order: torch.Generator | None = None) -> DataLoader:
    """Batches of ``dataset``: shuffled by ``order`` (a :func:`mammolabel.training.stages.generator`), else in order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=order is not None, generator=order)
