"""Dice, ROC AUC and localisation hits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice
from sklearn.metrics import roc_auc_score, roc_curve

from mammolabel.data.labels import Box


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two binary masks (MONAI's ``compute_dice``); None when both are empty (nothing to score)."""
    p, t = pred > 0, truth > 0
    if not (p.any() or t.any()):
        return None
    as_batch = [torch.from_numpy(np.ascontiguousarray(m))[None, None].double() for m in (p, t)]
    return float(compute_dice(*as_batch, include_background=True, ignore_empty=False)[0, 0])


def auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve; None unless both classes are present."""
    y = np.asarray(positives, bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(scores, float)))


def roc(scores: Sequence[float], positives: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(np.asarray(positives, bool), np.asarray(scores, float))
    return fpr, tpr


def point_hits(
    point: Sequence[float],
    boxes: Sequence[Box] = (),
    circles: Sequence[tuple[float, float, float]] = (),
    tolerance: float = 0.0,
) -> bool:
    """True when ``point`` (x, y) lies in a box or circle (x, y, r), or within ``tolerance`` pixels of one."""
    x, y = float(point[0]), float(point[1])
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        if np.hypot(dx, dy) <= tolerance:
            return True
    return any(np.hypot(x - cx, y - cy) <= r + tolerance for cx, cy, r in circles)
