"""Evaluate an infer task over a datastore: metrics JSON, per-image rows, overlays, ROC and reliability plots.

The task runs exactly as the server runs it (same pre-processing, same writer); each task scores
its own output per image (:meth:`MammoInferTask.score`) and this module aggregates the rows into
the keys of the library interface: ``auc``, ``hit_rate``, ``dice_mean``, ``dice_max``, ``n_images``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.tasks import calibration
from mammolabel.training.progress import Progress
from mammolabel.io import atomic_path, read_label, read_mammogram
from mammolabel.metrics import auc, roc
from mammolabel.metrics.pictures import save_overlay, save_roc
from mammolabel.tasks.infer import MammoInferTask, MethodInferTask
from mammolabel.tasks.run import run_task

logger = logging.getLogger("mammolabel")


def score_sets(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[bool]]]:
    """Scores and truths of the two ROC questions: normal vs abnormal, benign vs malignant."""
    scored = [r for r in rows if r.get("score") is not None and r.get("finding")]
    lesion = [r for r in scored if r["finding"] != "normal"]
    return {
        "normal_vs_abnormal": (
            [float(r.get("abnormal_score", r["score"])) for r in scored],
            [r["finding"] != "normal" for r in scored],
        ),
        "benign_vs_malignant": ([float(r["score"]) for r in lesion], [r["finding"] == "malignant" for r in lesion]),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-image rows into the standard metrics (None where the rows do not define one)."""
    hits = [float(r["hit"]) for r in rows if r.get("hit") is not None]
    dices = [float(r["dice"]) for r in rows if r.get("dice") is not None]
    return {
        "n_images": len(rows),
        "auc": {name: auc(scores, truth) for name, (scores, truth) in score_sets(rows).items()},
        "hit_rate": float(np.mean(hits)) if hits else None,
        "dice_mean": float(np.mean(dices)) if dices else None,
        "dice_max": float(np.max(dices)) if dices else None,
    }


def write_roc(out_dir: Path, rows: list[dict[str, Any]], name: str) -> None:
    curves = {}
    for title, (scores, truth) in score_sets(rows).items():
        value = auc(scores, truth)
        if value is not None:
            curves[title.replace("_", " ")] = (*roc(scores, truth), value)
    if curves:
        save_roc(out_dir / "roc.png", curves, f"{name}: ROC")


def evaluate(
    task: MammoInferTask,
    inventory: LabelInventory,
    out_dir: str | Path,
    device: str = "cpu",
    image_ids: set[str] | None = None,
    n_pictures: int = 3,
) -> dict[str, Any]:
    """Evaluate ``task`` on every labelled image (or those in ``image_ids``); write ``metrics.json`` and pictures.

    A method sees the patient's other views in the inventory's datastore, as the server's datastore.
    """
    if isinstance(task, MethodInferTask) and inventory.datastore is not None:
        task.datastore = inventory.datastore
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[ImageLabels] = [
        r for r in inventory.images if r.kinds and (image_ids is None or r.image_id in image_ids)
    ]
    rows: list[dict[str, Any]] = []
    progress = Progress(len(records), f"evaluate {task.name}", every_s=15)
    for rec in records:
        labelmap, result = run_task(task, rec.image_path, device, rec.laterality, rec.image_id)
        rows.append({"image_id": rec.image_id, "finding": rec.finding, **task.score(rec, labelmap, result),
                     **calibration.evaluation_row(task, rec, result)})
        progress.update()

    metrics = summarise(rows)
    metrics.update(task.summarise(rows))
    metrics["calibration"] = calibration.report(task.name, rows, out_dir)
    metrics["rows"] = rows
    with atomic_path(out_dir / "metrics.json", suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2, default=float))

    ranked = sorted((r for r in rows if r.get(task.rank_key) is not None), key=lambda r: float(r[task.rank_key]))
    by_id = {r.image_id: r for r in records}
    picked = {"worst": ranked[:n_pictures], "best": ranked[::-1][:n_pictures]}
    for kind, chosen in picked.items():
        for row in chosen:
            rec = by_id[row["image_id"]]
            labelmap, result = run_task(task, rec.image_path, device, rec.laterality, rec.image_id)
            truth = read_label(rec.mask_path, labelmap.shape) if rec.mask_path else None
            points = [(p["x"], p["y"]) for p in result.get("points", [])]
            save_overlay(out_dir / f"{kind}_{rec.image_id}.png", read_mammogram(rec.image_path).pixels,
                         labelmap=labelmap, truth=truth, points=points)
    write_roc(out_dir, rows, task.name)
    logger.info(f"evaluate {task.name}: {json.dumps({k: v for k, v in metrics.items() if k != 'rows'}, default=float)}")
    return metrics
