"""GLAM: global-local weakly-supervised high-resolution segmentation of Liu et al.

Kangning Liu, Yiqiu Shen, Nan Wu, Jakub Chledowski, Carlos Fernandez-Granda, Krzysztof J. Geras,
"Weakly-supervised High-resolution Segmentation of Mammography Images for Breast Cancer
Diagnosis" (MIDL 2021; ``shared/papers/liu-glam-weakly-supervised-segmentation.md``).

The model is trained from image-level labels (benign, malignant) and outputs a saliency map per
class at the input's full resolution (paper Fig. 2):

1. **Global module** (Fig. 6): a ResNet-22 (five stages of two basic blocks, widths 16 to 256,
   total stride 64) whose last three stages ``h0, h1, h2`` (184x120x64, 92x60x128, 46x30x256 for
   a 2944x1920 image) each give a 2-class saliency map ``S_n`` (1x1 convolution, sigmoid). Top-t%
   pooling turns each ``S_n`` into a class prediction ``y_n``; ``S_g`` is a weighted sum of the
   three maps at the resolution of ``S0``; ``z_g`` is the spatial max of ``h2``.
2. **Patch selection** (:mod:`mammolabel.methods.glam.patches`): K patches at the peaks of ``S_g`` (each class min-max normalised, the
   classes summed, the window with the highest mean taken greedily), inside the image and, as far
   as the image allows, not overlapping; crops are exact slices of the input.
3. **Local module** (Fig. 7): a ResNet-34 kept at stride 4 (no stage downsamples) on each patch
   gives a patch saliency map ``A_k`` and features ``h_k``; aggregation by concatenation (the
   ``A_k`` side by side, top-t% pooled; ``z_l`` the max of all ``h_k``) or by gated attention
   (Ilse et al. 2018: ``y_l = sum_k a_k y_k``, ``z_l = sum_k a_k z_k``, weights summing to one).
   The ``A_k`` pasted back at their patches give the local saliency ``S_l`` at input resolution.
4. **Fusion module**: a linear layer on ``[z_g, z_l]`` gives the fused prediction; the fused
   saliency is the mean of ``S_l`` and ``S_g`` upsampled to the input.

Facts taken from the authors' public code (nyukat/GLAM, read, not copied): the ResNet-22 layout
(first conv 7x7 stride 2, max pool stride 2, stage strides 1, 2, 2, 2, 2), the scale weights
0.2/0.6/0.2 of ``S_g``, t = 3% for the global maps and 30% for the local maps, 512x512 patches,
the local ResNet-34 without downsampling stages, the greedy window search on the normalised
map, the mean of local and global maps as the fused map. Choices made here: MONAI's
post-activation residual blocks (the authors' global network uses pre-activation blocks), one
greyscale input channel, bilinear upsampling of ``S_g`` for fusion, ``z_k`` the spatial max of
``h_k`` (as ``z_g``), and patches overlapping only when no non-overlapping window is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from mammolabel.networks.backbones import LAYERS, StagedFeatures
from mammolabel.networks.pooling import top_t_pool
from mammolabel.methods.glam.patches import crop_patches, paste_patches, select_patches

__all__ = [
    "CLASSES",
    "FusionModule",
    "GatedAttention",
    "GlamConfig",
    "GlamInference",
    "GlamNet",
    "GlamOutput",
    "GlobalModule",
    "LocalModule",
    "ResNetTrunk",
]

#: Saliency channels, in order.
CLASSES = ("benign", "malignant")
AGGREGATIONS = ("concat", "attention")
STAGES = ("global", "local", "joint")


@dataclass
class GlamConfig:
    """Sizes of a GLAM network; the defaults are the paper's (authors' code for what the text leaves out).

    Args:
        global_width: channels of the global ResNet's first stage (16); each of its five stages doubles it.
        global_blocks: basic blocks per global stage (2: ResNet-22).
        global_strides: stride of each global stage (after the stride-4 stem); the last three
            stages are the scales ``h0, h1, h2``.
        scale_weights: weights of ``S0, S1, S2`` in ``S_g``.
        local_width: channels of the local ResNet's first stage (64).
        local_depth: 18 or 34 (blocks per stage as in ResNet).
        local_strides: stride of each local stage after the stride-4 stem (all 1: maps at stride 4).
        num_patches: K, patches per image.
        patch_size: (rows, cols) of a patch in input pixels.
        t_global, t_local: top-t% pooling fractions of the global and local maps.
        aggregation: ``concat`` or ``attention``.
        attention_hidden: hidden size of the gated attention (128 as in GMIC).

    A checkpoint stores it as ``network`` (``dataclasses.asdict``); ``GlamConfig(**network)`` rebuilds it.
    """

    global_width: int = 16
    global_blocks: int = 2
    global_strides: tuple[int, ...] = (1, 2, 2, 2, 2)
    scale_weights: tuple[float, float, float] = (0.2, 0.6, 0.2)
    local_width: int = 64
    local_depth: int = 34
    local_strides: tuple[int, ...] = (1, 1, 1, 1)
    num_patches: int = 3
    patch_size: tuple[int, int] = (512, 512)
    t_global: float = 0.03
    t_local: float = 0.3
    aggregation: str = "concat"
    attention_hidden: int = 128
    classes: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        self.global_strides = tuple(int(s) for s in self.global_strides)
        self.local_strides = tuple(int(s) for s in self.local_strides)
        self.scale_weights = tuple(float(w) for w in self.scale_weights)
        self.patch_size = (int(self.patch_size[0]), int(self.patch_size[1]))
        self.classes = tuple(self.classes)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if len(self.global_strides) < 3 or len(self.scale_weights) != 3:
            raise ValueError("the global module needs at least three stages and three scale weights")
        if self.local_depth not in (18, 34):
            raise ValueError(f"local_depth must be 18 or 34, got {self.local_depth}")
        if self.num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {self.num_patches}")
        if not (0 < self.t_global <= 1 and 0 < self.t_local <= 1):
            raise ValueError("t_global and t_local must lie in (0, 1]")
        for side in self.patch_size:
            if side % self.map_stride or side % self.local_stride:
                raise ValueError(f"patch sides must be multiples of {self.map_stride} (the stride of S_g) and of "
                                 f"{self.local_stride} (the local stride), got {self.patch_size}")

    @property
    def map_stride(self) -> int:
        """Input pixels per cell of ``S0`` (and so of ``S_g``): 16 for the paper's network."""
        return 4 * math.prod(self.global_strides[:-2])

    @property
    def total_stride(self) -> int:
        """Input rows and columns must be multiples of this (64 for the paper's network)."""
        return 4 * math.prod(self.global_strides)

    @property
    def local_stride(self) -> int:
        return 4 * math.prod(self.local_strides)


