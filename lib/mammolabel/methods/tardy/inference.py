"""Tardy & Mateus's discriminative-reconstruction segmentation as MammoLabel tasks.

Infer ``discriminative_segmentation``: the malignancy map ``O = I - U(I)`` of the whole
(breast-cropped) image, thresholded into a labelmap (1 = malignant region); the JSON gives the
area, each connected component with its box, area and top score, and the maximum score.
Train ``pretrain_reconstruction`` (self-supervised, normal/benign images) and
``train_discriminative`` (malignant images with masks, initialised from the former when present).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.methods.tardy.training import (
    DISCRIMINATIVE_STAGE,
    PRETRAIN_STAGE,
    parse_threshold,
    pretrain_reconstruction,
    stage_options,
    train_discriminative,
)
from mammolabel.errors import InputError
from mammolabel.io import read_label
from mammolabel.metrics import dice
from mammolabel.methods.tardy.network import DiscriminativeSegmenter, UNetConfig
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask
from mammolabel.transforms.geometry import make_frame

MALIGNANT = 1
CHECKPOINT = "discriminative_segmentation"
#: Options both train tasks take: the paper's input size; our default widths (the paper gives none;
#: 16 channels at full resolution keep a 1536 x 1536 forward pass to a few seconds on a CPU).
NETWORK_DEFAULTS: dict[str, Any] = {"size": "1536x1536", "features": "16,32,64,128,256", "removed_long_skips": 1,
                                    "crop_breast": True, "batch_size": 4, "lr": 1e-3}


def components(probability: np.ndarray, mask: np.ndarray, pixel_mm2: float | None) -> list[dict[str, Any]]:
    """Each 8-connected component of ``mask``: inclusive box [x0, y0, x1, y1], area and top score."""
    labelled, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    found = []
    for index, sl in enumerate(ndimage.find_objects(labelled), start=1):
        if sl is None:
            continue
        inside = labelled[sl] == index
        area = int(inside.sum())
        found.append({
            "box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)],
            "area_px": area,
            "area_mm2": round(area * pixel_mm2, 2) if pixel_mm2 else None,
            "max_score": round(float(probability[sl][inside].max()), 4),
        })
    return sorted(found, key=lambda c: -c["max_score"])


class DiscriminativeSegmentationInfer(MammoInferTask):
    """Malignant-region mask from the subtraction U-Net (or its plain-head ablation)."""

    name = CHECKPOINT
    train_task = DISCRIMINATIVE_STAGE
    rank_key = "dice"

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(
            path=path,
            labels={"malignant": MALIGNANT},
            description="Malignant regions: reconstruction U-Net with a subtraction layer (Tardy & Mateus)",
            config={"threshold": "auto", **(config or {})},
        )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return DiscriminativeSegmenter(UNetConfig(**checkpoint["network"]), subtraction=bool(checkpoint["subtraction"]))

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        device = str(data.get("device") or "cpu")
        network, ckpt = self.load(device)
        threshold = parse_threshold(str(data.get("threshold") or "auto")) or float(ckpt.get("threshold", 0.5))
        pixels = image[0].cpu().numpy()
        frame = make_frame(pixels, tuple(ckpt["size"]), bool(ckpt["crop_breast"]))
        x = torch.from_numpy(frame.to_input(pixels))[None, None].to(device)  # (1, 1, h, w)
        output = network(x).float()  # O = I - U(I) (or the plain head's logits), (1, 1, h, w)
        probability = frame.to_full(network.probability(output)[0, 0])  # (rows, cols) in [0, 1]
        mask = probability >= threshold
        spacing = meta.get("spacing")
        pixel_mm2 = float(spacing[0] * spacing[1]) if spacing else None
        found = components(probability, mask, pixel_mm2)
        area = int(mask.sum())
        values = {
            "threshold": threshold,
            "max_score": round(float(probability.max()), 4),
            "area_px": area,
            "area_mm2": round(area * pixel_mm2, 2) if pixel_mm2 else None,
            "components": len(found),
            "subtraction": bool(ckpt["subtraction"]),
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

    @classmethod
    def benchmark_module(cls) -> torch.nn.Module:
        return DiscriminativeSegmenter(UNetConfig(features=[int(f) for f in NETWORK_DEFAULTS["features"].split(",")]))

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        module = cls.benchmark_module()
        size = [int(s) for s in NETWORK_DEFAULTS["size"].split("x")]
        save_checkpoint(Path(model_dir) / f"{CHECKPOINT}.pt", module, stage=DISCRIMINATIVE_STAGE,
                        network=module.config.to_dict(), subtraction=True, size=size, crop_breast=True, threshold=0.5)


class PretrainReconstructionTrain(MammoTrainTask):
    """Stage 1: self-supervised reconstruction on normal/benign (or unlabelled) images."""

    name = PRETRAIN_STAGE
    checkpoint_name = PRETRAIN_STAGE
    defaults = {**NETWORK_DEFAULTS, "epochs": 20, "gamma_prob": 0.9, "paint_prob": 0.9, "inpaint_rate": 0.2}
    cpu_preset = {"size": "256x160", "features": "8,16,32,64,128", "epochs": 10}

    def __init__(self, model_dir: str | Path, description: str = "Tardy & Mateus stage 1: restore corrupted normal/"
                 "benign images (gamma, irregular in-painting, out-painting)",
                 defaults: dict[str, Any] | None = None, shipped: str | Path | None = None):
        super().__init__(model_dir, description, defaults, shipped)

    def check(self, options: dict[str, Any]) -> None:
        stage_options(options)

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        return pretrain_reconstruction(inventory, options, out)


class TrainDiscriminativeTrain(MammoTrainTask):
    """Stage 2: subtraction U-Net on malignant masks, from the stage-1 checkpoint when there is one."""

    name = DISCRIMINATIVE_STAGE
    checkpoint_name = CHECKPOINT
    defaults = {**NETWORK_DEFAULTS, "epochs": 40, "pretrained": "auto", "no_subtraction": False, "mse_weight": 1.0,
                "threshold": "auto"}
    #: 256 x 160 input, widths 8-16-32-64-128 (the stage-1 preset, so that its weights fit).
    cpu_preset = {"size": "256x160", "features": "8,16,32,64,128", "epochs": 30}

    def __init__(self, model_dir: str | Path, description: str = "Tardy & Mateus stage 2: discriminative "
                 "segmentation of malignant regions (masks in labels/final)",
                 defaults: dict[str, Any] | None = None, shipped: str | Path | None = None):
        super().__init__(model_dir, description, defaults, shipped)

    def check(self, options: dict[str, Any]) -> None:
        stage_options(options)
        parse_threshold(options["threshold"])
        if options["mse_weight"] < 0:
            raise InputError("option 'mse_weight' must be non-negative")

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        if options["mse_weight"] < 0:
            raise InputError("option 'mse_weight' must be non-negative")
        return train_discriminative(inventory, options, out, model_dir=self.model_dir)
