"""Atomic file writes: write to a temporary file in the destination folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest`` in one rename.

    A crash or an exception leaves ``dest`` as it was (old content or absent), never half written.
    ``suffix`` defaults to the destination's own suffixes so that writers choosing a format by name work.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        f.write(data)
