"""Evaluation figures with patient-wise bootstrap 95% intervals (patients, not films, are resampled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mammolabel.data.datastore import LabelInventory
from mammolabel.evaluation.evaluate import score_sets
from mammolabel.metrics import auc

Rows = list[dict[str, Any]]
#: Row key that says a lesion was found, per task (default ``hit``; ``dice``: any overlap with the mask).
FOUND_KEYS = {"classification": "roi_hit", "glam_segmentation": "dice"}


def found_key(task: str) -> str:
    return FOUND_KEYS.get(task, "hit")


def _found(rows: Rows, key: str) -> float | None:
    values = [float(r[key] > 0) if key == "dice" else float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _mean(rows: Rows, key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _malignant_vs_rest(rows: Rows) -> float | None:
    """AUC of the malignancy ``score`` for malignant films against all others (benign and normal)."""
    scored = [r for r in rows if r.get("score") is not None and r.get("finding")]
    return auc([float(r["score"]) for r in scored], [r["finding"] == "malignant" for r in scored])


def statistics(key: str) -> dict[str, Callable[[Rows], float | None]]:
    """The figures reported for a task whose lesion-found row key is ``key``."""
    return {
        "auc_normal_vs_abnormal": lambda rows: auc(*score_sets(rows)["normal_vs_abnormal"]),
        "auc_malignant_vs_rest": _malignant_vs_rest,
        "auc_benign_vs_malignant": lambda rows: auc(*score_sets(rows)["benign_vs_malignant"]),
        "lesions_found": lambda rows: _found(rows, key),
        "hit_rate": lambda rows: _mean(rows, "hit"),
        "dice_mean": lambda rows: _mean(rows, "dice"),
    }


def bootstrap(rows: Rows, patients: list[str], statistic: Callable[[Rows], float | None], n: int = 1000,
              seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of ``statistic`` over ``n`` resamples of the patients (with replacement)."""
    by_patient: dict[str, Rows] = {}
    for row, patient in zip(rows, patients):
        by_patient.setdefault(patient, []).append(row)
    groups = list(by_patient.values())
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        sample = [row for i in rng.integers(0, len(groups), len(groups)) for row in groups[i]]
        value = statistic(sample)
        if value is not None:
            values.append(value)
    if len(values) < n // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 3), round(float(high), 3)


def interval_summary(rows: Rows, inventory: LabelInventory, key: str) -> dict[str, Any]:
    """Each figure on ``rows`` with its interval and the number of films it stands on."""
    patient_of = {r.image_id: r.patient_id for r in inventory.images}
    patients = [patient_of.get(r["image_id"], r["image_id"]) for r in rows]
    summary: dict[str, Any] = {}
    for name, statistic in statistics(key).items():
        value = statistic(rows)
        if value is not None:
            summary[name] = {"value": round(float(value), 3), "ci95": bootstrap(rows, patients, statistic)}
    summary["films"] = len(rows)
    summary["lesion_films_scored"] = sum(1 for r in rows if r.get(key) is not None)
    return summary
