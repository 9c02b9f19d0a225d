"""Inception-V3 feature blocks (Szegedy et al., CVPR 2016), the backbone of Liang et al.'s classifier (Fig. 2).

The eleven Inception blocks (Mixed 5b-5d, 6a-6e, 7a-7c) are built from MONAI convolution layers
(random init; nothing is downloaded). ``width`` scales every channel count so that the model runs
small on CPU; width 1 is the standard Inception-V3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["N_BLOCKS", "InceptionV3Features", "conv_bn"]

#: Number of Inception blocks of Inception-V3 (Mixed 5b-5d, 6a-6e, 7a-7c).
N_BLOCKS = 11


def conv_bn(in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int = 1) -> Convolution:
    """Inception-V3's basic layer: convolution without bias, batch norm (eps 1e-3), ReLU; 'same' padding."""
    return Convolution(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, strides=stride, kernel_size=kernel_size,
        act="RELU", norm=("BATCH", {"eps": 1e-3}), bias=False,
    )


def pooled_branch(in_channels: int, out_channels: int) -> nn.Sequential:
    """The pooled branch of the Inception blocks: 3x3 average pooling (stride 1), then a 1x1 layer."""
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv_bn(in_channels, out_channels, 1))


class _Widths:
    """Channel counts of the standard Inception-V3 scaled by ``width`` (at least one channel each)."""

    def __init__(self, width: float):
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = width

    def __call__(self, channels: int) -> int:
        return max(1, int(round(channels * self.width)))


class InceptionA(nn.Module):
    """35x35-grid block (Mixed 5b-5d): 1x1, 5x5, double 3x3 and pooled branches, concatenated."""

    def __init__(self, in_channels: int, pool_channels: int, c: _Widths):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, c(64), 1)
        self.branch5x5 = nn.Sequential(conv_bn(in_channels, c(48), 1), conv_bn(c(48), c(64), 5))
        self.branch3x3dbl = nn.Sequential(
            conv_bn(in_channels, c(64), 1), conv_bn(c(64), c(96), 3), conv_bn(c(96), c(96), 3)
        )
        self.branch_pool = pooled_branch(in_channels, pool_channels)
        self.out_channels = c(64) + c(64) + c(96) + pool_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x), self.branch_pool(x)], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed 6a): strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, in_channels: int, c: _Widths):
        super().__init__()
        self.branch3x3 = conv_bn(in_channels, c(384), 3, stride=2)
        self.branch3x3dbl = nn.Sequential(
            conv_bn(in_channels, c(64), 1), conv_bn(c(64), c(96), 3), conv_bn(c(96), c(96), 3, stride=2)
        )
        self.branch_pool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)], 1)


