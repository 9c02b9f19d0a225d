"""Atomic file writes: write to a temporary file in the destination folder, then rename."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)



def _process_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


# mkstemp creates files readable by their owner only; a finished file gets the usual permissions.
_UMASK = _process_umask()

# ".<dest name>.<8 random characters of mkstemp>.tmp<suffixes>", as atomic_path names its files.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


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
        with contextlib.suppress(OSError):  # some filesystems (FAT, exFAT) have no modes to set
            os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        f.write(data)


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that writes interrupted by a crash (kill -9) left directly in ``folder``.

    With ``names``, only those of these destination files. Call it only while no writer of them is
    active (e.g. under the folder's lock); returns what it removed.
    """
    patterns = [f".{glob.escape(name)}.*.tmp*" for name in names] if names is not None else [".*.tmp*"]
    removed = [p for pattern in patterns for p in Path(folder).glob(pattern) if p.is_file() and _TEMP_NAME.match(p.name)]
    for path in removed:
        path.unlink(missing_ok=True)
        logger.warning(f"removed {path}, left by an interrupted write")
    return removed
