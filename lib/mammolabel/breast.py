"""Classical breast-versus-background segmentation with the pectoral muscle of MLO views.

No learning: Otsu thresholds on a smoothed, downscaled copy; the breast is the largest bright
component; on MLO views the pectoral muscle is the bright region in
the upper chest-wall corner, cut along a straight line fitted to its edge (its anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from mammolabel.io.orientation import body_mask

#: Labelmap values.
BREAST, PECTORAL = 1, 2


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
