"""Per-site calibration of a task's image probability and its operating point.

:func:`calibrate` runs an infer task on a site's labelled images and fits the truth on the task's
raw probability with Platt scaling (logistic regression on the log-odds, with Platt's smoothed
targets) or isotonic regression (scikit-learn). The operating point is a threshold on the raw
probability: the highest whose sensitivity on these images is at least the one asked (default
0.9), or the lowest whose specificity is. Both go to ``<task>.calibration.json`` in the site's
model folder with the SHA-256 of the checkpoint they were fitted for; :func:`annotate` adds the
calibrated probability to the task's results for that checkpoint only, and never touches a shipped
checkpoint. :func:`report` gives ``evaluate`` its reliability diagram and the operating point's
sensitivity and specificity with Wilson 95 % intervals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.progress import Progress
from mammolabel.errors import InputError, ModelNotTrainedError
from mammolabel.io import atomic_path

logger = logging.getLogger("mammolabel")

METHODS = ("platt", "isotonic")
MIN_IMAGES_PER_CLASS = 10
DEFAULT_SENSITIVITY = 0.9
#: Shipped checkpoints (``models/`` of the repository): calibrations are never written there.
SHIPPED_DIR = Path(__file__).resolve().parents[3] / "models"
EPS = 1e-6


@dataclass(frozen=True)
class Target:
    """What a task's calibrated probability is of: how to read it from a result, which images are positive."""

    positive: str
    probability: Callable[[dict[str, Any]], float]
    truth: Callable[[ImageLabels, dict[str, Any]], bool | None]


#: The calibrated probability of each infer task that has one.
TARGETS: dict[str, Target] = {
    "classification": Target("the checkpoint's target (malignant or abnormal)",
                             lambda r: r[f"{r['model_used']}_probability"],
                             lambda rec, r: rec.malignant if r["target"] == "malignant" else rec.abnormal),
    "glam_segmentation": Target("malignant", lambda r: r["probabilities"]["malignant"], lambda rec, r: rec.malignant),
    "localization": Target("the checkpoint's positive findings", lambda r: r["probability"],
                           lambda rec, r: rec.malignant if r["positive"] == "malignant" else rec.abnormal),
    "discriminative_segmentation": Target("malignant", lambda r: r["max_score"], lambda rec, r: rec.malignant),
    "hybrid_segmentation": Target("a lesion (benign or malignant)", lambda r: r["lesion_probability"],
                                  lambda rec, r: rec.abnormal),
}


# --- the calibration maps ----------------------------------------------------------------------
def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_map(raw: np.ndarray, truth: np.ndarray, method: str) -> dict[str, Any]:
    """Parameters of the calibration map of ``raw`` probabilities to the frequency of ``truth``."""
    raw, truth = np.asarray(raw, np.float64), np.asarray(truth, bool)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        n_pos, n_neg = int(truth.sum()), int((~truth).sum())
        target = np.where(truth, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # Platt's smoothed targets
        x = _logit(raw)[:, None]
        model = LogisticRegression(C=np.inf).fit(np.vstack([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))],
                                                 sample_weight=np.r_[target, 1 - target])
        slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        if slope <= 0:
            raise InputError("calibrate: the task's probability does not rise with the truth on these images "
                             f"(Platt slope {slope:.3g}); check the labels or the checkpoint")
        return {"method": "platt", "slope": slope, "intercept": intercept}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, truth.astype(float))
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    raise InputError(f"calibrate: method must be one of {', '.join(METHODS)}, got {method!r}")


def apply_map(params: dict[str, Any], raw: np.ndarray | float) -> np.ndarray:
    """Calibrated probabilities of ``raw`` ones."""
    raw = np.asarray(raw, np.float64)
    if params["method"] == "platt":
        return 1 / (1 + np.exp(-(params["slope"] * _logit(raw) + params["intercept"])))
    return np.interp(raw, params["x"], params["y"])


