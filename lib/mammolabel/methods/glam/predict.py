"""Running a trained GLAM on one canonical image: every module's maps, predictions and patches.

:func:`run_glam` brings the image to the checkpoint's input frame, runs the network and returns
the maps of every module trained so far, their predictions and the patch boxes in full canonical
pixels; :func:`segment` turns a saliency map into the benign/malignant labelmap and
:func:`draw_outlines` draws the patches into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mammolabel.methods.glam.network import CLASSES, GlamNet, GlamOutput
from mammolabel.transforms.geometry import Frame, make_frame

#: Every saliency map GLAM has.
MAPS = ("global", "local", "fused")
#: The module whose saliency map selects each stage's best epoch and whose prediction scores its images.
STAGE_OUTPUT = {"global": "global", "local": "local", "joint": "fused"}
#: The maps each stage's output holds.
STAGE_MAPS = {"global": ("global",), "local": MAPS, "joint": MAPS}
#: The map the infer task segments by default, after each stage.
SERVED_MAP = {"global": "global", "local": "fused", "joint": "fused"}


def stage_maps(net: GlamNet, out: GlamOutput, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The saliency maps (B, 2, H, W) at input resolution that an output holds: global, and local/fused."""
    maps = {"global": net.upsampled_global(out, size)}
    if out.local_saliency is not None:
        maps.update(local=out.local_saliency, fused=out.fused_saliency)
    return maps


def stage_predictions(out: GlamOutput) -> dict[str, torch.Tensor]:
    """The (B, 2) predictions of every module that ran."""
    predictions = {"global": out.global_prediction}
    if out.local_prediction is not None:
        predictions.update(local=out.local_prediction, fused=out.fused_prediction)
    return predictions


@dataclass
class GlamResult:
    """What :func:`run_glam` finds on one canonical image.

    Attributes:
        stage: the stage the checkpoint finished (which maps and predictions are trained).
        predictions: {module: {class: probability}} for ``global`` and, after the local stage,
            ``local`` and ``fused``.
        maps: {name: (2, h, w) input-frame saliency} for the same modules.
        patches: the selected patches, ``{"box": [x0, y0, x1, y1]}`` (inclusive, full canonical
            pixels) with ``"attention"`` under attention aggregation; empty after the global stage.
        frame: the input frame.
    """

    stage: str
    predictions: dict[str, dict[str, float]]
    maps: dict[str, np.ndarray]
    patches: list[dict[str, Any]]
    frame: Frame


def patch_box(frame: Frame, corner: tuple[int, int], patch_size: tuple[int, int]) -> list[int]:
    """Inclusive full-image box [x0, y0, x1, y1] of the input pixels ``corner`` + ``patch_size``."""
    sy, sx = frame.scale
    r, c = corner
    r0, c0 = frame.crop[0], frame.crop[1]
    return [int(math.floor(c0 + c / sx)), int(math.floor(r0 + r / sy)),
            int(math.ceil(c0 + (c + patch_size[1]) / sx)) - 1, int(math.ceil(r0 + (r + patch_size[0]) / sy)) - 1]


def run_glam(net: GlamNet, pixels: np.ndarray, stage: str, frame: dict[str, Any],
             device: str | torch.device = "cpu") -> GlamResult:
    """Run the model trained up to ``stage`` on a canonical (rows, cols) image in [0, 1].

    ``frame`` is the checkpoint's input frame (``rows``, ``cols``, ``crop_breast``).
    """
    found = make_frame(pixels, (int(frame["rows"]), int(frame["cols"])), bool(frame.get("crop_breast", True)))
    x = torch.from_numpy(found.to_input(pixels))[None, None].to(device)
    with torch.inference_mode():
        out = net(x, "global" if stage == "global" else "joint")
        maps = {k: v[0].float().cpu().numpy() for k, v in stage_maps(net, out, found.size).items()}
        predictions = {k: dict(zip(CLASSES, v[0].float().cpu().tolist())) for k, v in stage_predictions(out).items()}
    patches = []
    if out.corners is not None:
        for k, (r, c) in enumerate(out.corners[0].tolist()):
            entry: dict[str, Any] = {"box": patch_box(found, (r, c), net.config.patch_size)}
            if out.attention is not None:
                entry["attention"] = float(out.attention[0, k])
            patches.append(entry)
    return GlamResult(stage, predictions, maps, patches, found)


def segment(maps: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Labelmap (H, W) of a (2, H, W) saliency: 1 benign, 2 malignant where the map reaches the class threshold.

    Where both classes reach their thresholds the one exceeding it by the larger ratio wins.
    """
    ratios = np.stack([maps[i] / max(thresholds[c], 1e-6) for i, c in enumerate(CLASSES)])
    labels = np.argmax(ratios, axis=0).astype(np.uint8) + 1
    labels[ratios.max(axis=0) < 1] = 0
    return labels


def draw_outlines(labelmap: np.ndarray, boxes: list[list[int]], value: int, width: int) -> None:
    """Draw the outline (``width`` pixels, inside the box) of each inclusive [x0, y0, x1, y1] box."""
    for x0, y0, x1, y1 in boxes:
        labelmap[y0 : y0 + width, x0 : x1 + 1] = value
        labelmap[max(y0, y1 - width + 1) : y1 + 1, x0 : x1 + 1] = value
        labelmap[y0 : y1 + 1, x0 : x0 + width] = value
        labelmap[y0 : y1 + 1, max(x0, x1 - width + 1) : x1 + 1] = value
