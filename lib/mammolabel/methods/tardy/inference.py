"""Tardy & Mateus's method as MammoLabel serves it: infer ``discriminative_segmentation``, train
``pretrain_reconstruction`` then ``train_discriminative``.

The infer task thresholds the malignancy map ``O = I - U(I)`` of the whole (breast-cropped) image
into a labelmap (1 = malignant region); the JSON gives the area, each connected component with its
box, area and top score, and the maximum score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mammolabel.data.labels import ImageLabels
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.io.prediction import Prediction
from mammolabel.methods.contract import Method, PredictContext, Trainer
from mammolabel.methods.tardy.network import DiscriminativeSegmenter, UNetConfig
from mammolabel.methods.tardy.options import DiscriminativeOptions, PretrainOptions
from mammolabel.methods.tardy.training import (
    DISCRIMINATIVE_STAGE,
    NAME,
    PRETRAIN_STAGE,
    frame_of,
    pretrain_reconstruction,
    train_discriminative,
)
from mammolabel.metrics import dice
from mammolabel.metrics.components import components
from mammolabel.training.checkpoint import method_fields
from mammolabel.transforms.geometry import make_frame

MALIGNANT = 1
TASK = "discriminative_segmentation"
#: Threshold of a checkpoint that stores none.
DEFAULT_THRESHOLD = 0.5
#: The ``cpu`` preset of both stages: a 256 x 160 input, widths 8-16-32-64-128 (the same in both, so that
#: stage 1's weights fit stage 2).
CPU_NETWORK = {"rows": 256, "cols": 160, "width": 8, "levels": 5}


def parse_threshold(value: Any) -> float | None:
    """A request's ``threshold``: ``auto`` (or empty, or 0) -> None (the checkpoint's), otherwise a number in (0, 1)."""
    text = str("" if value is None else value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        threshold = float(text)
    except ValueError as e:
        raise InputError(f"threshold must be 'auto' or a number in (0, 1), got {value!r}") from e
    if threshold == 0:
        return None
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie in (0, 1), got {threshold}")
    return threshold


class TardyMethod(Method):
    """Malignant-region mask from the subtraction U-Net (or its plain-head ablation)."""

    name = NAME
    task = TASK
    description = "Malignant regions: reconstruction U-Net with a subtraction layer (Tardy & Mateus)"
    labels = {"malignant": MALIGNANT}
    infer_options = {"threshold": "auto"}
    rank_key = "dice"
    trainers = (
        Trainer(PRETRAIN_STAGE, "Tardy & Mateus stage 1: restore corrupted normal/benign images (gamma, irregular "
                "in-painting, out-painting)", PretrainOptions, {**CPU_NETWORK, "epochs": 10}, pretrain_reconstruction,
                checkpoint=PRETRAIN_STAGE),
        Trainer(DISCRIMINATIVE_STAGE, "Tardy & Mateus stage 2: discriminative segmentation of malignant regions "
                "(masks in labels/final)", DiscriminativeOptions, {**CPU_NETWORK, "epochs": 30}, train_discriminative,
                checkpoint=TASK),
    )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return DiscriminativeSegmenter(UNetConfig(**checkpoint["network"]),
                                       subtraction=bool(checkpoint.get("subtraction", True)))

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        threshold = parse_threshold(context.request.get("threshold"))
        if threshold is None:
            threshold = float(checkpoint.get("thresholds", {}).get("lesion", DEFAULT_THRESHOLD))
        stored = checkpoint["frame"]
        frame = make_frame(pixels, (int(stored["rows"]), int(stored["cols"])), bool(stored["crop_breast"]))
        x = torch.from_numpy(frame.to_input(pixels))[None, None].to(context.device)  # (1, 1, h, w)
        output = network(x).float()  # O = I - U(I) (or the plain head's logits), (1, 1, h, w)
        probability = frame.to_full(network.probability(output)[0, 0])  # (rows, cols) in [0, 1]
        mask = probability >= threshold
        spacing = meta.get("spacing")
        pixel_mm2 = float(spacing[0] * spacing[1]) if spacing else None
        found = [{k: c[k] for k in ("box", "area_px", "area_mm2", "max_score")}
                 for c in components(mask, probability, spacing, score_name="score")]
        found.sort(key=lambda c: -c["max_score"])
        area = int(mask.sum())
        values = {
            "threshold": threshold,
            "max_score": round(float(probability.max()), 4),
            "area_px": area,
            "area_mm2": round(area * pixel_mm2, 2) if pixel_mm2 else None,
            "components": len(found),
            "subtraction": bool(checkpoint.get("subtraction", True)),
        }
        return Prediction(labelmap=mask.astype(np.uint8) * MALIGNANT, values=values, boxes=found, heatmap=probability)

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Dice with the ``final`` mask where there is one; hit = a lesion centre inside the predicted region."""
        row: dict[str, Any] = {"score": result["max_score"], "abnormal_score": result["max_score"],
                               "area_px": result["area_px"], "components": result["components"]}
        if record.mask_path:
            row["dice"] = dice(labelmap, read_label(record.mask_path, labelmap.shape))
        if record.points:
            rows, cols = labelmap.shape
            row["hit"] = any(labelmap[min(rows - 1, max(0, int(round(y)))), min(cols - 1, max(0, int(round(x))))] > 0
                             for x, y in record.points)
        return row

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        malignant = [r["dice"] for r in rows if r.get("finding") == "malignant" and r.get("dice") is not None]
        return {"dice_mean_malignant": float(np.mean(malignant)) if malignant else None,
                "n_malignant_with_mask": len(malignant)}

    def benchmark_network(self) -> torch.nn.Module:
        return DiscriminativeSegmenter(DiscriminativeOptions().network())

    def benchmark_checkpoint(self) -> dict[str, Any]:
        options = DiscriminativeOptions()
        module = self.benchmark_network()
        return {"model": module.state_dict(),
                **method_fields(NAME, module.config.to_dict(), frame_of(options), options.to_dict(),
                                DISCRIMINATIVE_STAGE, {"lesion": DEFAULT_THRESHOLD}, [], {}, subtraction=True,
                                pretrained_from=None)}
