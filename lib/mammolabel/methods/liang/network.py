"""Weakly-supervised self-training localization network of Liang et al. (the paper's Fig. 2).

Gongbo Liang, Xiaoqin Wang, Yu Zhang, Nathan Jacobs, "Weakly-Supervised Self-Training for Breast
Cancer Localization", EMBC 2020 (``shared/papers/liang-cam-self-training-localization.md``).

The model has the paper's three parts:

1. a classification network (section II-D): Inception-V3 (:mod:`.inception`) with every layer
   after its last Inception block removed, two 3x3 convolutions of 1024 kernels, global average
   pooling, a fully connected layer and a softmax; the class activation map (CAM, section II-B) is
   the weighted sum of the last convolution's maps with the fully connected weights of the
   positive class;
2. self-training CNNs (section II-C/D) on the outputs of the 3rd and 8th Inception blocks, each a
   3x3 convolution, a 1x1 convolution of 512 kernels and a 1x1 convolution of one kernel followed
   by a sigmoid, the second and third layers shared between the CNNs; they learn from trimaps
   (:func:`trimap`: foreground above ``t_f`` = 0.6, background below ``t_b`` = 0.1, the rest unknown);
3. at test time a softmax over the maps (CAM and self-training maps) fuses them (:func:`fuse_maps`).

An optional region mask (the breast) restricts every map: the CAM is normalised within it and
all maps are zero outside it. The paper's full-field digital images have an empty background; the
digitised films used here carry labels and scanner edges that a classifier can latch onto.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from mammolabel.methods.liang.inception import N_BLOCKS, InceptionV3Features, conv_bn

__all__ = [
    "BACKGROUND",
    "CLASSES",
    "FOREGROUND",
    "UNKNOWN",
    "LiangClassifier",
    "LiangConfig",
    "LiangNet",
    "LiangOutput",
    "POSITIVE",
    "SelfTrainingCNN",
    "fuse_maps",
    "normalise_map",
    "region_on",
    "trimap",
]

#: Trimap values: confident background, confident foreground, and unknown (ignored by the loss).
BACKGROUND, FOREGROUND, UNKNOWN = 0.0, 1.0, -1.0

#: Classes of the softmax; the CAM and the probability are those of ``POSITIVE``.
CLASSES = ("normal", "positive")
POSITIVE = 1


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), before the softmax
    maps: torch.Tensor  # (B, head_channels, H/32, W/32): the last convolution's output (CAM input)
    features: dict[int, torch.Tensor]  # intermediate feature maps F_i by 1-based Inception block


class LiangClassifier(nn.Module):
    """Classification network of section II-D: truncated Inception-V3, two 3x3 convs, GAP, FC, softmax.

    Args:
        in_channels: input channels.
        width: Inception-V3 channel scale.
        head_channels: kernels of each of the two added 3x3 convolutions (paper: 1024).
        num_classes: classes of the softmax (2: normal, positive).
        taps: 1-based Inception blocks whose outputs are returned as intermediate feature maps.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, head_channels: int = 1024, num_classes: int = 2,
                 taps: Sequence[int] = (3, 8)):
        super().__init__()
        if not all(1 <= t <= N_BLOCKS for t in taps):
            raise ValueError(f"taps must be Inception blocks 1..{N_BLOCKS}, got {list(taps)}")
        self.taps = tuple(taps)
        self.backbone = InceptionV3Features(in_channels, width)
        last = self.backbone.channels[-1]
        self.head = nn.Sequential(conv_bn(last, head_channels, 3), conv_bn(head_channels, head_channels, 3))
        self.fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        last, features = self.backbone(x, self.taps)  # (B, 2048w, H/32, W/32), {i: F_i}
        maps = self.head(last)  # two 3x3 conv layers: (B, head_channels, H/32, W/32)
        logits = self.fc(maps.mean(dim=(2, 3)))  # global average pooling, fully connected: (B, num_classes)
        return ClassifierOutput(logits, maps, features)

    def cam(self, maps: torch.Tensor, cls: int) -> torch.Tensor:
        """Class activation map of class ``cls`` (Zhou et al.): sum_k w_{cls,k} f_k -> (B, 1, h, w), unnormalised."""
        return torch.einsum("bkhw,k->bhw", maps, self.fc.weight[cls])[:, None]


