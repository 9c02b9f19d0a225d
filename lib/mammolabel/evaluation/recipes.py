"""Training one infer task's checkpoint from scratch: every train task of its method, in order.

Used by ``train-zoo`` and ``crossval``. Options apply to every train task of the method, except
those written ``<train task>.<option>`` (e.g. ``pretrain_reconstruction.epochs=6``), which apply to
that train task alone. An optional train task (e.g. ``pretrain_patches``) runs only when the options
ask for it: ``with=<train task>[,...]``. The ``cpu`` preset, seed 0 and a fresh start are the defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammolabel.data.datastore import LabelInventory
from mammolabel.errors import InputError
from mammolabel.methods import methods
from mammolabel.tasks import train_tasks

DEFAULTS = {"preset": "cpu", "init": "scratch", "device": "cpu", "seed": 0, "resume": False}


@dataclass
class Trained:
    """The checkpoint one recipe wrote, each train task's options and summary, and the training time."""

    checkpoint: Path
    options: dict[str, dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    wall_s: float


def stages_of(task: str, options: dict[str, Any] | None = None) -> list[str]:
    """The train tasks that make ``task``'s checkpoint, in the order they run (optional ones when asked)."""
    if task not in methods():
        raise InputError(f"unknown infer task '{task}' with a training; known: {', '.join(methods())}")
    trainers = methods()[task].trainers
    wanted = {w.strip() for w in str((options or {}).get("with", "")).split(",") if w.strip()}
    unknown = wanted - {t.name for t in trainers if t.optional}
    if unknown:
        raise InputError(f"with={','.join(sorted(unknown))}: not an optional train task of {task}")
    return [t.name for t in trainers if not t.optional or t.name in wanted]


def options_for(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    """The request of train task ``stage``: :data:`DEFAULTS`, the shared options, then its own."""
    shared = {k: v for k, v in options.items() if "." not in k}
    own = {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(f"{stage}.")}
    return {**DEFAULTS, **shared, **own}


def train_task_checkpoint(task: str, inventory: LabelInventory, model_dir: Path, options: dict[str, Any],
                          studies: str | None = None) -> Trained:
    """Run every train task of ``task`` on ``inventory`` into ``model_dir``; ``<model_dir>/<task>.pt`` is the result."""
    stages = stages_of(task, options)
    unknown = {k.split(".", 1)[0] for k in options if "." in k} - set(stages)
    if unknown:
        raise InputError(f"options for {sorted(unknown)}: not train tasks run for {task} ({', '.join(stages)})")
    model_dir.mkdir(parents=True, exist_ok=True)
    started, used, summaries = time.monotonic(), {}, {}
    for stage in stages:
        trainer = train_tasks()[stage](model_dir=model_dir)
        used[stage] = trainer.options(options_for(stage, options))
        summaries[stage] = trainer.train(inventory, used[stage], trainer.path, studies)
    return Trained(model_dir / f"{task}.pt", used, summaries, time.monotonic() - started)