# --- operating point ---------------------------------------------------------------------------
def wilson(successes: int, n: int) -> list[float] | None:
    """Wilson 95 % interval of a proportion (None without trials)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def rates(above: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity of the decisions ``above`` with their intervals and counts."""
    above, truth = np.asarray(above, bool), np.asarray(truth, bool)
    tp, fn = int((above & truth).sum()), int((~above & truth).sum())
    tn, fp = int((~above & ~truth).sum()), int((above & ~truth).sum())
    return {"sensitivity": tp / max(1, tp + fn), "sensitivity_ci95": wilson(tp, tp + fn),
            "specificity": tn / max(1, tn + fp), "specificity_ci95": wilson(tn, tn + fp),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def operating_threshold(raw: np.ndarray, truth: np.ndarray, sensitivity: float | None = None,
                        specificity: float | None = None) -> float:
    """The highest raw threshold with at least ``sensitivity``, or the lowest with at least ``specificity``."""
    raw, truth = np.asarray(raw, np.float64), np.asarray(truth, bool)
    if specificity is not None:
        negatives = np.sort(raw[~truth])[::-1]
        allowed = math.floor((1 - specificity) * len(negatives) + 1e-9)  # negatives that may lie above
        return float(np.nextafter(negatives[allowed], np.inf)) if allowed < len(negatives) else float(raw.min())
    positives = np.sort(raw[truth])[::-1]
    needed = max(1, math.ceil((DEFAULT_SENSITIVITY if sensitivity is None else sensitivity) * len(positives) - 1e-9))
    return float(positives[needed - 1])


# --- files ---------------------------------------------------------------------------------------
_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered until the file changes."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def calibration_path(task: Any, model_dir: str | os.PathLike | None = None) -> Path:
    """``<model folder>/<task>.calibration.json``: the folder of the task's site checkpoint unless given."""
    if model_dir is None:
        paths = task.path if isinstance(task.path, list) else [task.path]
        model_dir = Path(str([p for p in paths if p][-1])).parent
    return Path(model_dir) / f"{task.name}.calibration.json"


def load_calibration(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning(f"{path}: unreadable calibration, not applied ({e})")
        return None


# --- calibrate, annotate, report ---------------------------------------------------------------
def _target(task: Any) -> Target:
    if task.name not in TARGETS:
        raise InputError(f"task '{task.name}' has no image probability to calibrate; calibrated tasks: "
                         f"{', '.join(TARGETS)}")
    return TARGETS[task.name]


def calibrate(task: Any, inventory: LabelInventory, method: str = "platt", sensitivity: float | None = None,
              specificity: float | None = None, split: str = "all", model_dir: str | os.PathLike | None = None,
              device: str = "cpu") -> dict[str, Any]:
    """Calibrate ``task``'s probability on ``inventory``'s images with a finding; write and return the calibration."""
    from mammolabel.tasks.run import run_task

    target = _target(task)
    if method not in METHODS:
        raise InputError(f"calibrate: method must be one of {', '.join(METHODS)}, got {method!r}")
    for name, value in (("sensitivity", sensitivity), ("specificity", specificity)):
        if value is not None and not 0 < value <= 1:
            raise InputError(f"calibrate: {name} must lie in (0, 1], got {value}")
    checkpoint = task.checkpoint()
    if not checkpoint or not os.path.isfile(checkpoint):
        raise ModelNotTrainedError(task.name, task.train_task or "?", str(checkpoint))
    out = calibration_path(task, model_dir)
    if out.parent.resolve() == SHIPPED_DIR:
        raise InputError(f"calibrate: {out.parent} holds the shipped checkpoints, which stay as shipped; "
                         "store the site's calibration in its model folder (--model-dir)")
    records = [r for r in inventory.images if r.finding is not None]
    if split == "val":
        val = set(load_checkpoint(checkpoint).get("validation_images", []))
        records = [r for r in records if r.image_id in val]
    lesions = sum(r.finding != "normal" for r in records)  # every target's positives have a lesion
    if lesions < MIN_IMAGES_PER_CLASS:
        raise InputError(f"calibrate {task.name}: only {lesions} of {len(records)} images with a finding have a "
                         f"lesion; at least {MIN_IMAGES_PER_CLASS} positive images are needed")

    raw, truth, ids = [], [], []
    progress = Progress(len(records), f"calibrate {task.name}", every_s=15)
    for rec in records:
        _, result = run_task(task, rec.image_path, device, rec.laterality)
        positive = target.truth(rec, result)
        if positive is not None:
            raw.append(float(target.probability(result)))
            truth.append(bool(positive))
            ids.append(rec.image_id)
        progress.update()
    raw_a, truth_a = np.asarray(raw), np.asarray(truth, bool)
    n_pos, n_neg = int(truth_a.sum()), int((~truth_a).sum())
    if n_pos < MIN_IMAGES_PER_CLASS or n_neg < MIN_IMAGES_PER_CLASS:
        raise InputError(f"calibrate {task.name}: {n_pos} positive ({target.positive}) and {n_neg} negative images "
                         f"with a finding; at least {MIN_IMAGES_PER_CLASS} of each are needed")

    params = fit_map(raw_a, truth_a, method)
    calibrated = apply_map(params, raw_a)
    asked = {"specificity": specificity} if specificity is not None else {
        "sensitivity": DEFAULT_SENSITIVITY if sensitivity is None else sensitivity}
    threshold = operating_threshold(raw_a, truth_a, sensitivity, specificity)
    calibration = {
        "task": task.name,
        "positive": target.positive,
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "map": params,
        "operating_point": {"asked": asked, "raw_threshold": threshold,
                            "calibrated_threshold": round(float(apply_map(params, threshold)), 6),
                            **rates(raw_a >= threshold, truth_a)},
        "images": len(raw), "positives": n_pos, "negatives": n_neg,
        "brier_raw": float(np.mean((raw_a - truth_a) ** 2)),
        "brier_calibrated": float(np.mean((calibrated - truth_a) ** 2)),
        "split": split,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "raw_probabilities": dict(zip(ids, raw)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(calibration, indent=2))
    point = calibration["operating_point"]
    logger.info(f"calibrate {task.name}: {method} on {len(raw)} images (Brier {calibration['brier_raw']:.4f} -> "
                f"{calibration['brier_calibrated']:.4f}); operating point {threshold:.4g}: sensitivity "
                f"{point['sensitivity']:.3f}, specificity {point['specificity']:.3f}; written to {out}")
    return {"calibration": str(out), **{k: v for k, v in calibration.items() if k != "raw_probabilities"}}


def annotate(task: Any, result: dict[str, Any]) -> dict[str, Any] | None:
    """The ``calibration`` entry of a result: raw and calibrated probability and whether the image is above
    the operating point; None without a calibration for the checkpoint that answered."""
    target = TARGETS.get(task.name)
    checkpoint = task.checkpoint()
    if target is None or not checkpoint or not os.path.isfile(checkpoint):
        return None
    path = calibration_path(task)
    calibration = load_calibration(path)
    if calibration is None:
        return None
    if calibration.get("checkpoint_sha256") != file_sha256(checkpoint):
        return {"applied": False, "reason": f"{path.name} was fitted for another checkpoint; run calibrate again"}
    raw = float(target.probability(result))
    point = calibration["operating_point"]
    return {"applied": True, "method": calibration["map"]["method"], "positive": target.positive,
            "raw_probability": raw, "calibrated_probability": round(float(apply_map(calibration["map"], raw)), 6),
            "operating_point": point["raw_threshold"], "above_operating_point": raw >= point["raw_threshold"],
            "asked": point["asked"]}


def evaluation_row(task: Any, record: ImageLabels, result: dict[str, Any]) -> dict[str, Any]:
    """Per-image evaluation values: raw probability, truth and, when applied, the calibration's."""
    target = TARGETS.get(task.name)
    truth = target.truth(record, result) if target else None
    if truth is None:
        return {}
    row = {"raw_probability": float(target.probability(result)), "positive": bool(truth)}
    applied = result.get("calibration") or {}
    if applied.get("applied"):
        row.update(calibrated_probability=applied["calibrated_probability"],
                   above_operating_point=applied["above_operating_point"])
    return row


def report(task_name: str, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any] | None:
    """Brier scores, the reliability diagram ``reliability.png`` and, when calibrated, the operating point's
    sensitivity and specificity with intervals."""
    from mammolabel.metrics.pictures import save_reliability

    rows = [r for r in rows if "raw_probability" in r]
    if not rows:
        return None
    truth = np.array([r["positive"] for r in rows], bool)
    curves = {"raw": np.array([r["raw_probability"] for r in rows])}
    calibrated = [r for r in rows if "calibrated_probability" in r]
    if len(calibrated) == len(rows):
        curves["calibrated"] = np.array([r["calibrated_probability"] for r in rows])
    save_reliability(out_dir / "reliability.png", curves, truth, f"{task_name}: reliability")
    summary: dict[str, Any] = {"n_images": len(rows), "positives": int(truth.sum()),
                               **{f"brier_{name}": float(np.mean((p - truth) ** 2)) for name, p in curves.items()}}
    if "calibrated" in curves:
        above = np.array([r["above_operating_point"] for r in rows], bool)
        summary["operating_point"] = rates(above, truth)
    return summary
