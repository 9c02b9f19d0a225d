"""``mammolabel crossval``: patient-wise k-fold cross-validation of one task, the protocol of every reported figure.

The labelled films are split into ``folds`` groups, all films of a patient in one group, stratified
by finding (:func:`mammolabel.data.split.patient_folds`). For each fold the task's checkpoint is
trained from scratch on the other folds (every train task of the method, :mod:`.recipes`); the
model selection it does (best epoch, thresholds) uses a validation split of those training patients
only, so the held-out fold never chooses anything. The fold's films are then scored as the server
scores them (:func:`mammolabel.evaluation.evaluate.evaluate`).

Reported, in ``crossval.json``: per fold the figures of :func:`mammolabel.evaluation.intervals.statistics`;
their mean over folds with a 95% t-interval; the pooled out-of-fold figures (every film scored once,
by the model that did not see its patient) with patient-wise bootstrap intervals; and the run time
with the machine's load. ``learning_curves.png`` shows each fold's training loss and validation
metric per epoch, ``roc.png`` the pooled out-of-fold ROC.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats

from mammolabel.data.datastore import collect_labels
from mammolabel.data.split import patient_folds
from mammolabel.errors import InputError
from mammolabel.evaluation.evaluate import evaluate, write_roc
from mammolabel.evaluation.intervals import found_key, interval_summary, statistics
from mammolabel.evaluation.recipes import stages_of, train_task_checkpoint
from mammolabel.io import atomic_path
from mammolabel.metrics.pictures import save_learning_curves
from mammolabel.tasks import infer_tasks
from mammolabel.tasks.launch import open_studies
from mammolabel.training.progress import format_seconds

logger = logging.getLogger("mammolabel")


def fold_interval(values: list[float]) -> dict[str, Any] | None:
    """Mean over folds and its 95% t-interval, within [0, 1] as every reported figure is (None without a
    value; no interval from one fold)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": round(mean, 3), "ci95": None, "folds": 1}
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    low, high = max(0.0, mean - half), min(1.0, mean + half)
    return {"mean": round(mean, 3), "ci95": [round(low, 3), round(high, 3)], "folds": len(values)}


def learning_runs(model_dir: Path, fold: int) -> dict[str, tuple[list[dict[str, float]], str]]:
    """Each stage's epoch history in a fold's model folder (from its ``.stats.json``), by ``fold k stage``."""
    runs = {}
    for path in sorted(model_dir.glob("*.stats.json")):
        stats = json.loads(path.read_text())
        if stats.get("history"):
            runs[f"fold {fold} {stats.get('stage', path.stem)}"] = (stats["history"], stats.get("metric", ""))
    return runs


