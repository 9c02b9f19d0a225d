"""Active learning: strategies that pick the next image to annotate, and the uncertainty scoring.

Every strategy chooses among images without a lesion mask (``final``), skips images that another
annotator was given less than ``lock_seconds`` ago, and records its pick in the image info
(``lock``: client id, time, strategy) so that two annotators never get the same image at once.

- ``random`` and ``first``: as in MONAI Label, with locks.
- ``weak_first``: images that already have a box (then an abnormal finding) but no mask: the
  cheapest upgrade to a strong label.
- ``uncertainty``: the image with the highest stored uncertainty score (``/scoring/uncertainty``).

The uncertainty of an image is, per trained task, the mean binary entropy of the top 1% of its
heatmap (a model sure of a lesion, or sure there is none, scores low), averaged over the tasks,
plus the disagreement (standard deviation) of their peak heatmap values when several tasks run.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from mammolabel.data.datastore import collect_labels
from mammolabel.data.labels import ImageLabels
from mammolabel.data.schema import read_field
from mammolabel.training.progress import Progress
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.transforms import LoadMammogramd

logger = logging.getLogger("mammolabel")

LOCK_SECONDS = 600
_PICK_LOCK = threading.Lock()


class MammoStrategy(Strategy):
    """Base strategy: candidates are images without a mask that no other annotator holds."""

    def __init__(self, description: str, lock_seconds: float = LOCK_SECONDS):
        super().__init__(description)
        self.lock_seconds = lock_seconds

    def choose(self, candidates: list[ImageLabels], request: dict[str, Any], datastore: Datastore) -> tuple[str, str]:
        """Return (image id, reason) among non-empty ``candidates``."""
        raise NotImplementedError

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        with _PICK_LOCK:  # two annotators asking at once must not both get the same free image
            return self._pick(request, datastore)

    def _pick(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        client = str(request.get("client_id") or "anonymous")
        now = time.time()
        free = []
        for rec in collect_labels(datastore, image_paths=False).images:
            lock = read_field(datastore.get_image_info(rec.image_id), "lock", {}, where=rec.image_id)
            held = lock.get("client_id") not in (None, client) and now - lock["ts"] < self.lock_seconds
            if "mask" not in rec.kinds and not held:
                free.append(rec)
        if not free:
            return None
        image_id, reason = self.choose(free, request, datastore)
        datastore.get_image_uri(image_id)  # a DICOMweb datastore fetches (and indexes) the picked image only
        datastore.update_image_info(image_id, {"lock": {"client_id": client, "ts": now,
                                                        "strategy": request.get("strategy")}})
        logger.info(f"{request.get('strategy')}: {image_id} for {client} ({reason})")
        return {"id": image_id, "reason": reason}


class RandomStrategy(MammoStrategy):
    def __init__(self):
        super().__init__("Random image without a mask")

    def choose(self, candidates, request, datastore):
        return random.choice(candidates).image_id, "random"


class FirstStrategy(MammoStrategy):
    def __init__(self):
        super().__init__("First image (by id) without a mask")

    def choose(self, candidates, request, datastore):
        return min(r.image_id for r in candidates), "first by id"


class WeakFirstStrategy(MammoStrategy):
    def __init__(self):
        super().__init__("Images with a box or an abnormal finding but no mask first (cheapest upgrade)")

    def choose(self, candidates, request, datastore):
        boxed = sorted(r.image_id for r in candidates if "box" in r.kinds)
        if boxed:
            return boxed[0], "has a box, no mask"
        abnormal = sorted(r.image_id for r in candidates if r.abnormal)
        if abnormal:
            return abnormal[0], "abnormal finding, no mask"
        return min(r.image_id for r in candidates), "no weakly labelled image left: first by id"


class UncertaintyStrategy(MammoStrategy):
    def __init__(self):
        super().__init__("Most uncertain image first (run the 'uncertainty' scoring method to update)")

    def choose(self, candidates, request, datastore):
        scored = [(read_field(datastore.get_image_info(r.image_id), "uncertainty", {"score": -1.0},
                              where=r.image_id)["score"], r.image_id) for r in candidates]
        best_score, best = max(scored)
        if best_score < 0:
            return random.choice(candidates).image_id, "no uncertainty scores yet (run /scoring/uncertainty): random"
        return best, f"uncertainty {best_score:.4f}"


def predict_file(task: MammoInferTask, path: str, device: str = "cpu", laterality: str | None = None) -> Prediction:
    """Run a task's prediction on one file (canonical orientation), without writing a labelmap."""
    load = LoadMammogramd(keys="image", find_view=False)  # scoring needs no view: no pectoral search per image
    data = load({"image": path, "laterality": laterality, "device": device})
    with torch.inference_mode():
        return task.predict(data["image"], dict(data["image"].meta), data)


def heatmap_uncertainty(prediction: Prediction, top: float = 0.01) -> tuple[float, float] | None:
    """(mean binary entropy of the top ``top`` fraction of the heatmap, peak value), or None without heatmap."""
    if prediction.heatmap is None:
        return None
    values = np.sort(np.clip(prediction.heatmap.ravel(), 1e-6, 1 - 1e-6))[::-1]
    top_values = values[: max(1, int(top * values.size))]
    entropy = -(top_values * np.log(top_values) + (1 - top_values) * np.log(1 - top_values))
    return float(entropy.mean()), float(values[0])


class UncertaintyScoring(ScoringMethod):
    """Computes and stores ``uncertainty`` in the image info of every image without a mask."""

    def __init__(self, infers: dict[str, MammoInferTask]):
        super().__init__("Per-image uncertainty from the trained tasks (heatmap entropy + disagreement)")
        self.infers = infers

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        tasks = {n: t for n, t in self.infers.items() if t.train_task and t.checkpoint() and os.path.exists(t.checkpoint())}
        if not tasks:
            return {"scored": 0, "tasks": [], "message": "no trained task yet: train one first"}
        device = str(request.get("device") or "cpu")
        images = [r for r in collect_labels(datastore).images if "mask" not in r.kinds]
        progress = Progress(len(images), "scoring uncertainty", every_s=10)
        scores = {}
        for rec in images:
            per_task = {}
            for name, task in tasks.items():
                found = heatmap_uncertainty(predict_file(task, rec.image_path, device, rec.laterality))
                if found:
                    per_task[name] = found
            entropies = [e for e, _ in per_task.values()]
            peaks = [p for _, p in per_task.values()]
            score = float(np.mean(entropies) + np.std(peaks)) if per_task else -1.0
            datastore.update_image_info(rec.image_id, {"uncertainty": {
                "score": score, "per_task": {n: round(e, 5) for n, (e, _) in per_task.items()}, "ts": time.time()}})
            scores[rec.image_id] = score
            progress.update()
        return {"scored": len(scores), "tasks": sorted(tasks), "max": max(scores.values(), default=None)}
