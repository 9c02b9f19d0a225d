"""Hybrid strong/weak mass segmentation network of Xiong et al.

Xinyu Xiong, Churan Wang, Wenxue Li, Guanbin Li, "Semi- and weakly-supervised learning for
mammogram mass segmentation with limited annotations" (ISBI 2024;
``shared/papers/xiong-hybrid-strong-weak-segmentation.md``).

The framework (paper Fig. 2) has a shared ResNet-34 encoder ``Enc_s`` and two U-Net decoders:
the auxiliary background decoder ``Dec_a``, supervised by reversed box masks (1 = definite
background), and the segmentation decoder ``Dec_s``, supervised by pixel masks (Sec. 2.1,
task-level disentanglement). The encoder features are split along channels into lesion-related
``f_r`` and other ``f_o`` features, each taken back to full width by its own 1x1 convolution
(Sec. 2.2, feature-level disentanglement); ``f_o`` feeds ``Dec_a`` and ``f_r`` feeds ``Dec_s``.
The spatial prompting module reverses the background prediction into an uncertainty map and
multiplies it with ``f_r`` before ``Dec_s`` (Sec. 2.3).

Choices the paper leaves open, made here: the U-Net decoders take the encoder's five scales
(strides 2 to 32: the stem and the four ResNet stages) with nearest-neighbour upsampling and two
3x3 conv-BN-ReLU per block; disentanglement and prompting apply at every scale that feeds a
decoder; the uncertainty map is area-resized to each scale; gradients flow through the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from mammolabel.networks.backbones import ResNetFeatures

__all__ = [
    "FeatureDisentanglement",
    "HybridConfig",
    "HybridOutput",
    "SpatialPrompting",
    "UNetDecoder",
    "XiongHybridNet",
]

STRIDE = 32  # input rows and columns must be multiples of the encoder's total stride


class HybridOutput(NamedTuple):
    """Logits of the two decoders at input resolution, each (B, 1, H, W).

    ``segmentation``: lesion (``Dec_s``); ``background``: definite background (``Dec_a``, None
    when the network has no auxiliary branch).
    """

    segmentation: torch.Tensor
    background: torch.Tensor | None


class UNetDecoder(nn.Module):
    """U-Net decoder (Ronneberger et al. 2015) over encoder features of strides 2, 4, ..., 32.

    Each block upsamples by 2, concatenates the encoder feature of that scale (the last block,
    back at input resolution, has none) and applies two 3x3 conv-BN-ReLU; a 1x1 convolution gives
    one logit per pixel.

    Args:
        encoder_channels: channels of the encoder features, finest (stride 2) first.
        decoder_channels: output channels of the blocks, coarsest first (one more than skips).
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        if len(decoder_channels) != len(encoder_channels):
            raise ValueError(f"need {len(encoder_channels)} decoder channels, got {len(decoder_channels)}")
        skips = [*encoder_channels[:-1][::-1], 0]
        blocks, in_channels = [], encoder_channels[-1]
        for skip, out in zip(skips, decoder_channels):
            blocks.append(UpCat(2, in_channels, skip, out, act="relu", norm="batch", bias=False,
                                upsample="nontrainable", pre_conv=None, interp_mode="nearest", align_corners=None))
            in_channels = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: the encoder's (B, c_i, H / 2^(i+1), W / 2^(i+1)), i = 0..4 -> logits (B, 1, H, W)."""
        x = features[-1]
        for block, skip in zip(self.blocks, [*features[:-1][::-1], None]):
            x = block(x, skip)
        return self.head(x)


class FeatureDisentanglement(nn.Module):
    """Feature-level disentanglement (paper Sec. 2.2) of one scale's features.

    ``f`` (B, C, h, w) is bifurcated along channels; the first ``round(C * lesion_fraction)``
    channels pass a 1x1 convolution back to C channels as the lesion-related features ``f_r``,
    the rest another 1x1 convolution as the other features ``f_o``.
    """

    def __init__(self, channels: int, lesion_fraction: float = 0.5):
        super().__init__()
        if not 0 < lesion_fraction < 1:
            raise ValueError(f"lesion_fraction must lie in (0, 1), got {lesion_fraction}")
        self.split = min(channels - 1, max(1, round(channels * lesion_fraction)))
        self.lesion = nn.Conv2d(self.split, channels, kernel_size=1)
        self.other = nn.Conv2d(channels - self.split, channels, kernel_size=1)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lesion(f[:, : self.split]), self.other(f[:, self.split :])


