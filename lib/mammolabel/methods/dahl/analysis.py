"""The paper's pipeline on one canonical image (§3.1-§3.3): risks, saliency, centre of attention, ROI.

Shared by inference (:mod:`.inference`) and the attention stage of training, which cuts its ROIs
exactly as the infer task does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mammolabel.io.orientation import body_mask
from mammolabel.methods.dahl.network import DahlClassifier, risk_score
from mammolabel.transforms.geometry import Frame, make_frame

#: The three models whose risks every answer carries.
MODELS = ("holistic", "attention", "ensemble")
#: Labelmap values of the ``classification`` task.
LABELS = {"saliency_low": 1, "saliency_medium": 2, "saliency_high": 3, "attention_roi": 4}
#: Saliency quantiles inside the breast where the low, medium and high levels start (high = top 1%,
#: the share of pixels whose centroid is the COA).
SALIENCY_LEVELS = (0.80, 0.95, 0.99)
#: Gaussian smoothing of the saliency map for display, as a fraction of the input size.
SALIENCY_SMOOTHING = 0.01


@dataclass
class Analysis:
    """The model's view of one canonical image.

    Attributes:
        frame: the Holistic model's input frame (breast crop resized to the input size).
        roi_frame: the ROI (canonical full-image pixels) resized to the Attention model's input.
        saliency: (h, w) gradient magnitude at the Holistic model's input size.
        coa: centre of attention (x, y) in canonical full-image pixels.
        holistic, attention, ensemble: risk scores (attention and ensemble None for a Holistic-only model).
    """

    frame: Frame
    roi_frame: Frame
    saliency: np.ndarray
    coa: tuple[float, float]
    holistic: float
    attention: float | None
    ensemble: float | None

    def risk(self, model: str) -> float | None:
        return getattr(self, model)

    @property
    def main(self) -> str:
        """The best model available: the Ensemble when there is an Attention model, else the Holistic."""
        return "holistic" if self.ensemble is None else "ensemble"


def network_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def analyse(model: DahlClassifier, pixels: np.ndarray) -> Analysis:
    """Run the paper's pipeline on one canonical (rows, cols) image in [0, 1] (model in eval mode)."""
    frame = make_frame(pixels, model.input_size, crop_breast=True)
    r0, c0, r1, c1 = frame.crop
    crop = torch.from_numpy(np.ascontiguousarray(pixels[r0:r1, c0:c1], dtype=np.float32))[None, None]
    with torch.no_grad():  # the saliency step records its own gradients
        out = model(crop.to(network_device(model)))
    b0, a0, b1, a1 = (int(v) for v in out.roi[0])
    roi_frame = Frame(crop=(r0 + b0, c0 + a0, r0 + b1, c0 + a1), size=(model.roi_size, model.roi_size),
                      full_shape=frame.full_shape)
    x, y = (float(v) for v in out.coa[0])

    def value(t: torch.Tensor | None) -> float | None:
        return None if t is None else float(t.reshape(-1)[0])

    return Analysis(
        frame=frame,
        roi_frame=roi_frame,
        saliency=out.saliency[0, 0].float().cpu().numpy(),
        coa=(c0 + x, r0 + y),
        holistic=value(risk_score(out.holistic)),
        attention=None if out.attention is None else value(risk_score(out.attention)),
        ensemble=value(out.ensemble),
    )


def saliency_maps(analysis: Analysis, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labelmap and heatmap of an analysed canonical image.

    The labelmap holds the smoothed saliency in three levels inside the breast (quantiles
    :data:`SALIENCY_LEVELS` of the breast's values) and the ROI outline (:data:`LABELS`); the
    heatmap is the smoothed saliency scaled to [0, 1].
    """
    sigma = SALIENCY_SMOOTHING * max(analysis.frame.size)
    smooth = ndimage.gaussian_filter(analysis.saliency.astype(np.float32), sigma)
    heat = analysis.frame.to_full(smooth / max(float(smooth.max()), 1e-12))
    mask, _ = body_mask(pixels)
    mask = torch.from_numpy(mask)[None, None].float()
    breast = F.interpolate(mask, size=pixels.shape, mode="nearest")[0, 0].numpy() > 0
    labelmap = np.zeros(pixels.shape, np.uint8)
    if breast.any():
        levels = np.quantile(heat[breast], SALIENCY_LEVELS)
        labelmap[breast] = np.digitize(heat[breast], levels).astype(np.uint8)
    r0, c0, r1, c1 = analysis.roi_frame.crop
    t = max(1, round(max(pixels.shape) / 400))
    roi = LABELS["attention_roi"]
    labelmap[r0 : r0 + t, c0:c1] = roi
    labelmap[r1 - t : r1, c0:c1] = roi
    labelmap[r0:r1, c0 : c0 + t] = roi
    labelmap[r0:r1, c1 - t : c1] = roi
    return labelmap, heat
