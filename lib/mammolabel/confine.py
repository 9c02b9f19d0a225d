"""The one confinement rule of the server: every path it reads or writes for a request stays inside
the datastore, the session folder, the model folder or the folder of this request's uploads.

Paths are compared after resolving symlinks and ``..``. Options that name files (a checkpoint to
write, an encoder or pretrained checkpoint to read) take a file name within the model folder, never
a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mammolabel.errors import InputError, NotFoundError

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: Train options that name a checkpoint: to write (``checkpoint``) or to read (the others).
WRITE_OPTIONS = ("checkpoint",)
READ_OPTIONS = ("init_encoder", "pretrained")
#: Values of the read options that name no file.
NO_FILE = ("", "auto", "none", "scratch")


def is_inside(path: str | os.PathLike, roots: list[str | os.PathLike]) -> bool:
    """Whether ``path`` (symlinks and ``..`` resolved) lies in one of ``roots``."""
    real = Path(os.path.realpath(path))
    return any(real == Path(os.path.realpath(r)) or real.is_relative_to(os.path.realpath(r)) for r in roots)


def confine(path: str | os.PathLike, roots: list[str | os.PathLike], what: str) -> Path:
    """``path`` resolved, or :class:`InputError` when it leaves every root."""
    if not is_inside(path, roots):
        raise InputError(f"{what} must lie inside the server's data folders")
    return Path(os.path.realpath(path))


def model_file(value: str, model_dir: str | os.PathLike, option: str, must_exist: bool) -> Path:
    """The file of the model folder that option ``option`` names (``name`` or ``name.pt``).

    A path (``/``, ``..``) is refused; so is a missing file when ``must_exist``.
    """
    name = str(value).strip()
    if not _FILE_NAME.match(name) or ".." in name:
        raise InputError(f"option '{option}' takes a checkpoint name in the model folder (e.g. 'mine.pt'), "
                         f"not a path: {value!r}")
    path = Path(model_dir) / (name if name.endswith(".pt") else f"{name}.pt")
    confine(path, [model_dir], f"option '{option}'")
    if must_exist and not path.is_file():
        raise NotFoundError(f"option '{option}': no checkpoint '{path.name}' in the model folder")
    return path


def confine_train_options(options: dict, model_dir: str | os.PathLike) -> dict:
    """``options`` with every file-naming option replaced by its file in the model folder."""
    out = dict(options)
    for key in WRITE_OPTIONS + READ_OPTIONS:
        value = out.get(key)
        if value is None or str(value).strip().lower() in (NO_FILE if key in READ_OPTIONS else ("",)):
            continue
        out[key] = str(model_file(value, model_dir, key, must_exist=key in READ_OPTIONS))
    return out
