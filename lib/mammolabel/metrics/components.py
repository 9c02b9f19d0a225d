"""Connected components of a predicted mask, with their boxes and scores (scikit-image ``regionprops``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import label, regionprops


def components(mask: np.ndarray, scores: np.ndarray | None = None, spacing: list[float] | None = None,
               score_name: str = "probability") -> list[dict[str, Any]]:
    """Each 8-connected component of ``mask``, highest mean score first.

    Every entry has ``box`` (inclusive [x0, y0, x1, y1], x = column), ``area_px``, ``area_mm2`` (None
    without ``spacing``, row and column mm) and ``centre`` ([x, y], the component's centroid); with
    ``scores`` (an array of the mask's shape) also ``mean_<score_name>`` and ``max_<score_name>``.
    """
    pixel_mm2 = float(spacing[0] * spacing[1]) if spacing else None
    found = []
    for region in regionprops(label(mask > 0, connectivity=2), intensity_image=scores):
        r0, c0, r1, c1 = region.bbox
        cy, cx = region.centroid
        entry: dict[str, Any] = {"box": [int(c0), int(r0), int(c1 - 1), int(r1 - 1)], "area_px": int(region.area),
                                 "area_mm2": round(region.area * pixel_mm2, 2) if pixel_mm2 else None,
                                 "centre": [float(cx), float(cy)]}
        if scores is not None:
            entry[f"mean_{score_name}"] = round(float(region.intensity_mean), 4)
            entry[f"max_{score_name}"] = round(float(region.intensity_max), 4)
        found.append(entry)
    if scores is not None:
        found.sort(key=lambda c: -c[f"mean_{score_name}"])
    return found


def largest_radius(mask: np.ndarray) -> float:
    """Radius of the disk with the area of the largest 8-connected component of ``mask`` (0 without one)."""
    areas = [r.area for r in regionprops(label(mask > 0, connectivity=2))]
    return float(np.sqrt(max(areas) / np.pi)) if areas else 0.0
