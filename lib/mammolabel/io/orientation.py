"""Canonical orientation: chest wall on the left, nipple to the right.

Networks always see canonical images. Whether an image was flipped is decided from its pixels
(the chest-wall edge is the one the breast covers), recorded in the metadata as ``flipped`` and
undone on every output, so that results overlay the image exactly as the viewer shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from mammolabel.io.image import Mammogram

WORK_SIZE = 512


def body_mask(pixels: np.ndarray, work_size: int = WORK_SIZE) -> tuple[np.ndarray, float]:
    """Breast foreground on a copy downscaled to ``work_size``: the largest bright component, holes filled.

    Returns the mask and the scale factor used (1.0 when the image is already small).
    """
    scale = min(1.0, work_size / max(pixels.shape))
    small = ndimage.zoom(pixels, scale, order=1) if scale < 1 else pixels
    smooth = ndimage.gaussian_filter(small, 2.0)
    if smooth.max() <= smooth.min():
        return np.zeros(smooth.shape, bool), scale
    lab, n = ndimage.label(smooth > threshold_otsu(smooth) * 0.6)
    if n == 0:
        return np.zeros(smooth.shape, bool), scale
    sizes = ndimage.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    mask = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=3)), scale


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


def canonicalise(image: Mammogram) -> Mammogram:
    """Return the image in canonical orientation, with ``flipped`` and ``chest_wall`` in its metadata."""
    side = chest_wall_side(image.pixels)
    flipped = side == "right"
    pixels = np.ascontiguousarray(image.pixels[:, ::-1]) if flipped else image.pixels
    meta = dict(image.meta, flipped=flipped, chest_wall=side, original_shape=image.shape)
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