class InceptionC(nn.Module):
    """17x17-grid block (Mixed 6b-6e) with factorised 7x7 convolutions (1x7 then 7x1) of ``c7`` channels."""

    def __init__(self, in_channels: int, c7: int, c: _Widths):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, c(192), 1)
        self.branch7x7 = nn.Sequential(
            conv_bn(in_channels, c7, 1), conv_bn(c7, c7, (1, 7)), conv_bn(c7, c(192), (7, 1))
        )
        self.branch7x7dbl = nn.Sequential(
            conv_bn(in_channels, c7, 1), conv_bn(c7, c7, (7, 1)), conv_bn(c7, c7, (1, 7)),
            conv_bn(c7, c7, (7, 1)), conv_bn(c7, c(192), (1, 7)),
        )
        self.branch_pool = pooled_branch(in_channels, c(192))
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7dbl(x), self.branch_pool(x)], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed 7a): strided 3x3, strided 7x7-then-3x3 and max-pool branches."""

    def __init__(self, in_channels: int, c: _Widths):
        super().__init__()
        self.branch3x3 = nn.Sequential(conv_bn(in_channels, c(192), 1), conv_bn(c(192), c(320), 3, stride=2))
        self.branch7x7x3 = nn.Sequential(
            conv_bn(in_channels, c(192), 1), conv_bn(c(192), c(192), (1, 7)), conv_bn(c(192), c(192), (7, 1)),
            conv_bn(c(192), c(192), 3, stride=2),
        )
        self.branch_pool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch7x7x3(x), self.branch_pool(x)], 1)


class InceptionE(nn.Module):
    """8x8-grid block (Mixed 7b-7c): 1x1, split 3x3 (1x3 and 3x1), double split 3x3 and pooled branches."""

    def __init__(self, in_channels: int, c: _Widths):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, c(320), 1)
        self.branch3x3 = conv_bn(in_channels, c(384), 1)
        self.branch3x3_a, self.branch3x3_b = conv_bn(c(384), c(384), (1, 3)), conv_bn(c(384), c(384), (3, 1))
        self.branch3x3dbl = nn.Sequential(conv_bn(in_channels, c(448), 1), conv_bn(c(448), c(384), 3))
        self.branch3x3dbl_a, self.branch3x3dbl_b = conv_bn(c(384), c(384), (1, 3)), conv_bn(c(384), c(384), (3, 1))
        self.branch_pool = pooled_branch(in_channels, c(192))
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3, bd = self.branch3x3(x), self.branch3x3dbl(x)
        return torch.cat(
            [self.branch1x1(x), self.branch3x3_a(b3), self.branch3x3_b(b3), self.branch3x3dbl_a(bd),
             self.branch3x3dbl_b(bd), self.branch_pool(x)],
            1,
        )


class InceptionV3Features(nn.Module):
    """Inception-V3 up to and including its last (11th) Inception block, greyscale input, random init.

    Args:
        in_channels: input channels (1 for a mammogram).
        width: scale of every channel count (1.0 = the standard Inception-V3, 2048 output channels).

    ``forward(x, taps)`` with x of shape (B, in_channels, H, W) returns the last block's output
    (B, channels[-1], H/32, W/32) and the outputs of the 1-based blocks in ``taps``; block i's
    output has ``channels[i - 1]`` channels and stride 8 (blocks 1-3), 16 (4-8) or 32 (9-11).
    Padding is 'same' throughout, so an H divisible by 32 gives exact strides.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c = _Widths(width)
        self.stem = nn.Sequential(
            conv_bn(in_channels, c(32), 3, stride=2), conv_bn(c(32), c(32), 3), conv_bn(c(32), c(64), 3),
            nn.MaxPool2d(3, 2, 1), conv_bn(c(64), c(80), 1), conv_bn(c(80), c(192), 3), nn.MaxPool2d(3, 2, 1),
        )
        mixed_5b = InceptionA(c(192), c(32), c)
        mixed_5c = InceptionA(mixed_5b.out_channels, c(64), c)
        mixed_5d = InceptionA(mixed_5c.out_channels, c(64), c)
        mixed_6a = InceptionB(mixed_5d.out_channels, c)
        mixed_6b = InceptionC(mixed_6a.out_channels, c(128), c)
        mixed_6c = InceptionC(mixed_6b.out_channels, c(160), c)
        mixed_6d = InceptionC(mixed_6c.out_channels, c(160), c)
        mixed_6e = InceptionC(mixed_6d.out_channels, c(192), c)
        mixed_7a = InceptionD(mixed_6e.out_channels, c)
        mixed_7b = InceptionE(mixed_7a.out_channels, c)
        mixed_7c = InceptionE(mixed_7b.out_channels, c)
        self.blocks = nn.ModuleList(
            [mixed_5b, mixed_5c, mixed_5d, mixed_6a, mixed_6b, mixed_6c, mixed_6d, mixed_6e, mixed_7a, mixed_7b,
             mixed_7c]
        )
        self.channels = [b.out_channels for b in self.blocks]

    def forward(self, x: torch.Tensor, taps: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        tapped: dict[int, torch.Tensor] = {}
        x = self.stem(x)  # (B, 192w, H/8, W/8)
        for index, block in enumerate(self.blocks, start=1):
            x = block(x)
            if index in taps:
                tapped[index] = x
        return x, tapped
