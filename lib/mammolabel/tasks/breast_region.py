"""Infer task ``breast_region``: classical breast and pectoral-muscle segmentation (no training)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monailabel.interfaces.config import TaskConfig

from mammolabel.breast import BREAST, PECTORAL, segment_breast
from mammolabel.data.labels import ImageLabels
from mammolabel.tasks.infer import MammoInferTask, Prediction


class BreastRegionInfer(MammoInferTask):
    """Breast versus background, with the pectoral muscle as its own label on MLO views."""

    name = "breast_region"
    rank_key = "hit"

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(
            path=path,
            labels={"breast": BREAST, "pectoral_muscle": PECTORAL},
            description="Breast region and pectoral muscle (classical, no training needed)",
            config=config,
        )

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        pixels = image[0].cpu().numpy()
        region = segment_breast(pixels, view=meta.get("view") or "MLO")
        spacing = meta.get("spacing")
        pixel_mm2 = float(spacing[0] * spacing[1]) if spacing else None
        breast_px = int(region.breast.sum() + region.pectoral.sum())
        values = {
            "side": meta.get("laterality") or ("R" if meta.get("flipped") else "L"),
            "chest_wall": meta.get("chest_wall"),
            "breast_area_px": breast_px,
            "pectoral_area_px": int(region.pectoral.sum()),
            "breast_area_mm2": round(breast_px * pixel_mm2, 1) if pixel_mm2 else None,
            "breast_fraction": round(breast_px / float(np.prod(pixels.shape)), 4),
        }
        return Prediction(labelmap=region.labelmap, values=values)

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """How many of the image's lesion centres fall inside the predicted breast (pectoral included)."""
        inside = sum(bool(labelmap[int(round(y)), int(round(x))] > 0) for x, y in record.points)
        row: dict[str, Any] = {"breast_fraction": result["breast_fraction"], "centres": len(record.points)}
        if record.points:
            row.update(inside=inside, hit=inside / len(record.points))
        return row

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        total = sum(r["centres"] for r in rows)
        inside = sum(r.get("inside", 0) for r in rows)
        return {"lesion_centres": total, "lesion_centres_inside_breast": inside / total if total else None}


class BreastRegionConfig(TaskConfig):
    """MONAI Label config of ``breast_region`` (no checkpoint, no training)."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = {"breast": BREAST, "pectoral_muscle": PECTORAL}

    def infer(self) -> BreastRegionInfer:
        return BreastRegionInfer()

    def trainer(self) -> None:
        return None
