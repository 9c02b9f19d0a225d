"""Evaluation rows of ``classification`` results and their summary: AUC of each model on each question,
per image and per examination (§3.4, §5), and the ROI hit rate."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mammolabel.data.labels import ImageLabels
from mammolabel.methods.dahl.analysis import MODELS
from mammolabel.metrics import auc, point_hits


def positive(record: ImageLabels, target: str) -> bool | None:
    """Truth of the training target for a record (None without a finding)."""
    return record.malignant if target == "malignant" else record.abnormal


def evaluation_row(record: ImageLabels, result: dict[str, Any]) -> dict[str, Any]:
    """Per-image evaluation row of a ``classification`` result (original orientation)."""
    main = result["model_used"]
    row: dict[str, Any] = {
        "score": result[f"{main}_risk"],
        "abnormal_score": result[f"{main}_risk"],
        "target": result["target"],
        **{f"{m}_score": result[f"{m}_risk"] for m in MODELS},
    }
    truth = positive(record, result["target"])
    if truth is not None:
        p = result[f"{main}_probability"]
        row["confidence"] = p if truth else 1 - p
    exam = result.get("exam")
    if exam:
        row["exam_id"] = exam["patient_id"]
        row.update({f"exam_{m}_score": exam[f"{m}_risk"] for m in MODELS})
    coa = (result["coa"]["x"], result["coa"]["y"])
    circles = [(p[0], p[1], r) for p, r in zip(record.points, record.radii)]
    if record.boxes or circles:
        row["hit"] = point_hits(coa, boxes=record.boxes, circles=circles)
    if record.points:
        x0, y0, x1, y1 = result["roi"]
        row["roi_hit"] = any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in record.points)
    return row


#: The ROC questions of the evaluation: a finding's truth, or None where the question does not apply.
QUESTIONS = {
    "malignant_vs_rest": lambda finding: finding == "malignant",
    "normal_vs_abnormal": lambda finding: finding != "normal",
    "benign_vs_malignant": lambda finding: None if finding == "normal" else finding == "malignant",
}


def model_aucs(items: list[tuple[dict[str, Any], bool]], prefix: str = "") -> dict[str, float | None]:
    """AUC of each model's ``<prefix><model>_score`` over (row, truth) pairs (models without scores left out)."""
    return {m: auc([r[f"{prefix}{m}_score"] for r, _ in items], [t for _, t in items])
            for m in MODELS if items and all(r.get(f"{prefix}{m}_score") is not None for r, _ in items)}


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """AUC of each model on each question, per image and per examination, and the ROI hit rate.

    An examination is positive when one of its images is; it is left out of a question that does
    not apply to one of its images.
    """
    exams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("exam_id") and r.get("finding"):
            exams[r["exam_id"]].append(r)
    by_image, by_exam = {}, {}
    for question, truth_of in QUESTIONS.items():
        images = [(r, t) for r in rows if r.get("finding") and (t := truth_of(r["finding"])) is not None]
        exam_items = []
        for exam in exams.values():
            truths = [truth_of(r["finding"]) for r in exam]
            if None not in truths:
                exam_items.append((exam[0], any(truths)))
        by_image[question], by_exam[question] = model_aucs(images), model_aucs(exam_items, "exam_")
    target = rows[0]["target"] if rows else "malignant"
    question = "malignant_vs_rest" if target == "malignant" else "normal_vs_abnormal"
    holistic, ensemble = by_image[question].get("holistic"), by_image[question].get("ensemble")
    roi_hits = [float(r["roi_hit"]) for r in rows if r.get("roi_hit") is not None]
    return {
        "target_question": question,
        "auc_by_model": by_image,
        "exam_auc_by_model": by_exam,
        "n_exams": len(exams),
        "ensemble_ge_holistic": None if holistic is None or ensemble is None else ensemble >= holistic,
        "roi_hit_rate": float(np.mean(roi_hits)) if roi_hits else None,
    }
