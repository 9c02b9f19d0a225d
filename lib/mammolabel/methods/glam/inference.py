"""Tasks of GLAM (Liu et al.): infer ``glam_segmentation``, train ``train_glam``.

The labelmap holds the benign (1) and malignant (2) segmentation at the image's full resolution,
thresholded from a saliency map (the fused map by default; the global map after the global stage
alone) with the per-class thresholds chosen on validation and stored in the checkpoint, and the
outline of every selected patch (3). The JSON result gives the benign and malignant
probabilities (and those of each module), the patches and one box per segmented component.

Request options: ``saliency`` (``global``, ``local`` or ``fused``), ``threshold_benign`` and
``threshold_malignant`` (override the stored thresholds). Evaluation scores the labelmap (``dice``)
and, for the paper's comparison, each map at its own threshold (``dice_global``, ``dice_local``,
``dice_fused``), splitting lesions into small and large by ``small_radius_px``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.methods.glam.training import (
    SERVED_MAP,
    STAGE_MAPS,
    STAGE_OUTPUT,
    GlamOptions,
    run_glam,
    segment,
    train_glam,
)
from mammolabel.errors import InputError
from mammolabel.io import boxes_from_canonical, canonicalise, from_canonical, read_label, read_mammogram
from mammolabel.metrics import dice
from mammolabel.methods.glam.network import CLASSES, GlamConfig, GlamInference, GlamNet
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask

BENIGN, MALIGNANT, PATCH = 1, 2, 3
LABELS = {"benign": BENIGN, "malignant": MALIGNANT, "patch": PATCH}
MAPS = ("global", "local", "fused")


def components(labels: np.ndarray, saliency: np.ndarray) -> list[dict[str, Any]]:
    """One entry per 8-connected component of each class: inclusive box, class, saliency mean and max, area."""
    found = []
    for i, name in enumerate(CLASSES):
        parts, _ = ndimage.label(labels == i + 1, structure=np.ones((3, 3)))
        for index, sl in enumerate(ndimage.find_objects(parts), start=1):
            inside = parts[sl] == index
            values = saliency[i][sl][inside]
            cy, cx = ndimage.center_of_mass(inside)
            found.append({"box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)],
                          "label": name, "mean_saliency": round(float(values.mean()), 4),
                          "max_saliency": round(float(values.max()), 4), "area_px": int(inside.sum()),
                          "centre": [float(sl[1].start + cx), float(sl[0].start + cy)]})
    return sorted(found, key=lambda c: -c["mean_saliency"])


def draw_outlines(labelmap: np.ndarray, boxes: list[list[int]], value: int, width: int) -> None:
    """Draw the outline (``width`` pixels, inside the box) of each inclusive [x0, y0, x1, y1] box."""
    for x0, y0, x1, y1 in boxes:
        labelmap[y0 : y0 + width, x0 : x1 + 1] = value
        labelmap[max(y0, y1 - width + 1) : y1 + 1, x0 : x1 + 1] = value
        labelmap[y0 : y1 + 1, x0 : x0 + width] = value
        labelmap[y0 : y1 + 1, max(x0, x1 - width + 1) : x1 + 1] = value


def equivalent_radius(mask: np.ndarray) -> float:
    """Radius of the disk with the area of the largest 8-connected component of ``mask``."""
    parts, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return 0.0
    return float(np.sqrt(np.bincount(parts.ravel())[1:].max() / np.pi))


class GlamSegmentationInfer(MammoInferTask):
    """Benign and malignant segmentation at full resolution from image labels (GLAM, Liu et al.)."""

    name = "glam_segmentation"
    train_task = "train_glam"
    rank_key = "dice"

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(
            path=path,
            labels=dict(LABELS),
            description="Benign/malignant segmentation at full resolution from image-level labels "
                        "(GLAM, Liu et al.: global module, patch selection, local module, fusion)",
            config=config,
        )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return GlamNet(GlamConfig.from_dict(checkpoint["config"]))

    def _device(self, data: dict[str, Any]) -> str:
        device = str(data.get("device") or "cpu")
        return "cpu" if device.startswith("cuda") and not torch.cuda.is_available() else device

    def full_maps(self, pixels: np.ndarray, data: dict[str, Any]) -> tuple[dict[str, np.ndarray], Any, dict]:
        """Every trained map at the canonical image's full resolution ({name: (2, rows, cols)}), the result, the checkpoint.

        The maps are input-frame maps resized into the breast crop (zero outside it).
        """
        net, ckpt = self.load(self._device(data))
        found = run_glam(net, pixels, ckpt["stage"], GlamOptions.from_mapping(ckpt["options"]), self._device(data))
        maps = {name: np.stack([found.frame.to_full(channel) for channel in m]) for name, m in found.maps.items()}
        return maps, found, ckpt

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        pixels = image[0].cpu().numpy()
        maps, found, ckpt = self.full_maps(pixels, data)
        stage = ckpt["stage"]
        saliency = str(data.get("saliency") or SERVED_MAP[stage])
        if saliency not in maps:
            raise InputError(f"saliency must be one of {', '.join(STAGE_MAPS[stage])} for a model trained up to the "
                             f"'{stage}' stage, got {saliency!r}")
        thresholds = {}
        for c in CLASSES:
            value = data.get(f"threshold_{c}", ckpt["thresholds"][saliency][c]["threshold"])
            try:
                thresholds[c] = float(value)
            except (TypeError, ValueError) as e:
                raise InputError(f"threshold_{c} must be a number in (0, 1), got {value!r}") from e
            if not 0 < thresholds[c] < 1:
                raise InputError(f"threshold_{c} must lie in (0, 1), got {thresholds[c]}")

        chosen = maps[saliency]
        labelmap = np.zeros(pixels.shape, np.uint8)
        draw_outlines(labelmap, [p["box"] for p in found.patches], PATCH, max(1, round(max(pixels.shape) / 512)))
        labels = segment(chosen, thresholds)
        labelmap[labels > 0] = labels[labels > 0]
        parts = components(labels, chosen)
        flipped, width = bool(meta.get("flipped")), pixels.shape[1]
        patch_boxes = boxes_from_canonical([p["box"] for p in found.patches], flipped, width)
        final = STAGE_OUTPUT[stage]
        values = {
            "probabilities": {c: round(found.predictions[final][c], 5) for c in CLASSES},
            "module_probabilities": {k: {c: round(v, 5) for c, v in p.items()} for k, p in found.predictions.items()},
            "stage": stage,
            "saliency": saliency,
            "thresholds": thresholds,
            "patches": [dict(p, box=[int(v) for v in b]) for p, b in zip(found.patches, patch_boxes)],
            "components": len(parts),
            "segmented_area_px": {c: int((labels == i + 1).sum()) for i, c in enumerate(CLASSES)},
            "input_size": list(found.frame.size),
        }
        boxes = [{k: v for k, v in p.items() if k != "centre"} for p in parts]
        points = [{"x": p["centre"][0], "y": p["centre"][1], "score": p["mean_saliency"], "label": p["label"]}
                  for p in parts]
        return Prediction(labelmap=labelmap, values=values, points=points, boxes=boxes, heatmap=chosen.max(axis=0))

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Dice of the labelmap's label for the image's finding, and of each map at its own threshold.

        ``hit``: a component centre lies in the lesion mask; ``patch_cover``: the share of the mask
        inside the selected patches; ``small``: equivalent lesion radius below ``small_radius_px``.
        """
        probabilities = result["probabilities"]
        row: dict[str, Any] = {"score": probabilities["malignant"], "abnormal_score": max(probabilities.values()),
                               "benign_score": probabilities["benign"]}
        if record.finding == "normal":
            row["false_positive"] = bool(((labelmap == BENIGN) | (labelmap == MALIGNANT)).any())
        if record.finding not in CLASSES or not record.mask_path:
            return row
        c = CLASSES.index(record.finding)
        truth = read_label(record.mask_path, labelmap.shape) > 0
        row["dice"] = dice(labelmap == c + 1, truth) or 0.0
        image = canonicalise(read_mammogram(record.image_path), record.laterality)
        maps, _, ckpt = self.full_maps(image.pixels, {})
        for name, m in maps.items():
            threshold = ckpt["thresholds"][name][CLASSES[c]]["threshold"]
            predicted = from_canonical(m[c] >= threshold, bool(image.meta["flipped"]))
            row[f"dice_{name}"] = dice(predicted, truth) or 0.0
        radius = equivalent_radius(truth)
        covered = np.zeros(truth.shape, bool)
        for p in result["patches"]:
            x0, y0, x1, y1 = p["box"]
            covered[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
        rows, cols = truth.shape
        row.update(
            lesion_radius_px=radius,
            small=radius < float(ckpt["options"]["small_radius_px"]),
            patch_cover=float((covered & truth).sum() / max(1, truth.sum())) if result["patches"] else None,
            hit=any(truth[min(rows - 1, int(round(p["y"]))), min(cols - 1, int(round(p["x"])))]
                    for p in result["points"]),
        )
        return row

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Dice of each map on small and large lesions, and where the local/fused map beats the global one."""
        scored = [r for r in rows if "dice_global" in r]
        out: dict[str, Any] = {}
        for group, members in (("all", scored), ("small", [r for r in scored if r["small"]]),
                               ("large", [r for r in scored if not r["small"]])):
            out[f"n_{group}"] = len(members)
            for name in MAPS:
                values = [r[f"dice_{name}"] for r in members if f"dice_{name}" in r]
                out[f"dice_{name}_{group}"] = float(np.mean(values)) if values else None
            with_local = [r for r in members if "dice_local" in r]
            out[f"local_beats_global_{group}"] = sum(r["dice_local"] > r["dice_global"] for r in with_local)
            out[f"fused_beats_global_{group}"] = sum(r["dice_fused"] > r["dice_global"] for r in with_local)
            out[f"global_wins_{group}"] = [r["image_id"] for r in with_local
                                           if r["dice_global"] > max(r["dice_local"], r["dice_fused"])]
        covers = [r["patch_cover"] for r in scored if r.get("patch_cover") is not None]
        normals = [r["false_positive"] for r in rows if "false_positive" in r]
        out["patch_cover_mean"] = float(np.mean(covers)) if covers else None
        out["normal_false_positive_rate"] = float(np.mean(normals)) if normals else None
        return out

    @classmethod
    def benchmark_options(cls) -> GlamOptions:
        """The paper's network at its 2944 x 1920 input (K = 3 patches of 512 x 512)."""
        return GlamOptions()

    @classmethod
    def benchmark_module(cls) -> torch.nn.Module:
        return GlamInference(GlamNet(cls.benchmark_options().network_config()))

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        options = cls.benchmark_options()
        net = GlamNet(options.network_config())
        thresholds = {m: {c: {"threshold": 0.5, "dice": None, "n": 0} for c in CLASSES} for m in MAPS}
        save_checkpoint(Path(model_dir) / f"{cls.name}.pt", net, config=net.config.to_dict(), options=asdict(options),
                        stage="joint", thresholds=thresholds, val_images=[])


class TrainGlam(MammoTrainTask):
    """GLAM's three training stages (global, local, joint) from image-level findings (options: :class:`GlamOptions`)."""

    name = "train_glam"
    checkpoint_name = GlamSegmentationInfer.name
    defaults = {k: v for k, v in asdict(GlamOptions()).items()
                if k not in ("epochs", "device", "val_fraction", "seed", "resume")}  # those five come from the base
    #: 512 x 320 input, K = 3 patches of 96 x 96, local ResNet-18 of width 16.
    cpu_preset = {"rows": 512, "cols": 320, "patch_size": 96, "local_width": 16, "local_depth": 18, "epochs": 12,
                  "local_epochs": 6, "joint_epochs": 4, "batch_size": 8}

    def __init__(self, model_dir: str | Path, description: str = "Train GLAM (Liu et al.): global, local and joint "
                 "stages from image-level findings",
                 defaults: dict[str, Any] | None = None, shipped: str | Path | None = None):
        super().__init__(model_dir, description, defaults, shipped)

    def check(self, options: dict[str, Any]) -> None:
        GlamOptions.from_mapping(options)

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        return train_glam(inventory, GlamOptions.from_mapping(options), out)
