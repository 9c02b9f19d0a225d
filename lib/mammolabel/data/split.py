"""Patient-wise, finding-stratified train/validation split."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from mammolabel.data.labels import FINDINGS, ImageLabels


def split_by_patient(
    records: list[ImageLabels], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[ImageLabels], list[ImageLabels]]:
    """Split so that all images of a patient land on the same side.

    Patients are grouped by their most severe finding and each group is split in the same
    proportion, so both sides see every finding. When that rounds every group to no validation patient
    although the fraction asks for one, one patient of the largest group is held out. The same records
    and seed give the same split.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must lie in [0, 1)")
    severity = {f: i for i, f in enumerate(FINDINGS)}
    patients: dict[str, list[ImageLabels]] = defaultdict(list)
    for r in records:
        patients[r.patient_id].append(r)
    groups: dict[int, list[str]] = defaultdict(list)
    for pid, recs in sorted(patients.items()):
        groups[max(severity.get(r.finding or "normal", 0) for r in recs)].append(pid)
    rng = np.random.default_rng(seed)
    val_ids: set[str] = set()
    orders = []
    for _, pids in sorted(groups.items()):
        order = [pids[i] for i in rng.permutation(len(pids))]
        n_val = math.floor(len(order) * val_fraction + 0.5) if len(order) > 1 else 0
        val_ids.update(order[:n_val])
        orders.append(order)
    if not val_ids and math.floor(len(patients) * val_fraction + 0.5) >= 1:
        # Small groups all rounded to zero: take one patient of the largest group that keeps one in training.
        order = max((o for o in orders if len(o) > 1), key=len, default=None)
        if order:
            val_ids.add(order[0])
    train = [r for r in records if r.patient_id not in val_ids]
    val = [r for r in records if r.patient_id in val_ids]
    return train, val


def patient_folds(records: list[ImageLabels], folds: int = 5, seed: int = 0) -> list[list[ImageLabels]]:
    """``folds`` disjoint groups of records, all images of a patient in one, stratified by finding
    (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    patients = {r.patient_id for r in records}
    if not 2 <= folds <= len(patients):
        raise ValueError(f"{folds} folds need between 2 and {len(patients)} (the number of patients)")
    severity = {f: i for i, f in enumerate(FINDINGS)}
    classes = [severity.get(r.finding or "normal", 0) for r in records]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [[records[i] for i in held] for _, held in
            splitter.split(np.zeros(len(records)), classes, [r.patient_id for r in records])]
