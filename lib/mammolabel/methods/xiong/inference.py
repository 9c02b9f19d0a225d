"""Tasks of Xiong et al.'s hybrid strong/weak segmentation: infer ``hybrid_segmentation``, train ``train_hybrid``.

The labelmap holds the lesion mask (1) and, for display, the uncertain area of the background
branch outside the lesion (2); the JSON result lists each lesion component with its box and mean
probability. Training lives in :mod:`mammolabel.methods.xiong.training`.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.methods.xiong.training import HybridTrainOptions, train_hybrid
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.metrics import auc, dice, point_hits
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask
from mammolabel.transforms.geometry import make_frame

LESION, UNCERTAIN = 1, 2
LABELS = {"lesion": LESION, "uncertain_area": UNCERTAIN}
#: Size of the random-weight checkpoint used for timing (the paper's network at its input size).
BENCHMARK_INPUT = {"rows": 352, "cols": 352, "crop_breast": True}


def lesion_components(prob: np.ndarray, lesion: np.ndarray, spacing: list[float] | None) -> list[dict[str, Any]]:
    """One entry per 8-connected lesion component: inclusive box, mean probability, area, centre."""
    components, _ = ndimage.label(lesion, structure=np.ones((3, 3)))
    pixel_mm2 = float(spacing[0] * spacing[1]) if spacing else None
    found = []
    for index, sl in enumerate(ndimage.find_objects(components), start=1):
        if sl is None:
            continue
        inside = components[sl] == index
        area = int(inside.sum())
        cy, cx = ndimage.center_of_mass(inside)
        found.append({
            "box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)],
            "mean_probability": round(float(prob[sl][inside].mean()), 4),
            "max_probability": round(float(prob[sl][inside].max()), 4),
            "area_px": area,
            "area_mm2": round(area * pixel_mm2, 2) if pixel_mm2 else None,
            "centre": [float(sl[1].start + cx), float(sl[0].start + cy)],
        })
    return sorted(found, key=lambda c: -c["mean_probability"])


class HybridSegmentationInfer(MammoInferTask):
    """Mass segmentation by the hybrid strong/weak network of Xiong et al.

    Request options: ``threshold`` (lesion probability; default: the one stored in the checkpoint)
    and ``uncertain_area`` (false leaves label 2 out of the labelmap).
    """

    name = "hybrid_segmentation"
    train_task = "train_hybrid"
    rank_key = "dice"

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(
            path=path,
            labels=dict(LABELS),
            description="Mass segmentation from a few masks and many boxes (Xiong et al., hybrid supervision)",
            config={"uncertain_area": True, **(config or {})},
        )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return XiongHybridNet(HybridConfig.from_dict(checkpoint.get("network", {})))

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        device = data.get("device") or "cpu"
        device = "cpu" if str(device).startswith("cuda") and not torch.cuda.is_available() else device
        network, ckpt = self.load(device)
        try:
            threshold = float(data.get("threshold", ckpt.get("threshold", 0.5)))
        except (TypeError, ValueError):
            threshold = -1.0
        if not 0 < threshold < 1:
            raise InputError(f"threshold must lie in (0, 1), got {data.get('threshold')!r}")
        size = ckpt["input"]
        pixels = image[0].cpu().numpy()
        frame = make_frame(pixels, (size["rows"], size["cols"]), size["crop_breast"])
        x = torch.from_numpy(frame.to_input(pixels))[None, None].to(device)
        out = network(x)
        prob = frame.to_full(torch.sigmoid(out.segmentation.float())[0, 0])
        lesion = prob > threshold
        labelmap = np.zeros(pixels.shape, np.uint8)
        uncertain_fraction = None
        if out.background is not None:
            background = frame.to_full(torch.sigmoid(out.background.float())[0, 0], fill=1.0)
            uncertain = background < 0.5
            uncertain_fraction = round(float(uncertain.mean()), 5)
            if str(data.get("uncertain_area", True)).lower() not in ("0", "false", "no", "off"):
                labelmap[uncertain] = UNCERTAIN
        labelmap[lesion] = LESION
        components = lesion_components(prob, lesion, meta.get("spacing"))
        values = {
            "lesion_probability": round(float(prob.max()), 4),
            "threshold": threshold,
            "lesion_area_px": int(lesion.sum()),
            "uncertain_fraction": uncertain_fraction,
            "components": len(components),
        }
        boxes = [{k: v for k, v in c.items() if k != "centre"} for c in components]
        points = [{"x": c["centre"][0], "y": c["centre"][1], "score": c["mean_probability"]} for c in components]
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
        return {
            "lesion_vs_normal_auc": auc([r["lesion_probability"] for r in rows if r["lesion"] or "false_positive" in r],
                                        [r["lesion"] for r in rows if r["lesion"] or "false_positive" in r]),
            "uncertain_recall_mean": float(np.mean(recalls)) if recalls else None,
            "normal_false_positive_rate": float(np.mean(normals)) if normals else None,
            "n_dice": sum(1 for r in rows if r.get("dice") is not None),
        }

    @classmethod
    def benchmark_module(cls) -> torch.nn.Module:
        return XiongHybridNet(HybridConfig())

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        save_checkpoint(Path(model_dir) / f"{cls.name}.pt", cls.benchmark_module(),
                        network=HybridConfig().to_dict(), input=dict(BENCHMARK_INPUT), threshold=0.5)


class TrainHybrid(MammoTrainTask):
    """Train the hybrid network: masks where present, boxes elsewhere (options: :class:`HybridTrainOptions`)."""

    name = "train_hybrid"
    checkpoint_name = HybridSegmentationInfer.name
    defaults = {f.name: f.default for f in fields(HybridTrainOptions)}
    #: 320 x 192 input, ResNet-34 encoder of width 16.
    cpu_preset = {"rows": 320, "cols": 192, "width": 16, "epochs": 40}

    def __init__(self, model_dir: str | Path, description: str = "Hybrid strong/weak segmentation (Xiong et al.)",
                 defaults: dict[str, Any] | None = None, shipped: str | Path | None = None):
        super().__init__(model_dir, description, defaults, shipped)

    def check(self, options: dict[str, Any]) -> None:
        HybridTrainOptions.from_dict(options)

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        return train_hybrid(inventory, options, out)