class SpatialPrompting(nn.Module):
    """Spatial prompting module (paper Sec. 2.3).

    The background prediction is reversed into an uncertainty map ``u = 1 - sigmoid(logits)``
    (high where a lesion may be), resized to each scale and multiplied with the lesion-related
    features, prompting ``Dec_s`` to look inside the uncertain area.
    """

    def forward(self, lesion_features: Sequence[torch.Tensor], background_logits: torch.Tensor) -> list[torch.Tensor]:
        uncertainty = 1.0 - torch.sigmoid(background_logits)  # (B, 1, H, W)
        return [f * F.interpolate(uncertainty, size=f.shape[-2:], mode="area").to(f.dtype) for f in lesion_features]


@dataclass
class HybridConfig:
    """Everything needed to rebuild a :class:`XiongHybridNet` (``asdict`` of it is a checkpoint's ``network``).

    Attributes:
        depth: ResNet depth of the shared encoder (34 in the paper).
        width: channels of the first ResNet stage (64 in the standard ResNet-34).
        decoder_channels: decoder block widths, coarsest first; empty = (4w, 2w, w, w/2, w/4).
        auxiliary: build the background decoder (False gives the plain U-Net of the
            paper's Strong-Only baseline).
        disentangle: feature-level disentanglement (FD); needs ``auxiliary``.
        spatial_prompt: spatial prompting module (SPM); needs ``auxiliary``.
        lesion_fraction: share of channels that become lesion-related features.
    """

    depth: int = 34
    width: int = 64
    decoder_channels: list[int] = field(default_factory=list)
    auxiliary: bool = True
    disentangle: bool = True
    spatial_prompt: bool = True
    lesion_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not self.auxiliary and (self.disentangle or self.spatial_prompt):
            raise ValueError("feature disentanglement and spatial prompting need the auxiliary background decoder")
        if self.width < 4:
            raise ValueError(f"width must be at least 4, got {self.width}")
        if not self.decoder_channels:
            w = self.width
            self.decoder_channels = [4 * w, 2 * w, w, max(1, w // 2), max(1, w // 4)]


class XiongHybridNet(nn.Module):
    """Shared encoder, background and segmentation decoders, FD and SPM (Xiong et al., Fig. 2).

    Args:
        config: sizes and switches (:class:`HybridConfig`).
        in_channels: image channels (1 for a mammogram).

    ``forward(x)`` with x (B, in_channels, H, W), H and W multiples of 32, returns a
    :class:`HybridOutput` of (B, 1, H, W) logits.

    Example::

        net = XiongHybridNet(HybridConfig(width=8))
        out = net(torch.rand(2, 1, 64, 64))  # out.segmentation, out.background: (2, 1, 64, 64)
    """

    def __init__(self, config: HybridConfig | None = None, in_channels: int = 1):
        super().__init__()
        self.config = config = config or HybridConfig()
        self.encoder = ResNetFeatures(config.depth, config.width, in_channels)
        channels = [config.width, *self.encoder.channels]  # stem (stride 2) and stages (strides 4..32)
        self.disentangle = (
            nn.ModuleList(FeatureDisentanglement(c, config.lesion_fraction) for c in channels)
            if config.disentangle else None
        )
        self.background = UNetDecoder(channels, config.decoder_channels) if config.auxiliary else None
        self.prompt = SpatialPrompting() if config.spatial_prompt else None
        self.segmentation = UNetDecoder(channels, config.decoder_channels)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder Enc_s: features of strides 2 (stem, before max-pooling), 4, 8, 16 and 32."""
        conv, norm, act, pool = self.encoder.stem
        stem = act(norm(conv(x)))  # (B, w, H/2, W/2)
        features, x = [stem], pool(stem)
        for stage in self.encoder.stages:
            x = stage(x)
            features.append(x)  # (B, w * 2^i, H / 2^(i+2), W / 2^(i+2))
        return features

    def forward(self, x: torch.Tensor) -> HybridOutput:
        if x.ndim != 4 or x.shape[-2] % STRIDE or x.shape[-1] % STRIDE:
            raise ValueError(f"expected (B, C, H, W) with H and W multiples of {STRIDE}, got {tuple(x.shape)}")
        # Shared encoder: f at five scales.
        f = self.encode(x)
        # Feature-level disentanglement (Sec. 2.2): f -> lesion-related f_r and others f_o, same shapes as f.
        if self.disentangle is not None:
            f_r, f_o = (list(t) for t in zip(*(fd(fi) for fd, fi in zip(self.disentangle, f))))
        else:
            f_r = f_o = f
        if self.background is None:  # plain U-Net (Strong-Only baseline)
            return HybridOutput(self.segmentation(f_r), None)
        # Task-level disentanglement (Sec. 2.1): Dec_a separates definite background from uncertain areas.
        background = self.background(f_o)  # (B, 1, H, W)
        # Spatial prompting (Sec. 2.3): the reversed background prediction gates f_r.
        if self.prompt is not None:
            f_r = self.prompt(f_r, background)
        # Dec_s refines lesion boundaries inside the uncertain area.
        return HybridOutput(self.segmentation(f_r), background)  # (B, 1, H, W) each
