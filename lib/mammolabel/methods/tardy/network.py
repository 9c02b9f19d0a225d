"""Tardy & Mateus, "Improving Mammography Malignancy Segmentation with a Semi-Supervised Training Process".

The paper's model is a U-Net modified for full-field mammograms (Section 2, "U-Net for full-size
mammograms"):

i) separable convolutions (Chen et al. 2018; Qi et al. 2019),
ii) the top long skip connections removed and short (residual) skips added inside every block
    (Drozdzal et al. 2016; Szegedy et al. 2016),
iii) instance normalisation and leaky ReLU (Isensee et al. 2019).

The same U-Net is first trained to reconstruct corrupted benign images (Models Genesis style,
:mod:`mammolabel.methods.tardy.transforms`), then wrapped with a *subtraction layer* (Fig. 1): the
discriminative model outputs ``O = I - U(I)``, so the backbone keeps a reconstruction task while
the whole model yields the malignant regions. The paper's baseline changes the top activation
instead (a plain sigmoid segmentation head); both are :class:`DiscriminativeSegmenter` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = [
    "DiscriminativeSegmenter",
    "FullImageUNet",
    "ResidualSeparableBlock",
    "SeparableConv2d",
    "SubtractionLayer",
    "UNetConfig",
]

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


@dataclass
class UNetConfig:
    """Sizes of :class:`FullImageUNet` (stored in checkpoints as a plain dict).

    Attributes:
        features: channels of each resolution level, top (full resolution) first; every further
            level halves the resolution, so inputs must be divisible by ``2 ** (len(features) - 1)``.
        removed_long_skips: how many of the top levels lose their long encoder-decoder skip
            (the paper removes "the top long ones"; it does not say how many: default 1).
        in_channels: image channels (1 for a mammogram).
    """

    features: Sequence[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    removed_long_skips: int = 1
    in_channels: int = 1

    def __post_init__(self) -> None:
        self.features = [int(f) for f in self.features]
        if len(self.features) < 2 or min(self.features) < 1:
            raise ValueError(f"features must list at least two positive channel counts, got {self.features}")
        if not 0 <= self.removed_long_skips <= len(self.features) - 1:
            raise ValueError(f"removed_long_skips must lie in [0, {len(self.features) - 1}], "
                             f"got {self.removed_long_skips}")

    @property
    def divisor(self) -> int:
        """Input rows and columns must be multiples of this."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SeparableConv2d(nn.Sequential):
    """Depthwise ``k x k`` convolution followed by a pointwise ``1 x 1`` one (no bias: a norm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


class ResidualSeparableBlock(nn.Module):
    """Two separable convolution -> instance norm units with a short skip around them.

    ``y = LeakyReLU(IN(SepConv(LeakyReLU(IN(SepConv(x))))) + shortcut(x))``; the shortcut is the
    identity, or a 1 x 1 convolution with instance norm when the channel count changes.
    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = SeparableConv2d(in_channels, out_channels)
        self.norm1 = get_norm_layer(NORM, spatial_dims=2, channels=out_channels)
        self.act1 = get_act_layer(ACT)
        self.conv2 = SeparableConv2d(out_channels, out_channels)
        self.norm2 = get_norm_layer(NORM, spatial_dims=2, channels=out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          get_norm_layer(NORM, spatial_dims=2, channels=out_channels))
        self.act2 = get_act_layer(ACT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class FullImageUNet(nn.Module):
    """The paper's modified U-Net; its linear 1-channel output is a reconstruction of the input.

    Encoder level ``i`` works at 1/2^i of the input size with ``features[i]`` channels; the decoder
    upsamples back level by level, concatenating the encoder's feature map of the same level only
    below the top ``removed_long_skips`` levels. The stem is a plain 3 x 3 convolution (a
    depthwise convolution of a single channel would be a single filter).

    Args:
        config: the sizes, see :class:`UNetConfig`.

    ``forward(x)``: (B, in_channels, H, W) -> (B, in_channels, H, W), H and W multiples of
    ``config.divisor``.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        f = self.config.features
        levels = len(f)
        self.stem = nn.Sequential(nn.Conv2d(self.config.in_channels, f[0], 3, padding=1, bias=False),
                                  get_norm_layer(NORM, spatial_dims=2, channels=f[0]), get_act_layer(ACT))
        self.encoder = nn.ModuleList([ResidualSeparableBlock(f[0], f[0])] +
                                     [ResidualSeparableBlock(f[i - 1], f[i]) for i in range(1, levels)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.long_skip = [i >= self.config.removed_long_skips for i in range(levels - 1)]
        self.decoder = nn.ModuleList([
            ResidualSeparableBlock(f[i + 1] + (f[i] if self.long_skip[i] else 0), f[i]) for i in range(levels - 1)
        ])
        self.head = nn.Conv2d(f[0], self.config.in_channels, 1)

    def check_input(self, x: torch.Tensor) -> None:
        d = self.config.divisor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % d or x.shape[3] % d:
            raise ValueError(f"expected (B, {self.config.in_channels}, H, W) with H and W multiples of {d}; "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # Encoder: level i at 1/2^i resolution -> (B, features[i], H / 2^i, W / 2^i)
        skips: list[torch.Tensor] = []
        h = self.stem(x)
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        # Decoder: back up to level 0, long skips only below the top removed_long_skips levels
        for i in reversed(range(len(self.decoder))):
            h = self.up(h)  # (B, features[i + 1], H / 2^i, W / 2^i)
            if self.long_skip[i]:
                h = torch.cat([h, skips[i]], dim=1)
            h = self.decoder[i](h)  # (B, features[i], H / 2^i, W / 2^i)
        # Reconstruction head: (B, in_channels, H, W), linear
        return self.head(h)


class SubtractionLayer(nn.Module):
    """The paper's layer on top of the U-Net (Fig. 1): output ``O = I - U(I)``."""

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return image - reconstruction


class DiscriminativeSegmenter(nn.Module):
    """U-Net with the subtraction layer (the paper's method) or with a sigmoid head (its baseline).

    Args:
        config: backbone sizes; the backbone's state dict is exactly a :class:`FullImageUNet`'s,
            so a ``pretrain_reconstruction`` checkpoint loads into ``backbone`` with no missing key.
        subtraction: True for the output ``O = I - U(I)``; False for the "fully supervised
            segmentation" rows of Table 1, whose output ``U(I)`` are the logits of a sigmoid head.

    ``forward(x)``: (B, 1, H, W) -> output (B, 1, H, W), unbounded in both cases;
    :meth:`probability` maps it to the malignancy map in [0, 1] (clipped ``O``, or ``sigmoid(U(I))``).
    """

    def __init__(self, config: UNetConfig | None = None, subtraction: bool = True):
        super().__init__()
        self.backbone = FullImageUNet(config)
        self.subtraction = subtraction
        self.subtract = SubtractionLayer()

    @property
    def config(self) -> UNetConfig:
        return self.backbone.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reconstruction = self.backbone(x)  # U(I): (B, 1, H, W)
        if self.subtraction:
            return self.subtract(x, reconstruction)  # O = I - U(I)
        return reconstruction  # logits of the plain segmentation head

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        """The malignancy map in [0, 1] that the infer task thresholds."""
        return output.clamp(0.0, 1.0) if self.subtraction else torch.sigmoid(output)
