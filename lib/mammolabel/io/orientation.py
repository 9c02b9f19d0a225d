"""Canonical orientation: chest wall on the left, nipple to the right.

Networks always see canonical images. The chest-wall side of a stored image is taken, in order,
from DICOM Patient Orientation (rows running towards P(osterior) put the chest wall on the right),
from the laterality (right breasts are stored with the chest wall on the right, as they are hung),
or, when neither is known, from the pixels. The flip is recorded in the metadata as ``flipped``
(with ``orientation_source``) and undone on every output, so that results overlay the image
exactly as the viewer shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mammolabel.breast import body_mask
from mammolabel.io.image import Mammogram


def chest_wall_side(pixels: np.ndarray) -> str:
    """Return "left" or "right": the side of the breast that is attached to the chest wall.

    The breast is tallest at the chest wall and tapers towards the nipple, so the side of its
    bounding box where the foreground covers more rows is the chest wall (films may be padded,
    so the image edges themselves are not used).
    """
    mask, _ = body_mask(pixels)
    cols = np.nonzero(mask.any(axis=0))[0]
    if cols.size < 2:
        return "left"
    band = max(1, (cols[-1] - cols[0] + 1) // 10)
    height = mask.sum(axis=0)
    left = float(height[cols[0] : cols[0] + band].mean())
    right = float(height[cols[-1] - band + 1 : cols[-1] + 1].mean())
    return "left" if left >= right else "right"


def chest_wall_from_metadata(meta: dict, laterality: str | None = None) -> tuple[str, str] | None:
    """(side, source) from DICOM Patient Orientation or laterality, or None when neither is known."""
    orientation = meta.get("patient_orientation") or []
    if orientation and str(orientation[0])[:1] in ("A", "P"):
        return ("right" if str(orientation[0]).startswith("P") else "left"), "patient_orientation"
    laterality = str(laterality or meta.get("laterality") or "").upper()[:1]
    if laterality in ("L", "R"):
        return ("right" if laterality == "R" else "left"), "laterality"
    return None


def canonicalise(image: Mammogram, laterality: str | None = None) -> Mammogram:
    """Return the image in canonical orientation (see module docstring); ``laterality`` is a hint ("L"/"R")."""
    known = chest_wall_from_metadata(image.meta, laterality)
    side, source = known if known else (chest_wall_side(image.pixels), "pixels")
    flipped = side == "right"
    pixels = np.ascontiguousarray(image.pixels[:, ::-1]) if flipped else image.pixels
    meta = dict(image.meta, flipped=flipped, chest_wall=side, orientation_source=source, original_shape=image.shape)
    if laterality and not meta.get("laterality"):
        meta["laterality"] = str(laterality).upper()[:1]
    return Mammogram(pixels, meta)


def to_canonical(array: np.ndarray, flipped: bool) -> np.ndarray:
    """Apply the recorded flip to an array whose last two axes are (row, col)."""
    return np.ascontiguousarray(array[..., ::-1]) if flipped else array


#: Flipping left-right is its own inverse.
from_canonical = to_canonical


def points_from_canonical(points: Sequence[Sequence[float]], flipped: bool, width: int) -> list[list[float]]:
    """Map (x, y) = (col, row) points from canonical to original pixel coordinates."""
    return [[(width - 1 - p[0]) if flipped else p[0], p[1]] for p in points]


def boxes_from_canonical(boxes: Sequence[Sequence[float]], flipped: bool, width: int) -> list[list[float]]:
    """Map inclusive (x0, y0, x1, y1) pixel boxes from canonical to original coordinates."""
    if not flipped:
        return [list(b) for b in boxes]
    return [[width - 1 - b[2], b[1], width - 1 - b[0], b[3]] for b in boxes]