@dataclass
class GlamOutput:
    """What :class:`GlamNet` computes; probabilities are in [0, 1], maps are (B, 2, h, w) sigmoids.

    Global module: ``scale_maps`` [S0, S1, S2] at their own resolutions; ``scale_predictions``
    (B, 3, 2) their top-t% pools; ``global_prediction`` (B, 2) their mean; ``global_saliency``
    ``S_g`` at the resolution of S0; ``z_global`` (B, C_g).
    Local path (None for the global stage): ``corners`` (B, K, 2) upper-left (row, col) of each
    patch in input pixels; ``patch_maps`` (B, K, 2, h_p, w_p); ``local_prediction`` (B, 2);
    ``attention`` (B, K) (None for concatenation); ``z_local`` (B, C_l); ``fusion_logits`` (B, 2);
    ``local_saliency`` ``S_l`` and ``fused_saliency`` at input resolution (not differentiated).
    """

    scale_maps: list[torch.Tensor]
    scale_predictions: torch.Tensor
    global_prediction: torch.Tensor
    global_saliency: torch.Tensor
    z_global: torch.Tensor
    corners: torch.Tensor | None = None
    patch_maps: torch.Tensor | None = None
    local_prediction: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    z_local: torch.Tensor | None = None
    fusion_logits: torch.Tensor | None = None
    local_saliency: torch.Tensor | None = None
    fused_saliency: torch.Tensor | None = None

    @property
    def fused_prediction(self) -> torch.Tensor | None:
        return None if self.fusion_logits is None else torch.sigmoid(self.fusion_logits)