class SelfTrainingCNN(nn.Module):
    """One self-training CNN (section II-D): 3x3 conv, then the shared 1x1 conv (512) and 1x1 conv (1).

    ``shared`` is the module holding the second and third layers; passing the same module to every
    CNN makes them share those weights, as in the paper. ``forward`` returns logits; the sigmoid
    of the paper is applied by :meth:`LiangNet.self_training_maps` and inside the BCE loss.
    """

    def __init__(self, in_channels: int, first_channels: int, shared: nn.Module):
        super().__init__()
        self.first = Convolution(2, in_channels, first_channels, kernel_size=3, act="RELU", norm=None)
        self.shared = shared

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.shared(self.first(feature))  # (B, 1, h_i, w_i) logits


def shared_layers(first_channels: int, shared_channels: int) -> nn.Sequential:
    """The second (1x1, ``shared_channels`` kernels) and third (1x1, one kernel) layers of the CNNs."""
    return nn.Sequential(
        Convolution(2, first_channels, shared_channels, kernel_size=1, act="RELU", norm=None),
        Convolution(2, shared_channels, 1, kernel_size=1, conv_only=True),
    )


@dataclass
class LiangConfig:
    """Sizes of :class:`LiangNet` (stored in checkpoints). Defaults are the paper's.

    The paper gives the first layers of the two self-training CNNs 288 and 768 kernels, the channel
    counts of the 3rd and 8th Inception blocks' outputs, i.e. the depth of their inputs. Because
    the next layer is shared, both first layers must output the same number of channels, which
    the paper does not state: ``first_channels`` (default 512, the shared layer's width).
    ``taps`` lists the feature blocks in self-training order, the first trained on the CAM trimap.
    """

    in_channels: int = 1
    width: float = 1.0
    head_channels: int = 1024
    taps: tuple[int, ...] = (8, 3)
    first_channels: int = 512
    shared_channels: int = 512
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.taps = tuple(int(t) for t in self.taps)  # a checkpoint stores them as a list

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``network`` settings: ``LiangConfig(**settings)`` rebuilds the network."""
        return {**asdict(self), "taps": list(self.taps)}


class LiangOutput(NamedTuple):
    """What :class:`LiangNet` returns; every map is in [0, 1]."""

    probability: torch.Tensor  # (B,) softmax probability of the positive class
    cam: torch.Tensor  # (B, 1, H/32, W/32) CAM of the positive class, min-max normalised per image
    self_training: list[torch.Tensor]  # per tap, (B, 1, H/s_i, W/s_i) sigmoid maps
    fused: torch.Tensor  # (B, 1, H/s, W/s) softmax fusion on the finest grid s among the maps
    weights: torch.Tensor  # (B, 1 + len(taps), H/s, W/s) fusion weights (sum to one per pixel)


def normalise_map(heatmap: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each (B, 1, h, w) map to [0, 1], within ``region`` (same shape, {0, 1}) if given.

    Pixels outside the region become 0; a constant map (or an empty region) becomes zeros.
    """
    inside = torch.ones_like(heatmap, dtype=torch.bool) if region is None else region > 0
    flat, keep = heatmap.flatten(1), inside.flatten(1)
    lo = torch.where(keep, flat, torch.full_like(flat, torch.inf)).min(dim=1).values
    hi = torch.where(keep, flat, torch.full_like(flat, -torch.inf)).max(dim=1).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    out = (heatmap - lo[:, None, None, None]) / scale[:, None, None, None]
    return torch.where(inside, out.clamp(0, 1), torch.zeros_like(out))


