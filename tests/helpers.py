"""Small helpers shared by the test modules (importable as ``helpers``)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import nrrd
import numpy as np
import pytest


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


def archive(kind: str, members: dict[str, bytes], tar_mode: str = "w:gz") -> bytes:
    """A zip or tar archive of ``members``; a tar member named ``link...`` is a symlink to /etc/passwd."""
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode=tar_mode) as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                if name.startswith("link"):
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                else:
                    info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def require_chromium() -> None:
    """Skip a test that drives OHIF when Chromium is missing; fail instead on CI, where it must be installed."""
    if not shutil.which("chromium"):
        message = "Chromium is not installed (as root: scripts/orthanc.sh install --with-chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
