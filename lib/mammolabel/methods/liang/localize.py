"""Inference of Liang et al. on one canonical image: maps, lesion points and the labelmap.

:func:`localize` brings a canonical image to the input frame, runs the network, takes the local
maxima of the fused map above a threshold as lesion points and maps every point back to the full
canonical image; :func:`render_labelmap` draws the points and heatmap levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.draw import disk
from skimage.feature import peak_local_max

from mammolabel.methods.liang.data import breast_region
from mammolabel.methods.liang.network import LiangNet
from mammolabel.methods.liang.options import LiangOptions
from mammolabel.transforms.geometry import Frame, make_frame


@dataclass
class Localization:
    """What :func:`localize` finds on one canonical image.

    Attributes:
        probability: positive-class probability of the image.
        maps: input-frame (h, w) maps in [0, 1]: ``cam``, ``self_training_block<i>`` and ``fused``.
        points: local maxima of the fused map, ``{"x", "y", "score"}`` in full canonical pixels.
        peaks: for every map its maximum, ``{"x", "y", "score"}`` in full canonical pixels.
        frame: the input frame (crop and size) the maps live in.
    """

    probability: float
    maps: dict[str, np.ndarray]
    points: list[dict[str, float]]
    peaks: dict[str, dict[str, float]]
    frame: Frame


def map_points(heat: np.ndarray, frame: Frame, threshold: float, max_points: int,
               min_distance: int) -> list[dict[str, float]]:
    """Local maxima of an input-frame map above ``threshold`` (best first), as full canonical points."""
    peaks = peak_local_max(heat, min_distance=max(1, min_distance), threshold_abs=threshold, exclude_border=False)
    ranked = sorted(((float(heat[r, c]), int(c), int(r)) for r, c in peaks), reverse=True)[:max_points]
    return [_full_point(frame, x, y, score) for score, x, y in ranked]


def _full_point(frame: Frame, x: int, y: int, score: float) -> dict[str, float]:
    fx, fy = frame.point_to_full(x, y)
    return {"x": fx, "y": fy, "score": score}


def localize(net: LiangNet, pixels: np.ndarray, options: LiangOptions,
             device: str | torch.device = "cpu") -> Localization:
    """Run the model on a canonical (rows, cols) image in [0, 1] and find the lesion points."""
    frame = make_frame(pixels, (options.size, options.size), options.crop_breast)
    image = frame.to_input(pixels)
    region = breast_region(image) if options.breast_only else np.ones_like(image)
    x, region_t = (torch.from_numpy(a)[None, None].to(device) for a in (image * region, region))
    with torch.inference_mode():
        out = net(x, region_t)
    names = ["cam", *(f"self_training_block{t}" for t in net.config.taps), "fused"]
    maps = {name: F.interpolate(m.float(), size=frame.size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            for name, m in zip(names, [out.cam, *out.self_training, out.fused])}
    peaks = {}
    for name, heat in maps.items():
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peaks[name] = _full_point(frame, int(x), int(y), float(heat[y, x]))
    points = map_points(maps["fused"], frame, options.point_threshold, options.max_points,
                        int(round(options.peak_distance * options.size)))
    return Localization(float(out.probability[0]), maps, points, peaks, frame)


def render_labelmap(heat: np.ndarray, points: list[dict[str, float]], levels: list[float], radius: float) -> np.ndarray:
    """uint8 labelmap: heat levels as labels 2, 3... (``heat >= levels[i]``), then a disk (label 1) per point."""
    labelmap = np.zeros(heat.shape, np.uint8)
    for i, level in enumerate(levels):
        labelmap[heat >= level] = 2 + i
    for p in points:
        rr, cc = disk((p["y"], p["x"]), radius, shape=heat.shape)
        labelmap[rr, cc] = 1
    return labelmap
