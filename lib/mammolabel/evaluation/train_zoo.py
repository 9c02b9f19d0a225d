"""``mammolabel train-zoo``: retrain the shipped checkpoints of ``models/`` from scratch, score them, write their cards.

``demo``: trained on 96 generated phantoms (seed 100), scored on the 24 phantoms ``run.sh`` serves
(seed 0), which no training step saw. ``mias``: trained on the mini-MIAS development films less a
held-out 20 % of the patients (patient-wise, stratified, seed 1234), on which it is scored; the best
epoch is chosen on a validation split inside the training patients; the options are those of the
recipe cross-validated in ``docs/results/crossval/`` (whose figures the card reports). Seeds are
fixed; the ``cpu`` preset of every train task; one training at a time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mammolabel.data.datastore import LabelInventory, MammoDatastore, collect_labels
from mammolabel.data.mias import import_mias
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.data.split import split_by_patient
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.evaluation.evaluate import evaluate
from mammolabel.training.progress import format_seconds
from mammolabel.errors import InputError
from mammolabel.evaluation.intervals import found_key, interval_summary
from mammolabel.evaluation.model_card import recipe_report, write_card
from mammolabel.evaluation.recipes import stages_of, train_task_checkpoint
from mammolabel.methods import methods
from mammolabel.tasks import infer_tasks
from mammolabel.zoo import KINDS, MODELS_DIR

logger = logging.getLogger("mammolabel")

MIAS_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mini-mias-dev"
#: Shipped checkpoints larger than this are stored as float16 (the limit is 10 MB).
FP16_ABOVE_BYTES = 9_000_000


#: Option changes beyond the preset for the ``demo`` checkpoints (fewer epochs, so that they train on this 2-core
#: machine in minutes; the cards list every option used). The ``mias`` checkpoints use their cross-validated
#: recipe (:func:`mias_recipe`).
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "classification": {"epochs": 10}, "localization": {"epochs": 5, "self_training_epochs": 3},
    "discriminative_segmentation": {"pretrain_reconstruction.epochs": 6, "epochs": 20},
    "hybrid_segmentation": {"epochs": 30},
    "glam_segmentation": {"epochs": 10, "local_epochs": 5, "joint_epochs": 3},
}
#: Options of a cross-validation report that describe its run, not its recipe.
RUN_OPTIONS = ("device", "resume", "init", "seed")


def mias_recipe(task: str) -> dict[str, Any]:
    """The options of ``task``'s cross-validated recipe (its report in ``docs/results/crossval/``), as train-task
    options: each train task's own, and ``with=`` the optional train tasks it ran."""
    report = recipe_report(task)
    options: dict[str, Any] = {f"{stage}.{k}": v for stage, used in report["options"].items()
                               for k, v in used.items() if k not in RUN_OPTIONS}
    optional = [t.name for t in methods()[task].trainers if t.optional and t.name in report["train_tasks"]]
    return {**options, **({"with": ",".join(optional)} if optional else {})}


def _datasets(kind: str, work: Path, mias_dir: Path) -> tuple[LabelInventory, LabelInventory, str]:
    """Training and test inventories of ``kind``, and a sentence saying what they are."""
    if kind == "demo":
        write_phantom_study(work / "train", n=96, seed=100, mask_fraction=0.5, dicom=False)
        write_phantom_study(work / "test", n=24, seed=0, mask_fraction=0.3, dicom=False)
        train = collect_labels(MammoDatastore(work / "train", read_only=True))
        test = collect_labels(MammoDatastore(work / "test", read_only=True))
        return train, test, ("96 generated phantoms (seed 100, half of the lesion films with a mask, the others a "
                             "box; the best epoch chosen on a patient-wise validation split of them); scored on the "
                             "24 phantoms of `run.sh` (seed 0), which neither training nor selection saw")
    if not mias_dir.is_dir():
        raise InputError(f"train-zoo mias: the mini-MIAS development films are not at {mias_dir}")
    import_mias(mias_dir, work / "mias")
    everything = collect_labels(MammoDatastore(work / "mias", read_only=True))
    rest, held = split_by_patient(everything.images, 0.2, seed=1234)
    return (everything.subset(rest), everything.subset(held),
            f"mini-MIAS development films: {len(rest)} for training (best epoch chosen on a patient-wise validation "
            f"split inside them), scored on {len(held)} films of held-out patients")


