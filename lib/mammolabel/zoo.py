"""The shipped checkpoints under ``models/``: where they are, which one a server uses, what a checkpoint is.

Every network task ships two checkpoints, ``models/<task>.demo.pt`` (trained on generated phantoms,
for the embedded sample data) and ``models/<task>.mias.pt`` (trained on mini-MIAS films, the starting
point for real films), with a model card ``models/<task>.md``. A server uses the site-trained
checkpoint of its model folder when there is one, else the shipped one matching the data it serves.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mammolabel.errors import InputError
from mammolabel.training.checkpoint import SCHEMA_VERSION

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
KINDS = ("demo", "mias")
#: Marker file of a phantom datastore (written by ``make-phantoms``).
PHANTOM_MARKER = "phantoms.json"


def data_kind(studies: str | os.PathLike | None) -> str:
    """``demo`` for a phantom datastore, ``mias`` for anything else (real films, DICOMweb)."""
    if studies and not str(studies).startswith(("http://", "https://")):
        if (Path(studies) / PHANTOM_MARKER).is_file():
            return "demo"
    return "mias"


def choose_kind(setting: str | None, studies: str | os.PathLike | None) -> str:
    """The ``checkpoints`` setting (``auto``, ``demo``, ``mias`` or ``none``) resolved for ``studies``."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return data_kind(studies)
    if value not in (*KINDS, "none"):
        raise InputError(f"checkpoints must be auto, none or one of {', '.join(KINDS)}; got {setting!r}")
    return value


def shipped_path(task: str, kind: str) -> Path | None:
    """``models/<task>.<kind>.pt`` when it exists (``kind`` ``none``: no shipped checkpoint)."""
    path = MODELS_DIR / f"{task}.{kind}.pt"
    return path if kind in KINDS and path.is_file() else None


def checkpoint_paths(task: str, model_dir: str | os.PathLike, conf: dict[str, str]) -> list[str]:
    """MONAI Label's path list of an infer task: the shipped checkpoint first, the site-trained one last.

    MONAI Label uses the last path that exists, so a site-trained checkpoint always wins.
    """
    shipped = shipped_path(task, conf.get("checkpoints", "none"))
    return [str(shipped) if shipped else "", str(Path(model_dir) / f"{task}.pt")]


def stamp(ckpt: dict[str, Any], train_task: str, preset: str, inventory_counts: dict[str, int],
          studies: str | None, started_from: Path | None) -> dict[str, Any]:
    """Fields every checkpoint carries from its train task (:mod:`mammolabel.training.checkpoint`'s schema)."""
    return {
        **ckpt,
        "schema_version": SCHEMA_VERSION,
        "train_task": train_task,
        "preset": preset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trained_on": {"studies": Path(str(studies)).name if studies else None, "labels": dict(inventory_counts)},
        "started_from": started_from.name if started_from else "scratch",
    }


def describe(path: str | os.PathLike, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What answered: shipped demo/mias or site-trained, with its date and preset."""
    path = Path(path)
    shipped = path.parent.resolve() == MODELS_DIR and path.name.count(".") == 2
    return {
        "source": f"shipped {path.name.split('.')[1]}" if shipped else "site-trained",
        "file": path.name,
        "created": ckpt.get("created")
        or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "preset": ckpt.get("preset", "unknown"),
        "schema_version": ckpt.get("upgraded_from", ckpt.get("schema_version", 1)),
    }
