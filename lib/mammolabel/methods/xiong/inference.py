"""Inference and evaluation of Xiong et al.'s hybrid strong/weak segmentation (infer ``hybrid_segmentation``).

The labelmap holds the lesion mask (1) and, for display, the uncertain area of the background
branch outside the lesion (2); the JSON result lists each lesion component with its box and mean
probability. Training lives in :mod:`mammolabel.methods.xiong.training`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mammolabel.data.labels import ImageLabels
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.io.prediction import Prediction
from mammolabel.methods.contract import Method, PredictContext, Trainer
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.methods.xiong.options import HybridTrainOptions
from mammolabel.methods.xiong.training import NAME, STAGE, train_hybrid
from mammolabel.metrics import auc, dice, point_hits
from mammolabel.metrics.components import components
from mammolabel.training.checkpoint import method_fields
from mammolabel.transforms.geometry import make_frame

LESION, UNCERTAIN = 1, 2
#: Size of the random-weight checkpoint used for timing (the paper's network at its input size).
BENCHMARK_FRAME = {"rows": 352, "cols": 352, "crop_breast": True}
_OFF = ("0", "false", "no", "off")


def _threshold(request: dict[str, Any], ckpt: dict[str, Any]) -> float:
    """The request's ``threshold``, else the checkpoint's lesion threshold; refused outside (0, 1)."""
    given = request.get("threshold")
    try:
        threshold = float(ckpt["thresholds"]["lesion"] if given is None else given)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie in (0, 1), got {given!r}")
    return threshold


class XiongMethod(Method):
    """Mass segmentation by the hybrid strong/weak network of Xiong et al.

    Request options: ``threshold`` (lesion probability; default: the one stored in the checkpoint)
    and ``uncertain_area`` (false leaves label 2 out of the labelmap).
    """

    name = NAME
    task = "hybrid_segmentation"
    description = "Mass segmentation from a few masks and many boxes (Xiong et al., hybrid supervision)"
    labels = {"lesion": LESION, "uncertain_area": UNCERTAIN}
    infer_options = {"threshold": None, "uncertain_area": True}
    rank_key = "dice"
    trainers = (
        Trainer("train_hybrid", "Hybrid strong/weak segmentation (Xiong et al.)", HybridTrainOptions,
                # 320 x 192 input, ResNet-34 encoder of width 16.
                {"rows": 320, "cols": 192, "width": 16, "epochs": 40}, train_hybrid),
    )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return XiongHybridNet(HybridConfig(**checkpoint["network"]))

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        threshold = _threshold(context.request, checkpoint)
        size = checkpoint["frame"]
        frame = make_frame(pixels, (size["rows"], size["cols"]), size["crop_breast"])
        x = torch.from_numpy(frame.to_input(pixels))[None, None].to(context.device)
        out = network(x)
        prob = frame.to_full(torch.sigmoid(out.segmentation.float())[0, 0])
        lesion = prob > threshold
        labelmap = np.zeros(pixels.shape, np.uint8)
        uncertain_fraction = None
        if out.background is not None:
            background = frame.to_full(torch.sigmoid(out.background.float())[0, 0], fill=1.0)
            uncertain = background < 0.5
            uncertain_fraction = round(float(uncertain.mean()), 5)
            if str(context.request.get("uncertain_area", True)).lower() not in _OFF:
                labelmap[uncertain] = UNCERTAIN
        labelmap[lesion] = LESION
        found = components(lesion, prob, meta.get("spacing"))
        values = {
            "lesion_probability": round(float(prob.max()), 4),
            "threshold": threshold,
            "lesion_area_px": int(lesion.sum()),
            "uncertain_fraction": uncertain_fraction,
            "components": len(found),
        }
        boxes = [{k: v for k, v in c.items() if k != "centre"} for c in found]
        points = [{"x": c["centre"][0], "y": c["centre"][1], "score": c["mean_probability"]} for c in found]
        return Prediction(labelmap=labelmap, values=values, points=points, boxes=boxes, heatmap=prob)

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Per-image row: Dice of the lesion label against the mask, the share of the mask covered by the
        lesion or uncertain labels (``uncertain_recall``), a hit when a component centre falls in a
        lesion box, and for a normal film whether any lesion pixel was predicted."""
        lesion = labelmap == LESION
        row: dict[str, Any] = {"lesion_probability": result["lesion_probability"],
                               "components": result["components"], "lesion": bool(record.boxes or record.mask_path)}
        if record.mask_path:
            truth = read_label(record.mask_path, labelmap.shape) > 0
            row["dice"] = dice(lesion, truth) or 0.0
            if result.get("uncertain_fraction") is not None:
                covered = (labelmap > 0) & truth
                row["uncertain_recall"] = float(covered.sum() / max(1, truth.sum()))
        if record.boxes:
            row["hit"] = any(point_hits((p["x"], p["y"]), record.boxes) for p in result["points"])
        elif record.finding == "normal":
            row["false_positive"] = bool(lesion.any())
        return row

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        recalls = [r["uncertain_recall"] for r in rows if "uncertain_recall" in r]
        normals = [r["false_positive"] for r in rows if "false_positive" in r]
        scored = [r for r in rows if r["lesion"] or "false_positive" in r]
        return {
            "lesion_vs_normal_auc": auc([r["lesion_probability"] for r in scored], [r["lesion"] for r in scored]),
            "uncertain_recall_mean": float(np.mean(recalls)) if recalls else None,
            "normal_false_positive_rate": float(np.mean(normals)) if normals else None,
            "n_dice": sum(1 for r in rows if r.get("dice") is not None),
        }

    def benchmark_network(self) -> torch.nn.Module:
        return XiongHybridNet(HybridConfig())

    def benchmark_checkpoint(self) -> dict[str, Any]:
        options = HybridTrainOptions(rows=BENCHMARK_FRAME["rows"], cols=BENCHMARK_FRAME["cols"])
        return {"model": self.benchmark_network().state_dict(),
                **method_fields(NAME, asdict(HybridConfig()), dict(BENCHMARK_FRAME), options.to_dict(), STAGE,
                                {"lesion": options.threshold}, [], {})}
