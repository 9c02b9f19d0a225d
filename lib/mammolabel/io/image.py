"""The in-memory mammogram: normalised pixels plus the metadata every output needs to go back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Mammogram:
    """A greyscale mammogram as stored in its file.

    Attributes:
        pixels: float32 array of shape (rows, cols), windowed and normalised to [0, 1]; bright = dense.
        meta: ``path``, ``format``, ``bits``, ``spacing`` (row, col) in mm or None, ``laterality``
            ("L", "R" or None), ``view`` (e.g. "MLO" or None) and format-specific entries.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale an array linearly to [0, 1] (a constant image becomes zeros)."""
    values = values.astype(np.float32, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float32)
    return (values - lo) / (hi - lo)
