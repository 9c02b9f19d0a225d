"""What an infer task predicts on a canonical image, and how it is turned back to the stored orientation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammolabel.io.orientation import boxes_from_canonical, from_canonical, points_from_canonical


@dataclass
class Prediction:
    """What a task predicts on a canonical image (coordinates are canonical pixels, x = column).

    Attributes:
        labelmap: (rows, cols) uint8 labelmap, 0 = background.
        values: numbers for the JSON result (probabilities, areas...).
        points: dicts with ``x``, ``y`` and any other numbers (e.g. ``score``).
        boxes: dicts with ``box`` = inclusive [x0, y0, x1, y1] and any other numbers.
        heatmap: optional float (rows, cols) map in [0, 1] for pictures and DICOM heatmaps.
    """

    labelmap: np.ndarray
    values: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    heatmap: np.ndarray | None = None


def restore(prediction: Prediction, meta: dict[str, Any]) -> Prediction:
    """Map a canonical prediction back to the orientation of the stored image."""
    flipped = bool(meta.get("flipped", False))
    width = int(prediction.labelmap.shape[1])
    points = [
        dict(p, x=q[0], y=q[1])
        for p, q in zip(prediction.points, points_from_canonical([(p["x"], p["y"]) for p in prediction.points], flipped, width))
    ]
    boxes = [
        dict(b, box=q)
        for b, q in zip(prediction.boxes, boxes_from_canonical([b["box"] for b in prediction.boxes], flipped, width))
    ]
    heatmap = None if prediction.heatmap is None else from_canonical(prediction.heatmap, flipped)
    return Prediction(from_canonical(prediction.labelmap, flipped), dict(prediction.values), points, boxes, heatmap)
