"""GLAM (Liu et al.) as a :class:`~mammolabel.methods.contract.Method`: infer ``glam_segmentation``, train ``train_glam``.

The labelmap holds the benign (1) and malignant (2) segmentation at the image's full resolution,
thresholded from a saliency map (the fused map by default; the global map after the global stage
alone) with the per-class thresholds chosen on validation and stored in the checkpoint, and the
outline of every selected patch (3). The JSON result gives the benign and malignant
probabilities (and those of each module), the patches and one box per segmented component.

Request options: ``saliency`` (``global``, ``local`` or ``fused``), ``threshold_benign`` and
``threshold_malignant`` (override the stored thresholds; empty: the stored ones). Evaluation scores
the labelmap (``dice``) and, for the paper's comparison, each map at its own threshold
(``dice_global``, ``dice_local``, ``dice_fused``), splitting lesions into small and large by
``small_radius_px``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mammolabel.data.labels import ImageLabels
from mammolabel.errors import InputError
from mammolabel.io import boxes_from_canonical, canonicalise, from_canonical, read_label, read_mammogram
from mammolabel.io.prediction import Prediction
from mammolabel.methods.contract import Method, PredictContext, Trainer
from mammolabel.methods.dahl.patches import PATCH_TRAINER
from mammolabel.methods.glam.network import CLASSES, GlamConfig, GlamInference, GlamNet
from mammolabel.methods.glam.options import GlamOptions
from mammolabel.methods.glam.predict import MAPS, SERVED_MAP, STAGE_MAPS, STAGE_OUTPUT, draw_outlines, run_glam, segment
from mammolabel.methods.glam.training import NAME, train_glam
from mammolabel.metrics import dice
from mammolabel.metrics.components import components, largest_radius
from mammolabel.training.checkpoint import method_fields

BENIGN, MALIGNANT, PATCH = 1, 2, 3
LABELS = {"benign": BENIGN, "malignant": MALIGNANT, "patch": PATCH}


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class _MapMasks:
    """Each map of the last prediction thresholded at its own stored threshold (canonical, (2, rows, cols) bool),
    kept for :meth:`GlamMethod.score`, whose contract gives it no network."""

    digest: str
    masks: dict[str, np.ndarray]
    small_radius_px: float


def _threshold(request: dict[str, Any], name: str, stored: float) -> float:
    value = request.get(f"threshold_{name}")
    if value is None or value == "":
        return float(stored)
    try:
        threshold = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"threshold_{name} must be a number in (0, 1), got {value!r}") from e
    if not 0 < threshold < 1:
        raise InputError(f"threshold_{name} must lie in (0, 1), got {threshold}")
    return threshold


class GlamMethod(Method):
    """Benign and malignant segmentation at full resolution from image labels (GLAM, Liu et al.)."""

    name = NAME
    task = "glam_segmentation"
    description = ("Benign/malignant segmentation at full resolution from image-level labels "
                   "(GLAM, Liu et al.: global module, patch selection, local module, fusion)")
    labels = LABELS
    infer_options = {"saliency": "", "threshold_benign": "", "threshold_malignant": ""}
    rank_key = "dice"
    trainers = (PATCH_TRAINER, Trainer(
        name="train_glam",
        description="Train GLAM (Liu et al.): global, local and joint stages from image-level findings",
        options=GlamOptions,
        # 512 x 320 input, K = 3 patches of 96 x 96, local ResNet-18 of width 16.
        cpu_preset={"rows": 512, "cols": 320, "patch_size": 96, "local_width": 16, "local_depth": 18, "epochs": 12,
                    "local_epochs": 6, "joint_epochs": 4, "batch_size": 8},
        run=train_glam,
    ),)

    def __init__(self) -> None:
        self._last: _MapMasks | None = None

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return GlamNet(GlamConfig(**checkpoint["network"]))

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        stage = checkpoint["stage"]
        found = run_glam(network, pixels, stage, checkpoint["frame"], context.device)
        maps = {name: np.stack([found.frame.to_full(channel) for channel in m]) for name, m in found.maps.items()}
        stored = checkpoint["thresholds"]
        self._last = _MapMasks(_digest(pixels), {
            name: np.stack([m[i] >= stored[name][c]["threshold"] for i, c in enumerate(CLASSES)])
            for name, m in maps.items()}, float(checkpoint["options"].get("small_radius_px", 30.0)))
        request = context.request
        saliency = str(request.get("saliency") or SERVED_MAP[stage])
        if saliency not in maps:
            raise InputError(f"saliency must be one of {', '.join(STAGE_MAPS[stage])} for a model trained up to the "
                             f"'{stage}' stage, got {saliency!r}")
        thresholds = {c: _threshold(request, c, stored[saliency][c]["threshold"]) for c in CLASSES}

        chosen = maps[saliency]
        labelmap = np.zeros(pixels.shape, np.uint8)
        draw_outlines(labelmap, [p["box"] for p in found.patches], PATCH, max(1, round(max(pixels.shape) / 512)))
        labels = segment(chosen, thresholds)
        labelmap[labels > 0] = labels[labels > 0]
        parts = sorted((
            {"box": p["box"], "label": c, "mean_saliency": p["mean_saliency"], "max_saliency": p["max_saliency"],
             "area_px": p["area_px"], "centre": p["centre"]}
            for i, c in enumerate(CLASSES) for p in components(labels == i + 1, chosen[i], score_name="saliency")),
            key=lambda p: -p["mean_saliency"])
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
        The maps are those of the prediction of this image just made (the contract hands no network here).
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
        last = self._last
        if last is None or last.digest != _digest(image.pixels):
            raise InputError(f"glam_segmentation: {record.image_id} is scored only right after its prediction")
        for name, masks in last.masks.items():
            row[f"dice_{name}"] = dice(from_canonical(masks[c], bool(image.meta["flipped"])), truth) or 0.0
        radius = largest_radius(truth)
        covered = np.zeros(truth.shape, bool)
        for p in result["patches"]:
            x0, y0, x1, y1 = p["box"]
            covered[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
        rows, cols = truth.shape
        row.update(
            lesion_radius_px=radius,
            small=radius < last.small_radius_px,
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

    def benchmark_network(self) -> torch.nn.Module:
        """The paper's network at its 2944 x 1920 input (K = 3 patches of 512 x 512)."""
        return GlamInference(GlamNet(GlamOptions().network_config()))

    def benchmark_checkpoint(self) -> dict[str, Any]:
        options = GlamOptions()
        net = GlamNet(options.network_config())
        thresholds = {m: {c: {"threshold": 0.5, "dice": None, "n": 0} for c in CLASSES} for m in MAPS}
        return {"model": net.state_dict(), **method_fields(NAME, asdict(net.config), options.frame(),
                                                           options.to_dict(), "joint", thresholds, [], {})}
