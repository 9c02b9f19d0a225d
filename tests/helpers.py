"""Small helpers shared by the test modules (importable as ``helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nrrd
import numpy as np


def tree_digest(root: Path) -> str:
    """Hash of every file (path and bytes) under ``root``, to prove nothing changed."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".lock":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def labelmap_from(content: bytes, tmp_path: Path) -> np.ndarray:
    """Read a returned NRRD labelmap, check it is W x H x 1 uint8, return it as (rows, cols)."""
    path = tmp_path / "result.nrrd"
    path.write_bytes(content)
    data, _ = nrrd.read(str(path))
    assert data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 1
    return data[..., 0].T