def region_on(region: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """An input-resolution (B, 1, H, W) {0, 1} region on the grid of ``like``: cells at least half inside."""
    if region is None:
        return None
    return (F.interpolate(region.float(), size=like.shape[-2:], mode="area") >= 0.5).to(like.dtype)


def trimap(heatmap: torch.Tensor, t_f: float = 0.6, t_b: float = 0.1) -> torch.Tensor:
    """Trimap of a [0, 1] heatmap (section II-C): FOREGROUND where p > t_f, BACKGROUND where p < t_b, else UNKNOWN."""
    if not 0 <= t_b <= t_f <= 1:
        raise ValueError(f"need 0 <= t_b <= t_f <= 1, got t_b={t_b}, t_f={t_f}")
    out = torch.full_like(heatmap, UNKNOWN)
    out[heatmap > t_f] = FOREGROUND
    out[heatmap < t_b] = BACKGROUND
    return out


def fuse_maps(maps: Sequence[torch.Tensor], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse [0, 1] maps with a softmax over the maps at every pixel (the paper's test stage, Fig. 2).

    Every (B, 1, h_k, w_k) map is resized (bilinear) to the largest grid; at each pixel the weights
    are ``softmax_k(m_k / temperature)`` and the fused value is ``sum_k w_k m_k``, a soft maximum
    that stays in [0, 1]. Returns the fused map (B, 1, h, w) and the weights (B, K, h, w).
    """
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    stack = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                       else m for m in maps], dim=1)  # (B, K, h, w)
    weights = torch.softmax(stack / temperature, dim=1)
    return (weights * stack).sum(dim=1, keepdim=True), weights


class LiangNet(nn.Module):
    """The full model: classification network, CAM, self-training CNNs and their fusion.

    ``forward(x, region)`` with x of shape (B, in_channels, H, W) (H, W divisible by 32) and an
    optional {0, 1} region of shape (B, 1, H, W) returns a :class:`LiangOutput`. See
    :class:`LiangConfig` for the arguments.
    """

    def __init__(self, config: LiangConfig | None = None):
        super().__init__()
        self.config = config = config or LiangConfig()
        self.classifier = LiangClassifier(config.in_channels, config.width, config.head_channels, len(CLASSES),
                                          config.taps)
        shared = shared_layers(config.first_channels, config.shared_channels)
        channels = self.classifier.backbone.channels
        self.self_training = nn.ModuleList(
            [SelfTrainingCNN(channels[t - 1], config.first_channels, shared) for t in config.taps]
        )

    def cam(self, x: torch.Tensor, region: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """Positive-class probability (B,), normalised CAM (B, 1, H/32, W/32) and the feature maps F_i."""
        out = self.classifier(x)
        probability = torch.softmax(out.logits.float(), dim=1)[:, POSITIVE]
        cam = self.classifier.cam(out.maps, POSITIVE).float()
        return probability, normalise_map(cam, region_on(region, cam)), out.features

    def self_training_maps(self, features: dict[int, torch.Tensor], region: torch.Tensor | None = None
                           ) -> list[torch.Tensor]:
        """Sigmoid maps of every self-training CNN on its feature map F_i, in ``taps`` order (0 outside ``region``)."""
        maps = [torch.sigmoid(cnn(features[t]).float()) for cnn, t in zip(self.self_training, self.config.taps)]
        return maps if region is None else [m * region_on(region, m) for m in maps]

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> LiangOutput:
        # 1) classification network: image probability, CAM heatmap, intermediate feature maps F_8, F_3
        # (B,), (B, 1, H/32, W/32), {8: (B, 768w, H/16, W/16), 3: (B, 288w, H/8, W/8)}
        probability, cam, features = self.cam(x, region)
        # 2) self-training CNNs on the intermediate feature maps
        maps = self.self_training_maps(features, region)  # [(B, 1, H/16, W/16), (B, 1, H/8, W/8)]
        # 3) test stage: softmax fusion of the CAM and the self-training maps
        fused, weights = fuse_maps([cam, *maps], self.config.temperature)  # (B, 1, H/8, W/8), (B, 3, H/8, W/8)
        if region is not None:  # the upsampled coarse maps reach across the region's edge
            fused = fused * region_on(region, fused)
        return LiangOutput(probability, cam, maps, fused, weights)
