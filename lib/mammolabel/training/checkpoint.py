"""Checkpoints: one schema for every method, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of the weights (``model``) and plain values. Schema :data:`SCHEMA_VERSION`
(built by :func:`method_fields`, completed by the train task and :func:`mammolabel.training.loop.fit`):

=====================  ==========================================================================
``model``              the weights (float32, or float16 for storage)
``schema_version``     :data:`SCHEMA_VERSION`
``method``             the method that reads it (``dahl``, ``glam``, ``liang``, ``tardy``, ``xiong``)
``network``            the keyword settings that rebuild the network
``frame``              the input frame: ``rows``, ``cols``, ``crop_breast`` (None: set by the network)
``options``            the training options
``stage``              the stage that wrote it
``thresholds``         decision thresholds chosen on the validation images, by name
``validation_images``  ids of the images that chose the epoch and thresholds
``label_counts``       the labels the training used and left aside
``run``                the run's identity (:func:`mammolabel.training.stages.run_identity`)
``initial_weights``    digest of the weights the run started from (:func:`mammolabel.training.stages.initial_digest`)
``epoch``, ``best_epoch``, ``best_metric``, ``history``   written by the training loop
``train_task``, ``preset``, ``created``, ``trained_on``, ``started_from``, ``metrics``   stamped by the train task
=====================  ==========================================================================

Checkpoints of schema 1 and 2 (before one schema) are upgraded when read (:func:`upgrade`): their
field names are mapped to these. A checkpoint of another method, or of a newer schema, is refused
with a message naming what to retrain. Under torchrun rank 0 alone writes a checkpoint, and every
rank waits until it is written.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from mammolabel.training.distributed import main_only
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


SCHEMA_VERSION = 3
#: Field names of schemas 1 and 2 and their schema-3 names.
RENAMED = {"config": "network", "input": "frame", "val_images": "validation_images", "label_report": "label_counts",
           "labels": "label_counts"}
#: The method of a schema-1/2 checkpoint, from the train task that wrote it.
METHOD_OF_TRAIN_TASK = {"train_classifier": "dahl", "train_glam": "glam", "train_cam_self_training": "liang",
                        "pretrain_reconstruction": "tardy", "train_discriminative": "tardy", "train_hybrid": "xiong"}


def method_fields(method: str, network: dict[str, Any], frame: dict[str, Any] | None, options: dict[str, Any],
                  stage: str, thresholds: dict[str, float], validation_images: list[str],
                  label_counts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The schema's fields a method writes with its weights (``extra``: the method's own plain values)."""
    return {"schema_version": SCHEMA_VERSION, "method": method, "network": network, "frame": frame,
            "options": options, "stage": stage, "thresholds": thresholds,
            "validation_images": list(validation_images), "label_counts": label_counts, **extra}


def upgrade(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint", method: str | None = None) -> dict[str, Any]:
    """``ckpt`` in schema :data:`SCHEMA_VERSION`; refused when it is newer or of another method than ``method``."""
    version = int(ckpt.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise InputError(f"{path}: written with checkpoint schema {version} by a newer MammoLabel "
                         f"(this one reads up to {SCHEMA_VERSION}); upgrade MammoLabel or retrain")
    if version < SCHEMA_VERSION:
        ckpt = dict(ckpt)
        for old, new in RENAMED.items():
            if old in ckpt and new not in ckpt:
                ckpt[new] = ckpt.pop(old)
        if "threshold" in ckpt and "thresholds" not in ckpt:
            ckpt["thresholds"] = {"lesion": ckpt.pop("threshold")}
        if "size" in ckpt and "frame" not in ckpt:
            rows, cols = ckpt.pop("size")
            ckpt["frame"] = {"rows": int(rows), "cols": int(cols), "crop_breast": bool(ckpt.pop("crop_breast", True))}
        ckpt.setdefault("method", METHOD_OF_TRAIN_TASK.get(str(ckpt.get("train_task")), method))
        ckpt["upgraded_from"] = version
        ckpt["schema_version"] = SCHEMA_VERSION
    if method and ckpt.get("method") != method:
        raise InputError(f"{path}: a checkpoint of the method '{ckpt.get('method')}', not '{method}'; "
                         f"retrain it with this task's train task")
    return ckpt


def load_checkpoint(path: str | os.PathLike, method: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (only tensors and plain values; pickled objects are refused), upgraded to
    schema :data:`SCHEMA_VERSION`; with ``method``, a checkpoint of another method is refused."""
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
    return upgrade(ckpt, path, method)
