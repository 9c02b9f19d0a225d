"""Training samples: canonical images brought to a network's input frame with their labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mammolabel.data.labels import ImageLabels
from mammolabel.training.progress import Progress
from mammolabel.io import canonicalise, read_label, read_mammogram, to_canonical
from mammolabel.transforms.geometry import Frame, make_frame

logger = logging.getLogger("mammolabel")


@dataclass
class Sample:
    """One prepared image: tensors at the input size and how they map back to the full image."""

    image_id: str
    image: torch.Tensor  # (1, h, w) float in [0, 1]
    frame: Frame
    flipped: bool
    finding: str | None
    mask: torch.Tensor | None = None  # (1, h, w) {0, 1}, from ``final``
    box: torch.Tensor | None = None  # (1, h, w) {0, 1}, filled boxes from ``box``
    points: list[tuple[float, float]] | None = None  # lesion centres, input-frame pixels (x, y)


def prepare(record: ImageLabels, size: tuple[int, int], crop_breast: bool = True) -> Sample:
    """Read, canonicalise, crop to the breast and resize an image and every label it has."""
    image = canonicalise(read_mammogram(record.image_path), record.laterality)
    flipped = bool(image.meta["flipped"])
    frame = make_frame(image.pixels, size, crop_breast)

    def mask_of(path: str | None) -> torch.Tensor | None:
        if not path:
            return None
        full = to_canonical(read_label(path, image.shape), flipped)
        return torch.from_numpy((frame.to_input((full > 0).astype(np.float32), order=0) > 0.5).astype(np.float32))[None]

    box = mask_of(record.box_path)
    width = image.shape[1]
    points = [frame.point_to_input((width - 1 - x) if flipped else x, y) for x, y in record.points]
    return Sample(
        image_id=record.image_id,
        image=torch.from_numpy(frame.to_input(image.pixels))[None],
        frame=frame,
        flipped=flipped,
        finding=record.finding,
        mask=mask_of(record.mask_path),
        box=box,
        points=points,
    )


def prepare_all(records: list[ImageLabels], size: tuple[int, int], crop_breast: bool = True,
                desc: str = "prepare images") -> dict[str, Sample]:
    """:func:`prepare` every record (with a progress log), by image id."""
    progress = Progress(len(records), desc, every_s=15)
    prepared = {}
    for r in records:
        prepared[r.image_id] = prepare(r, size, crop_breast)
        progress.update()
    return prepared


class MammoDataset(Dataset):
    """Prepared samples of ``records`` (all read once, in memory) as dicts of tensors.

    Items: ``image`` (1, h, w); ``malignant`` and ``abnormal`` (float 0/1, -1 when no finding);
    ``mask`` and ``box`` (1, h, w) with ``has_mask``/``has_box`` flags (zeros when absent); ``index``.
    ``transform`` (e.g. MONAI random flips) is applied to each item dict.
    """

    def __init__(self, records: list[ImageLabels], size: tuple[int, int], crop_breast: bool = True, transform=None):
        self.samples: list[Sample] = list(prepare_all(records, size, crop_breast).values())
        self.size, self.transform = tuple(size), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        zeros = torch.zeros_like(s.image)
        item = {
            "image": s.image,
            "malignant": torch.tensor(-1.0 if s.finding is None else float(s.finding == "malignant")),
            "abnormal": torch.tensor(-1.0 if s.finding is None else float(s.finding != "normal")),
            "mask": s.mask if s.mask is not None else zeros,
            "box": s.box if s.box is not None else zeros,
            "has_mask": torch.tensor(float(s.mask is not None)),
            "has_box": torch.tensor(float(s.box is not None)),
            "index": torch.tensor(index),
        }
        return self.transform(item) if self.transform is not None else item