def crossval(task: str, studies: str, out_dir: str | os.PathLike, folds: int = 5, seed: int = 0,
             options: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Cross-validate ``task`` on the labelled films of ``studies``; write and return the report."""
    stages_of(task)  # an unknown task or one without training is refused before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inventory = collect_labels(open_studies(str(studies)))
    labelled = [r for r in inventory.images if r.kinds]
    try:
        groups = patient_folds(labelled, folds, seed)
    except ValueError as e:
        raise InputError(f"crossval: {e}") from e
    given = " ".join(f"--set {k}={v}" for k, v in (options or {}).items())
    options = {**(options or {}), "device": device}
    patient_of = {r.image_id: r.patient_id for r in labelled}
    key = found_key(task)
    rows, per_fold, runs = [], [], {}
    started, load_before = time.monotonic(), os.getloadavg()
    for k, held in enumerate(groups):
        held_ids = {r.image_id for r in held}
        train = inventory.subset([r for r in labelled if r.image_id not in held_ids])
        fold_dir = out_dir / f"fold{k}"
        trained = train_task_checkpoint(task, train, fold_dir / "model", options, str(studies))
        metrics = evaluate(infer_tasks()[task](path=str(trained.checkpoint)), inventory.subset(held),
                           fold_dir / "eval", device=device, n_pictures=1)
        fold_rows = [{**r, "fold": k, "patient_id": patient_of[r["image_id"]]} for r in metrics["rows"]]
        rows += fold_rows
        figures = {name: statistic(fold_rows) for name, statistic in statistics(key).items()}
        per_fold.append({"fold": k, "train_films": len(train.images), "held_out_films": len(held),
                         "train_wall_s": round(trained.wall_s, 1), **figures})
        runs.update(learning_runs(fold_dir / "model", k))
        done = time.monotonic() - started
        logger.info(f"crossval {task}: fold {k + 1}/{folds} done ({figures}); "
                    f"ETA {format_seconds(done / (k + 1) * (folds - k - 1))}")
    report = {
        "task": task, "studies": str(studies), "folds": folds, "seed": seed, "films": len(labelled),
        "patients": len({r.patient_id for r in labelled}), "train_tasks": stages_of(task, options),
        "options": {k: v for k, v in trained.options.items()},
        "per_fold": per_fold,
        "mean_over_folds": {name: fold_interval([f[name] for f in per_fold]) for name in statistics(key)},
        "out_of_fold": interval_summary(rows, inventory, key),
        "wall_s": round(time.monotonic() - started, 1), "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in load_before + os.getloadavg()],
        "command": f"mammolabel crossval {task} --studies {studies} --folds {folds} --seed {seed} {given}".strip(),
        "rows": rows,
    }
    with atomic_path(out_dir / "crossval.json", suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2, default=float))
    if runs:
        save_learning_curves(out_dir / "learning_curves.png", runs, f"{task}: {folds}-fold cross-validation")
    write_roc(out_dir, rows, f"{task} (out of fold)")
    logger.info(f"crossval {task}: {json.dumps(report['out_of_fold'])} in {format_seconds(report['wall_s'])}")
    return report


def patients_of(report: dict[str, Any]) -> dict[str, str]:
    """Patient of each film of a report (from its rows, else from the datastore it names)."""
    if all("patient_id" in r for r in report["rows"]):
        return {r["image_id"]: r["patient_id"] for r in report["rows"]}
    return {r.image_id: r.patient_id for r in collect_labels(open_studies(report["studies"])).images}


#: Row keys each compared figure is computed from (``keys`` of :func:`paired_difference` stand in for them).
FIGURE_KEYS = {"auc_normal_vs_abnormal": ("score", "abnormal_score"), "auc_malignant_vs_rest": ("score",),
               "auc_benign_vs_malignant": ("score",),
               "lesions_found": ("hit",), "hit_rate": ("hit",), "dice_mean": ("dice",)}


def paired_difference(first: dict[str, Any], second: dict[str, Any], figure: str, n: int = 1000,
                      seed: int = 0, keys: tuple[str, str] | None = None, where: str = "") -> dict[str, Any]:
    """``figure`` of ``first`` minus that of ``second`` on the same films, with a paired patient-wise 95%
    bootstrap interval (the same resampled patients for both).

    ``keys`` name the row key each report's figure is computed from instead of its own (:data:`FIGURE_KEYS`),
    e.g. ``("ensemble_score", "holistic_score")`` for two models of one run or ``("hit", "hit_cam")`` for
    two maps; ``where`` keeps only the films whose row has that key true (e.g. ``small`` lesions).
    """
    rows_a = {r["image_id"]: r for r in first["rows"] if not where or r.get(where)}
    rows_b = {r["image_id"]: r for r in second["rows"] if not where or r.get(where)}
    common = sorted(set(rows_a) & set(rows_b))
    if not common:
        raise InputError(f"crossval compare: the two reports share no film{' with ' + where if where else ''}")
    patient = patients_of(first)
    statistic = statistics("hit")[figure]

    def value(rows: list[dict[str, Any]], key: str | None) -> float | None:
        if key is not None:
            rows = [{**r, **{k: r.get(key) for k in FIGURE_KEYS[figure]}} for r in rows]
        return statistic(rows)

    def difference(ids: list[str]) -> float | None:
        a = value([rows_a[i] for i in ids], keys[0] if keys else None)
        b = value([rows_b[i] for i in ids], keys[1] if keys else None)
        return None if a is None or b is None else a - b

    groups: dict[str, list[str]] = {}
    for image_id in common:
        groups.setdefault(patient[image_id], []).append(image_id)
    patients = list(groups)
    rng = np.random.default_rng(seed)
    draws = [difference([i for p in rng.choice(patients, len(patients)) for i in groups[p]]) for _ in range(n)]
    draws = [d for d in draws if d is not None]
    observed = difference(common)
    interval = [round(float(x), 3) for x in np.percentile(draws, [2.5, 97.5])] if len(draws) >= n // 2 else None
    return {"figure": figure, "difference": None if observed is None else round(observed, 3), "ci95": interval,
            "films": len(common), "patients": len(patients), **({"where": where} if where else {})}
