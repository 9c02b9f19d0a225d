"""Checkpoints: ``{"model": state_dict, ...}`` written atomically, read with ``weights_only=True``.

Under torchrun rank 0 alone writes a checkpoint, and every rank waits until it is written.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from mammolabel.engines.distributed import main_only
from mammolabel.errors import InputError, NotFoundError
from mammolabel.io import atomic_path


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module | dict, **extra: Any) -> Path:
    """Save ``model``'s state dict (plus ``extra`` plain values) to ``path`` in one atomic rename."""
    path = Path(path)

    def write() -> None:
        state = model.state_dict() if isinstance(model, torch.nn.Module) else model
        state = {k: v.detach().cpu() for k, v in state.items()}
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"model": state, **extra}, tmp)

    main_only(write)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely: only tensors and plain values; pickled objects are refused."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: refused, the checkpoint holds pickled objects, not just weights ({e})") from e
    except Exception as e:
        raise InputError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError(f"{path}: not a MammoLabel checkpoint (expected a dict with a 'model' state dict)")
    return ckpt
