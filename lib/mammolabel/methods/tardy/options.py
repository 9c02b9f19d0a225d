"""Options of Tardy & Mateus's two train tasks (defaults: the paper's 1536 x 1536 input; our widths).

The paper gives no channel counts: ``width`` channels at full resolution, doubling at each of the
``levels`` (16 x 5 levels: 16, 32, 64, 128, 256) keep a 1536 x 1536 forward pass to a few seconds on
a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from mammolabel.methods.tardy.network import UNetConfig
from mammolabel.training.options import TrainOptions

#: Largest channel count of one level (the deepest one, ``width * 2 ** (levels - 1)``).
MAX_CHANNELS = 8192


@dataclass
class UNetOptions(TrainOptions):
    """What both stages share: the input frame, the U-Net's sizes and the optimiser.

    Attributes:
        rows, cols: the network input (breast-cropped when ``crop_breast``); multiples of ``2 ** (levels - 1)``.
        width: channels of the top (full-resolution) level; each deeper level doubles them.
        levels: resolution levels of the U-Net.
        removed_long_skips: top levels without their long skip (the paper removes "the top long ones").
        crop_breast: crop to the breast's bounding box before resizing.
        batch_size, lr: Adam's batch and learning rate.
    """

    rows: int = 1536
    cols: int = 1536
    width: int = 16
    levels: int = 5
    removed_long_skips: int = 1
    crop_breast: bool = True
    batch_size: int = 4
    lr: float = 1e-3

    def network(self) -> UNetConfig:
        """The U-Net these options describe."""
        return UNetConfig(features=self.features(), removed_long_skips=self.removed_long_skips)

    def features(self) -> list[int]:
        """Channels of each level, top first."""
        return [self.width * 2**i for i in range(self.levels)]

    def problems(self) -> list[str]:
        problems = []
        if self.levels < 2 or self.width < 1:
            problems.append(f"the U-Net needs at least two levels and a positive width (got width {self.width}, "
                            f"levels {self.levels})")
        elif self.features()[-1] > MAX_CHANNELS:
            problems.append(f"option 'width': each level's width must be at most {MAX_CHANNELS} "
                            f"(width {self.width} doubled over {self.levels} levels)")
        elif not 0 <= self.removed_long_skips <= self.levels - 1:
            problems.append(f"removed_long_skips must lie in [0, {self.levels - 1}], got {self.removed_long_skips}")
        divisor = 2 ** max(self.levels - 1, 0)
        if self.rows < 1 or self.cols < 1 or self.rows % divisor or self.cols % divisor:
            problems.append(f"size {self.rows}x{self.cols}: rows and columns must be positive multiples of {divisor} "
                            f"for a U-Net with {self.levels} levels")
        if self.batch_size < 1 or self.lr <= 0:
            problems.append("batch_size must be at least 1 and lr positive")
        return problems


@dataclass
class PretrainOptions(UNetOptions):
    """Stage 1 (``pretrain_reconstruction``): Models Genesis's corruption rates (gamma, painting, in-painting share)."""

    epochs: int = 20
    gamma_prob: float = 0.9
    paint_prob: float = 0.9
    inpaint_rate: float = 0.2

    def problems(self) -> list[str]:
        problems = super().problems()
        if not all(0 <= p <= 1 for p in (self.gamma_prob, self.paint_prob, self.inpaint_rate)):
            problems.append("gamma_prob, paint_prob and inpaint_rate must lie in [0, 1]")
        return problems


#: ``threshold`` value meaning: the threshold with the best mean validation Dice.
CHOOSE_ON_VALIDATION = 0.0


@dataclass
class DiscriminativeOptions(UNetOptions):
    """Stage 2 (``train_discriminative``).

    Attributes:
        pretrained: the stage-1 checkpoint: ``auto`` (``pretrain_reconstruction.pt`` in the model folder when
            there is one), ``none``, or a path; its U-Net sizes replace ``width``, ``levels`` and
            ``removed_long_skips``.
        no_subtraction: train the paper's baseline (a plain sigmoid head) instead of the subtraction layer.
        mse_weight: weight of the squared-error term of the subtraction loss.
        threshold: the labelmap threshold stored for the infer task; ``0`` (:data:`CHOOSE_ON_VALIDATION`)
            chooses the one with the best mean validation Dice.
    """

    epochs: int = 40
    pretrained: str = "auto"
    no_subtraction: bool = False
    mse_weight: float = 1.0
    threshold: float = CHOOSE_ON_VALIDATION

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.mse_weight < 0:
            problems.append("option 'mse_weight' must be non-negative")
        if self.threshold != CHOOSE_ON_VALIDATION and not 0 < self.threshold < 1:
            problems.append(f"threshold must lie in (0, 1) (0: choose it on validation), got {self.threshold}")
        return problems
