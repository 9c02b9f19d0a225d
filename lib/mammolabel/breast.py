"""Classical breast-versus-background segmentation with the pectoral muscle of MLO views.

No learning: Otsu thresholds on a smoothed, downscaled copy; the breast is the largest bright
component; on MLO views the pectoral muscle is the bright region in
the upper chest-wall corner, cut along a straight line fitted to its edge (its anatomy).

:func:`body_mask` is the one breast mask every task uses (crops, saliency, this segmentation).
It leaves out what a digitised film adds around the breast: the bright frame of unexposed film
along the image edges (thin bands that an opening removes and that touch the border) and the
labels burnt into the film (bright components apart from the breast once the frame is gone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

WORK_SIZE = 512
#: Foreground threshold as a fraction of the Otsu threshold: low enough to keep the faint skin zone.
FOREGROUND_FRACTION = 0.2
#: Film frame bands are thinner than this (pixels at ``WORK_SIZE``, about 3% of the long side).
FRAME_WIDTH = 16

#: Labelmap values.
BREAST, PECTORAL = 1, 2


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = ndimage.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def without_film_frame(mask: np.ndarray, width: int = FRAME_WIDTH) -> np.ndarray:
    """``mask`` less the bands thinner than ``width`` that lie along an image edge (a film's frame).

    An opening across each pair of edges (a line of ``width`` pixels; outside the image counts as
    background, so the breast where it meets an edge survives it) finds the thin parts; those that
    touch that edge go, and the largest remaining component is kept (labels the frame joined to it go).
    """
    out = mask.copy()
    for axis, line in ((0, np.ones((width, 1), bool)), (1, np.ones((1, width), bool))):
        thin, n = ndimage.label(mask & ~ndimage.binary_opening(mask, structure=line))
        if n:
            edges = (thin[0], thin[-1]) if axis == 0 else (thin[:, 0], thin[:, -1])
            touching = np.unique(np.concatenate(edges))
            out &= ~np.isin(thin, touching[touching > 0])
    return _largest(out)


def body_mask(pixels: np.ndarray, work_size: int = WORK_SIZE) -> tuple[np.ndarray, float]:
    """Breast foreground on a copy downscaled to ``work_size``: the largest bright component, holes filled,
    without the film frame and burnt-in labels (see module docstring).

    Returns the mask and the scale factor used (1.0 when the image is already small).
    """
    scale = min(1.0, work_size / max(pixels.shape))
    small = ndimage.zoom(pixels, scale, order=1) if scale < 1 else pixels
    smooth = ndimage.gaussian_filter(small, 2.0)
    if smooth.max() <= smooth.min():
        return np.zeros(smooth.shape, bool), scale
    mask = _largest(smooth > threshold_otsu(smooth) * FOREGROUND_FRACTION)
    if not mask.any():
        return mask, scale
    mask = np.pad(mask, 3, mode="edge")  # closing must not eat the film edge
    mask = ndimage.binary_closing(mask, iterations=3)[3:-3, 3:-3]
    return ndimage.binary_fill_holes(without_film_frame(mask)), scale


@dataclass
class BreastRegion:
    """Breast (without pectoral) and pectoral masks of a canonical image, full resolution."""

    breast: np.ndarray
    pectoral: np.ndarray

    @property
    def labelmap(self) -> np.ndarray:
        lab = np.zeros(self.breast.shape, np.uint8)
        lab[self.breast] = BREAST
        lab[self.pectoral] = PECTORAL
        return lab


def _pectoral(img: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """Pectoral triangle in the upper chest-wall corner of a canonical MLO breast, or an empty mask."""
    empty = np.zeros_like(breast)
    rows_any, cols_any = np.nonzero(breast.any(axis=1))[0], np.nonzero(breast.any(axis=0))[0]
    if rows_any.size < 10 or cols_any.size < 10:
        return empty
    top, bottom, left, right = rows_any[0], rows_any[-1], cols_any[0], cols_any[-1]
    region = breast.copy()
    region[top + (bottom - top) * 2 // 3 :, :] = False
    region[:, left + (right - left) // 2 :] = False
    values = img[region]
    if values.size < 100:
        return empty
    try:
        bright = img > threshold_multiotsu(values, classes=3)[1]
    except ValueError:
        return empty
    lab, _ = ndimage.label(ndimage.binary_opening(bright & region, iterations=2))
    corner = lab[top : top + max(2, (bottom - top) // 10), left : left + max(2, (right - left) // 10)]
    ids = np.unique(corner[corner > 0])
    if ids.size == 0:
        return empty
    comp = np.isin(lab, ids)
    ys = np.nonzero(comp.any(axis=1))[0]
    if ys.size < 5:
        return empty
    edge = np.array([np.nonzero(comp[r])[0].max() for r in ys], float)
    slope, intercept = np.polyfit(ys.astype(float), edge, 1)
    if slope >= 0 or intercept <= left:
        return empty
    yy, xx = np.mgrid[0 : breast.shape[0], 0 : breast.shape[1]]
    tri = breast & (xx < intercept + slope * yy)
    fraction = tri.sum() / max(1, breast.sum())
    return tri if 0.01 <= fraction <= 0.4 else empty


def segment_breast(pixels: np.ndarray, view: str | None = "MLO") -> BreastRegion:
    """Segment a canonical (chest wall left) [0, 1] image into breast and pectoral muscle."""
    rows, cols = pixels.shape
    breast, scale = body_mask(pixels)
    small = ndimage.zoom(pixels, scale, order=1) if scale < 1 else pixels
    smooth = ndimage.gaussian_filter(small, 2.0)
    with_pectoral = view is None or str(view).upper() in ("MLO", "ML", "LMO", "")
    pectoral = _pectoral(smooth, breast) if with_pectoral else np.zeros_like(breast)

    def full(mask: np.ndarray) -> np.ndarray:
        if scale == 1:
            return mask
        zoom = (rows / mask.shape[0], cols / mask.shape[1])
        up = ndimage.zoom(mask.astype(np.uint8), zoom, order=0).astype(bool)
        out = np.zeros((rows, cols), bool)
        out[: min(rows, up.shape[0]), : min(cols, up.shape[1])] = up[:rows, :cols]
        return out

    pectoral_full = full(pectoral)
    return BreastRegion(breast=full(breast) & ~pectoral_full, pectoral=pectoral_full)
