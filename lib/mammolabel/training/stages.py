"""Staged runs: where a stage's files are, when a saved run may be resumed, and the one seeding rule.

Every method trains in one or more named stages (Dahl: ``holistic`` then ``attention``; GLAM:
``global``, ``local``, ``joint``; ...). Stage ``s`` of a training that writes ``out`` keeps its best
checkpoint at ``<out stem>.<s>.pt``, its latest epoch at ``<out stem>.<s>.last.pt`` and its
progress at ``<out stem>.<s>.stats.json``, all beside ``out``.

**The resume rule.** A stage resumes from its ``.last.pt`` only when the saved run has the same
:func:`run_identity`: method, stage, network settings, input frame, options other than
:data:`RESUMABLE_OPTIONS`, training and validation images, and starting weights. Anything else
(another layer count, input size, split, loss switch, or a new previous stage) starts the stage
afresh, with a log line saying what changed. Only the options in :data:`RESUMABLE_OPTIONS` may
change between a run and its resumption.

**The seeding rule.** Every random choice of a run derives from the run's one ``seed`` and a
purpose (and, per epoch, the epoch): :func:`seed_for`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.distributed import main_only

logger = logging.getLogger("mammolabel")

#: Options that may change between a run and its resumption (more epochs, another device...).
RESUMABLE_OPTIONS = frozenset({"epochs", "resume", "device", "precision", "multi_gpu", "gpus", "preset", "init", "stage",
                               "attention_epochs", "self_training_epochs", "local_epochs", "joint_epochs"})


def stage_path(out: str | Path, stage: str) -> Path:
    """Best checkpoint of ``stage`` of the training that writes ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{stage}.pt")


def last_path(path: str | Path) -> Path:
    """Latest-epoch checkpoint (with the optimizer state) beside the best checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.stem + ".last.pt")


def stats_path(path: str | Path) -> Path:
    """Progress file (``/info`` train stats) beside the checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.stem + ".stats.json")


def file_digest(path: str | Path | None) -> str | None:
    """SHA-256 of a file (a previous stage's checkpoint, the starting weights); None without one."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def initial_digest(init: str | Path | None, out: str | Path) -> str | None:
    """Digest of the weights a run writing ``out`` starts from (``init``: fine-tuning, None: random).

    A run that starts from its own output (``init`` is ``out``, as the train task's ``init=auto`` gives
    once ``out`` exists, e.g. after a killed run) started from what the run that wrote ``out`` started
    from (its ``initial_weights``), so that it resumes instead of starting afresh.
    """
    if init is not None and Path(out).is_file() and Path(init).resolve() == Path(out).resolve():
        return load_checkpoint(out).get("initial_weights")
    return file_digest(init)


def run_identity(method: str, stage: str, network: dict[str, Any], frame: dict[str, Any] | None,
                 options: dict[str, Any], train_images: list[str], val_images: list[str],
                 started_from: str | Path | None = None, start_digest: str | None = None,
                 **more: Any) -> dict[str, Any]:
    """What a saved run must share with this one to be resumed (stored in every checkpoint as ``run``).

    ``started_from`` is the file the stage's weights start from (a previous stage, a fine-tuned
    checkpoint); its digest is compared (``start_digest`` gives it instead: :func:`initial_digest`).
    ``more`` adds method-specific facts (e.g. the mask budget).
    """
    kept = {k: v for k, v in options.items() if k not in RESUMABLE_OPTIONS}
    return {"method": method, "stage": stage, "network": network, "frame": frame, "options": kept,
            "train_images": sorted(train_images), "val_images": sorted(val_images),
            "started_from": start_digest if start_digest is not None else file_digest(started_from), **more}


def prepare_resume(best: str | Path, identity: dict[str, Any], resume: bool) -> bool:
    """Whether the stage writing ``best`` resumes its saved run; a saved run it may not resume is removed.

    Returns True when ``<best>.last.pt`` exists, ``resume`` is on and its identity equals ``identity``.
    """
    last = last_path(best)
    if not last.exists():
        return False
    if not resume:
        logger.info(f"{last.name}: resume is off; this stage starts afresh")
        main_only(last.unlink)
        return False
    saved = load_checkpoint(last).get("run")
    if saved == identity:
        return True
    changed = sorted(k for k in set(identity) | set(saved or {}) if (saved or {}).get(k) != identity.get(k))
    logger.warning(f"{last.name} was written with another {', '.join(changed) or 'run'}; this stage starts afresh")
    main_only(last.unlink)
    return False


def seed_for(seed: int, *purpose: int | str) -> int:
    """The 32-bit seed of one random choice of a run: the run's ``seed`` and what it is for (e.g. "split",
    "augment", "order", epoch)."""
    words = [int(seed)] + [p if isinstance(p, int) else int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "big")
                           for p in purpose]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def generator(seed: int, *purpose: int | str) -> torch.Generator:
    """A torch generator seeded by :func:`seed_for` (e.g. a DataLoader's shuffling of one epoch)."""
    return torch.Generator().manual_seed(seed_for(seed, *purpose))
