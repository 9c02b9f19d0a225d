"""ResNet feature extractors built from code (MONAI's ResNet blocks, no downloaded weights)."""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck
from torch import nn

__all__ = ["LAYERS", "ResNetFeatures", "StagedFeatures"]

#: Blocks per stage for the usual depths.
LAYERS = {18: (ResNetBlock, [2, 2, 2, 2]), 34: (ResNetBlock, [3, 4, 6, 3]), 50: (ResNetBottleneck, [3, 4, 6, 3])}


class StagedFeatures(nn.Module):
    """A ``stem`` then ``stages``; ``forward`` returns every stage's output (subclasses build the two)."""

    stem: nn.Module
    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResNetFeatures(StagedFeatures):
    """Greyscale ResNet returning the feature maps of its four stages (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34 or 50.
        width: channels of the first stage (64 in the standard ResNet); stages double it.
        in_channels: input channels (1 for a mammogram).

    ``forward(x)`` with x of shape (B, in_channels, H, W) returns a list of four tensors of shapes
    (B, c_i, H / 2^(i+2), W / 2^(i+2)); ``channels`` lists the c_i.
    """

    def __init__(self, depth: int = 34, width: int = 64, in_channels: int = 1):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"depth must be one of {sorted(LAYERS)}, got {depth}")
        block, layers = LAYERS[depth]
        net = ResNet(block, layers, [width, 2 * width, 4 * width, 8 * width], spatial_dims=2,
                     n_input_channels=in_channels, conv1_t_stride=2, feed_forward=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        expansion = 4 if block is ResNetBottleneck else 1
        self.channels = [c * expansion for c in (width, 2 * width, 4 * width, 8 * width)]
