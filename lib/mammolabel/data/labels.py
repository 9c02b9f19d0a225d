"""The weak-label model: what an annotator can give, from an image-level finding to a lesion mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from mammolabel.errors import InputError

FINDINGS = ("normal", "benign", "malignant")
LESION_TYPES = ("mass", "calcification", "distortion", "asymmetry", "other")

#: Datastore label tags (``final`` is MONAI Label's own tag for the finished mask).
TAG_FINDING = "finding"
TAG_BOX = "box"
TAG_MASK = "final"

Box = list[int]  # inclusive pixel box [x0, y0, x1, y1] (x = column, y = row)
Point = list[float]  # [x, y]


def check_finding(value: Any) -> str:
    """Return ``value`` as a finding name or raise a clear :class:`InputError`."""
    if not isinstance(value, str) or value.lower() not in FINDINGS:
        raise InputError(f"finding must be one of {', '.join(FINDINGS)}; got {value!r}")
    return value.lower()


def boxes_from_mask(mask: np.ndarray) -> list[Box]:
    """Bounding box of each connected component (8-connectivity) of a (rows, cols) mask."""
    components, _ = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    boxes = []
    for sl in ndimage.find_objects(components):
        if sl is not None:
            boxes.append([int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)])
    return sorted(boxes)


def box_mask(boxes: list[Box], shape: tuple[int, int]) -> np.ndarray:
    """Filled uint8 mask of the given boxes."""
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = 1
    return mask


def box_centres(boxes: list[Box]) -> list[Point]:
    return [[(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0] for b in boxes]


@dataclass
class ImageLabels:
    """Every label the datastore holds for one image, read through :func:`collect_labels`."""

    image_id: str
    image_path: str
    patient_id: str
    laterality: str | None = None
    spacing_mm: float | None = None  # pixel spacing from the image info, for images whose file has none
    finding: str | None = None
    lesion_types: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    radii: list[float] = field(default_factory=list)
    mask_path: str | None = None
    box_path: str | None = None

    @property
    def kinds(self) -> set[str]:
        """The kinds of label present: finding, box, mask, point."""
        kinds = set()
        if self.finding:
            kinds.add("finding")
        if self.box_path:
            kinds.add("box")
        if self.mask_path:
            kinds.add("mask")
        if self.points:
            kinds.add("point")
        return kinds

    @property
    def abnormal(self) -> bool | None:
        return None if self.finding is None else self.finding != "normal"

    @property
    def malignant(self) -> bool | None:
        return None if self.finding is None else self.finding == "malignant"