class ResNetTrunk(StagedFeatures):
    """ResNet stem (7x7 conv stride 2, batch norm, ReLU, 3x3 max pool stride 2) and residual stages.

    Stage i has ``blocks[i]`` MONAI basic blocks of ``width * 2**i`` channels, the first with
    stride ``strides[i]``. ``forward`` returns every stage's output; ``channels`` lists their widths.
    """

    def __init__(self, width: int, blocks: Sequence[int], strides: Sequence[int], in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        self.channels: list[int] = []
        channels = width
        for i, (n, stride) in enumerate(zip(blocks, strides)):
            out = width * 2**i
            down = None
            if stride != 1 or channels != out:
                down = nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            layers = [ResNetBlock(channels, out, spatial_dims=2, stride=stride, downsample=down)]
            layers += [ResNetBlock(out, out, spatial_dims=2) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*layers))
            self.channels.append(out)
            channels = out


class GlobalModule(nn.Module):
    """Global module (paper Fig. 6): multi-scale saliency maps, their top-t% predictions, ``S_g`` and ``z_g``."""

    def __init__(self, config: GlamConfig):
        super().__init__()
        n = len(config.global_strides)
        self.trunk = ResNetTrunk(config.global_width, [config.global_blocks] * n, config.global_strides)
        self.heads = nn.ModuleList(nn.Conv2d(c, len(config.classes), 1, bias=False) for c in self.trunk.channels[-3:])
        self.register_buffer("scale_weights", torch.tensor(config.scale_weights), persistent=False)
        self.t = config.t_global

    @property
    def out_channels(self) -> int:
        return self.trunk.channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 1, H, W) -> ([S0, S1, S2], y (B, 3, 2), S_g (B, 2, H/16, W/16), z_g (B, C))."""
        h = self.trunk(x)[-3:]  # h0 (B, 64, H/16, W/16), h1 (B, 128, H/32, W/32), h2 (B, 256, H/64, W/64)
        maps = [torch.sigmoid(head(f)) for head, f in zip(self.heads, h)]  # S_n (B, 2, h_n, w_n)
        predictions = torch.stack([top_t_pool(s, self.t) for s in maps], dim=1)  # y_n (B, 3, 2)
        size = maps[0].shape[-2:]
        upsampled = [maps[0]] + [F.interpolate(s, size=size, mode="nearest") for s in maps[1:]]
        saliency = sum(w * s for w, s in zip(self.scale_weights, upsampled))  # S_g (B, 2, H/16, W/16)
        z = h[-1].amax(dim=(2, 3))  # z_g (B, 256)
        return maps, predictions, saliency, z


class GatedAttention(nn.Module):
    """Gated attention of Ilse et al. (ICML 2018): ``a_k = softmax_k(w^T (tanh(V z_k) * sigmoid(U z_k)))``.

    ``forward(z)`` with z (B, K, C) returns weights (B, K) that sum to one over K.
    """

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.V = nn.Linear(in_features, hidden, bias=False)
        self.U = nn.Linear(in_features, hidden, bias=False)
        self.w = nn.Linear(hidden, 1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scores = self.w(torch.tanh(self.V(z)) * torch.sigmoid(self.U(z))).squeeze(-1)  # (B, K)
        return torch.softmax(scores.float(), dim=1).to(z.dtype)


class LocalModule(nn.Module):
    """Local module (paper Fig. 7): patch saliency ``A_k`` and features, aggregated into ``y_l`` and ``z_l``."""

    def __init__(self, config: GlamConfig):
        super().__init__()
        _, blocks = LAYERS[config.local_depth]
        self.trunk = ResNetTrunk(config.local_width, blocks, config.local_strides)
        self.head = nn.Conv2d(self.trunk.channels[-1], len(config.classes), 1, bias=False)
        self.aggregation = config.aggregation
        self.attention = None
        if config.aggregation == "attention":
            self.attention = GatedAttention(self.out_channels, config.attention_hidden)
        self.t = config.t_local

    @property
    def out_channels(self) -> int:
        return self.trunk.channels[-1]

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """patches (B, K, 1, p, q) -> (A (B, K, 2, p/4, q/4), y_l (B, 2), attention (B, K) or None, z_l (B, C))."""
        b, k = patches.shape[:2]
        h = self.trunk(patches.flatten(0, 1))[-1]  # h_k (B*K, 512, p/4, q/4)
        maps = torch.sigmoid(self.head(h))  # A_k (B*K, 2, p/4, q/4)
        maps = maps.unflatten(0, (b, k))
        z = h.amax(dim=(2, 3)).unflatten(0, (b, k))  # z_k (B, K, 512)
        if self.attention is None:  # concatenation: the K maps side by side, one top-t% pool
            side_by_side = maps.transpose(1, 2).flatten(2, 3)  # (B, 2, K * p/4, q/4)
            return maps, top_t_pool(side_by_side, self.t), None, z.amax(dim=1)
        weights = self.attention(z)  # a_k (B, K), sum to one
        y_k = top_t_pool(maps.flatten(0, 1), self.t).unflatten(0, (b, k))  # (B, K, 2)
        return maps, (weights[..., None] * y_k).sum(1), weights, (weights[..., None] * z).sum(1)


class FusionModule(nn.Module):
    """Fusion module: class logits from the concatenated representations ``[z_g, z_l]``."""

    def __init__(self, global_features: int, local_features: int, classes: int = 2):
        super().__init__()
        self.linear = nn.Linear(global_features + local_features, classes)

    def forward(self, z_global: torch.Tensor, z_local: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([z_global, z_local], dim=1))


class GlamNet(nn.Module):
    """The GLAM model: global module, patch selection, local module, fusion (paper Fig. 2 and 3).

    ``forward(x, stage)`` with x (B, 1, H, W), H and W multiples of ``config.total_stride``:

    - ``stage="global"``: the global module only (training stage 1);
    - ``stage="local"``: the global module runs without gradients (frozen, it only selects the
      patches; training stage 2) and the local path runs;
    - ``stage="joint"``: everything with gradients (stage 3, and inference).

    Returns a :class:`GlamOutput`.
    """

    def __init__(self, config: GlamConfig | None = None):
        super().__init__()
        self.config = config or GlamConfig()
        self.global_module = GlobalModule(self.config)
        self.local_module = LocalModule(self.config)
        self.fusion = FusionModule(self.global_module.out_channels, self.local_module.out_channels,
                                   len(self.config.classes))

    def forward(self, x: torch.Tensor, stage: str = "joint") -> GlamOutput:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        cfg = self.config
        if x.ndim != 4 or x.shape[2] % cfg.total_stride or x.shape[3] % cfg.total_stride:
            raise ValueError(f"input must be (B, 1, H, W) with H, W multiples of {cfg.total_stride}, "
                             f"got {tuple(x.shape)}")
        size = (x.shape[2], x.shape[3])

        # 1. global module: S0, S1, S2 -> y_n; S_g; z_g
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage != "local"):
            maps, y_scales, s_global, z_global = self.global_module(x)
        out = GlamOutput(maps, y_scales, y_scales.mean(dim=1), s_global, z_global)
        if stage == "global":
            return out

        # 2. patch selection at the peaks of S_g, mapped to input pixels (S_g cells are map_stride pixels)
        s = cfg.map_stride
        cells = (cfg.patch_size[0] // s, cfg.patch_size[1] // s)
        out.corners = select_patches(s_global.detach(), cells, cfg.num_patches) * s  # (B, K, 2)
        patches = crop_patches(x, out.corners, cfg.patch_size)  # (B, K, 1, 512, 512)

        # 3. local module on the patches: A_k, y_l, attention, z_l; S_l pasted back at input resolution
        out.patch_maps, out.local_prediction, out.attention, out.z_local = self.local_module(patches)
        out.local_saliency = paste_patches(out.patch_maps.detach(), out.corners, cfg.patch_size, size)

        # 4. fusion: logits from [z_g, z_l]; fused saliency = mean of S_l and S_g upsampled to the input
        out.fusion_logits = self.fusion(z_global, out.z_local)
        with torch.no_grad():
            out.fused_saliency = (out.local_saliency + self.upsampled_global(out, size)) / 2
        return out

    def upsampled_global(self, out: GlamOutput, size: tuple[int, int]) -> torch.Tensor:
        """``S_g`` resized (bilinear) to ``size``, as the fused map uses it."""
        return F.interpolate(out.global_saliency.float(), size=size, mode="bilinear", align_corners=False)


class GlamInference(nn.Module):
    """GLAM as one inference pass returning tensors: (fused saliency (B, 2, H, W), fused probabilities (B, 2)).

    For timing and FLOP counting (``mammolabel benchmark``), where a module must return tensors.
    """

    def __init__(self, net: GlamNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x, "joint")
        return out.fused_saliency, out.fused_prediction
