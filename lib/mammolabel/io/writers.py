"""Write labelmaps (NRRD, as 3D Slicer and the MONAI Label client expect for 2D) and PNG pictures."""

from __future__ import annotations

import os
from pathlib import Path

import nrrd
import numpy as np
from PIL import Image

from mammolabel.io.atomic import atomic_path


def write_labelmap(path: str | os.PathLike, labelmap: np.ndarray, spacing: tuple[float, float] | None = None) -> Path:
    """Write a (rows, cols) integer labelmap as a uint8 NRRD of size W x H x 1, atomically.

    The geometry (LPS space, identity directions, origin 0, spacing 1 unless given) is the one
    ITK and 3D Slicer give a PNG or DICOM image of the same size, so the labelmap overlays it.
    """
    if labelmap.ndim != 2:
        raise ValueError(f"labelmap must be 2D (rows, cols), got {labelmap.shape}")
    if labelmap.min() < 0 or labelmap.max() > 255:
        raise ValueError("labelmap values must lie in 0..255")
    row_mm, col_mm = spacing if spacing else (1.0, 1.0)
    data = np.ascontiguousarray(labelmap.astype(np.uint8).T[..., None])  # (x, y, 1)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([col_mm, row_mm, 1.0]),
        "space origin": np.zeros(3),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    path = Path(path)
    with atomic_path(path, suffix=".nrrd") as tmp:
        nrrd.write(tmp, data, header, index_order="F")
    return path


def write_png(path: str | os.PathLike, rgb_or_grey: np.ndarray) -> Path:
    """Write a uint8 (rows, cols[, 3]) picture as PNG, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(rgb_or_grey, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def write_grey_png(path: str | os.PathLike, pixels: np.ndarray, bits: int = 8) -> Path:
    """Write [0, 1] pixels as an 8-bit or 16-bit (12 significant bits when ``bits`` is 12) greyscale PNG."""
    top = (1 << bits) - 1
    values = np.round(np.clip(pixels, 0, 1) * top)
    arr = values.astype(np.uint8 if bits == 8 else np.uint16)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