def _export(src: Path, dest: Path) -> dict[str, Any]:
    """Copy a trained checkpoint into ``models/`` without optimizer state, as float16 when it is large."""
    ckpt = load_checkpoint(src)
    weights = ckpt.pop("model")
    storage = "float32"
    if sum(t.numel() * t.element_size() for t in weights.values()) > FP16_ABOVE_BYTES:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        storage = "float16"
    kept = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler")}
    save_checkpoint(dest, weights, **kept, storage=storage)
    return {"bytes": dest.stat().st_size, "storage": storage}


def train_one(task: str, kind: str, train: LabelInventory, test: LabelInventory, work: Path, out_dir: Path,
              data_text: str) -> dict[str, Any]:
    """Train, export, score and describe one shipped checkpoint; return its record (also in ``<task>.<kind>.json``)."""
    started, load_before = time.monotonic(), os.getloadavg()
    options = mias_recipe(task) if kind == "mias" else DEMO_OPTIONS.get(task, {})
    trained = train_task_checkpoint(task, train, work / "model" / task, options)
    train_s = time.monotonic() - started
    opts = trained.options[stages_of(task, options)[-1]]
    shipped = out_dir / f"{task}.{kind}.pt"
    exported = _export(trained.checkpoint, shipped)
    infer = infer_tasks()[task](path=str(shipped))
    metrics = evaluate(infer, test, work / "eval" / f"{task}.{kind}", device="cpu")
    record = {
        "task": task, "kind": kind, "train_tasks": stages_of(task, options), "preset": "cpu",
        "options": {k: v for k, v in opts.items() if k not in ("device", "resume", "init")},
        "data": data_text, "labels": dict(train.counts), "train_images": len(train.images),
        "test_images": len(test.images), "train_wall_s": round(train_s, 1),
        "load_average": [round(x, 2) for x in load_before + os.getloadavg()], "threads": torch.get_num_threads(),
        "metrics": interval_summary(metrics["rows"], test, found_key(task)), "checkpoint": exported,
        "command": f"mammolabel train-zoo --kind {kind} --task {task}",
    }
    (out_dir / f"{task}.{kind}.json").write_text(json.dumps(record, indent=2, default=float))
    logger.info(f"train-zoo {task}.{kind}: trained in {format_seconds(train_s)}; {record['metrics']}")
    return record


def train_zoo(out_dir: str | os.PathLike = MODELS_DIR, kinds: tuple[str, ...] = KINDS, tasks: tuple[str, ...] = (),
              mias_dir: str | os.PathLike = MIAS_DIR) -> dict[str, Any]:
    """Retrain the shipped checkpoints ``kinds`` x ``tasks`` (default all) into ``out_dir`` and rewrite the cards."""
    unknown = sorted(set(tasks) - set(methods())) + sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InputError(f"train-zoo: unknown {unknown}; tasks: {', '.join(methods())}; kinds: {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    started = time.monotonic()
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"mammolabel-zoo-{kind}-") as tmp:
            train, test, data_text = _datasets(kind, Path(tmp), Path(mias_dir))
            for task in tasks or tuple(methods()):
                done[f"{task}.{kind}"] = train_one(task, kind, train, test, Path(tmp), out_dir, data_text)
                write_card(out_dir, task)
    total = time.monotonic() - started
    print(f"train-zoo: {len(done)} checkpoint(s) in {format_seconds(total)}", flush=True)
    return {"out": str(out_dir), "wall_s": round(total, 1),
            "checkpoints": {k: v["metrics"] for k, v in done.items()}}
