"""Liang et al. as a :class:`~mammolabel.methods.contract.Method`: infer task ``localization``, train task
``train_cam_self_training``.

The infer task answers with a labelmap (a small disk per predicted lesion point, label 1, and the
fused heatmap in levels, labels 2-4) and a JSON result with the points and their scores in the
image's own coordinates, the image probability, the positive findings the checkpoint learnt
(``positive``, which calibration reads) and the maximum of every map. Evaluation scores the best
point of the fused map and of the CAM alone against the lesion circles and boxes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mammolabel.data.labels import ImageLabels
from mammolabel.io import points_from_canonical
from mammolabel.io.prediction import Prediction
from mammolabel.methods.contract import Method, PredictContext, Trainer
from mammolabel.methods.liang.localize import localize, render_labelmap
from mammolabel.methods.liang.network import LiangConfig, LiangNet
from mammolabel.methods.liang.options import NAME, LiangOptions, stored_options
from mammolabel.methods.liang.training import train_liang
from mammolabel.metrics import point_hits
from mammolabel.training.checkpoint import method_fields

#: Labelmap values.
LABELS = {"lesion_point": 1, "heat_low": 2, "heat_mid": 3, "heat_high": 4}

#: Hit tolerance: the paper's 12 px at 832 px from 3328 x 4096 images of about 70 um pixels
#: (Hologic), i.e. 12 x 4.46 x 0.07 mm.
TOLERANCE_MM = 3.7
#: Pixel spacing assumed when neither the file nor the image info gives one: the MIAS mini films' (200 um).
FALLBACK_SPACING_MM = 0.2

#: Inception width 0.25 at 256 x 256, 64-kernel head, 128-channel self-training layers (under 9 MB in float32).
CPU_PRESET = {"size": 256, "width": 0.25, "head_channels": 64, "first_channels": 128, "shared_channels": 128,
              "epochs": 12, "self_training_epochs": 6}


class LiangMethod(Method):
    """Suspected lesion points and heatmap from the CAM + self-training model (image labels only)."""

    name = NAME
    task = "localization"
    description = "Lesion points and heatmap (Liang et al.: CAM + recursive self-training, image labels only)"
    labels = LABELS
    infer_options: dict[str, Any] = {}
    rank_key = "neg_distance_px"
    trainers = (
        Trainer("train_cam_self_training", "Train the CAM + self-training lesion localizer (Liang et al.) from "
                "image-level findings", LiangOptions, CPU_PRESET, train_liang, "localization"),
    )

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return LiangNet(LiangConfig(**checkpoint["network"]))

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        options = stored_options(checkpoint["options"])
        found = localize(network, pixels, options, context.device)
        heat = found.frame.to_full(found.maps["fused"])
        radius = max(2.0, 0.006 * max(pixels.shape))
        labelmap = render_labelmap(heat, found.points, options.levels(), radius)
        flipped, width = bool(meta.get("flipped")), pixels.shape[1]
        peaks = {}
        for name, p in found.peaks.items():  # the task maps ``points`` back; these are mapped here
            (x, y), = points_from_canonical([(p["x"], p["y"])], flipped, width)
            peaks[name] = {"x": x, "y": y, "score": p["score"]}
        values = {
            "probability": found.probability,
            "positive": options.positive,
            "peaks": peaks,
            "heat_levels": options.levels(),
            "point_threshold": options.point_threshold,
            "input_size": list(found.frame.size),
        }
        return Prediction(labelmap=labelmap, values=values, points=found.points, heatmap=heat)

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Hit of the best point of each map (fused first) against the lesion circles/boxes, with tolerance.

        ``hit`` is the fused map's; ``hit_cam`` the CAM's alone; ``hit_any`` whether any returned
        point hits; ``neg_distance_px`` is minus the distance from the fused point to the nearest lesion
        centre (it orders the evaluation pictures). Images without a located lesion have no hit
        (they still give AUC scores).
        """
        row: dict[str, Any] = {"score": result["probability"], "abnormal_score": result["probability"]}
        if not record.points:
            return row
        spacing = result.get("spacing")
        spacing_mm = float(np.mean(spacing)) if spacing else (record.spacing_mm or FALLBACK_SPACING_MM)
        tolerance = TOLERANCE_MM / spacing_mm
        radii = record.radii if len(record.radii) == len(record.points) else [0.0] * len(record.points)
        circles = [(x, y, r) for (x, y), r in zip(record.points, radii)]

        def hits(p: dict[str, float]) -> bool:
            return point_hits((p["x"], p["y"]), boxes=record.boxes, circles=circles, tolerance=tolerance)

        fused = result["peaks"]["fused"]
        row.update({f"hit_{name}": hits(p) for name, p in result["peaks"].items() if name != "fused"})
        row.update(
            hit=hits(fused),
            hit_any=any(hits(p) for p in result["points"]),
            neg_distance_px=-min(float(np.hypot(fused["x"] - x, fused["y"] - y)) for x, y in record.points),
            tolerance_px=tolerance,
            n_points=len(result["points"]),
        )
        return row

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Hit rate of every map's best point (``hit_rate_fused`` = ``hit_rate``) on the located lesions."""
        located = [r for r in rows if r.get("hit") is not None]
        names = sorted({k[4:] for r in located for k in r if k.startswith("hit_")})
        rates = {f"hit_rate_{n}": float(np.mean([r[f"hit_{n}"] for r in located])) if located else None for n in names}
        fused = float(np.mean([r["hit"] for r in located])) if located else None
        return {"n_located": len(located), "hit_rate_fused": fused, **rates}

    def benchmark_network(self) -> torch.nn.Module:
        """The paper's configuration (832 x 832 input, full Inception-V3 width, 1024-kernel head)."""
        return LiangNet(LiangOptions().network_config())

    def benchmark_checkpoint(self) -> dict[str, Any]:
        options = LiangOptions()
        net = LiangNet(options.network_config())
        stage = f"self_training_block{net.config.taps[-1]}"
        return {"model": net.state_dict(), **method_fields(NAME, net.config.to_dict(), options.frame(),
                                                          options.to_dict(), stage, {}, [], {})}
