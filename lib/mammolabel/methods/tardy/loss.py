"""Loss of Tardy & Mateus's subtraction output (the paper names none; this one is ours, see below)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

__all__ = ["MalignancyMapLoss"]


class MalignancyMapLoss(_Loss):
    """Soft Dice on the output clipped to [0, 1] plus ``mse_weight`` x its squared error to the mask.

    The paper reports Dice but does not say what it minimised. The subtraction model's output
    ``O = I - U(I)`` is unbounded and is not a logit, so cross-entropy does not apply; a
    regression term (squared error to the mask: the backbone learns to reconstruct ``I - M``)
    keeps every pixel in play where the clipped Dice has no gradient, and the Dice term answers
    the class imbalance of small lesions. The plain sigmoid head of the paper's baseline is
    trained with the usual Dice + binary cross-entropy on its logits instead (MONAI ``DiceCELoss``).

    Args:
        mse_weight: weight of the squared-error term.
        reduction: ``mean`` (over images), ``sum`` or ``none`` (one value per image).

    Example::

        >>> loss = MalignancyMapLoss()
        >>> output, mask = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.9).float()
        >>> loss(output, mask).shape
        torch.Size([])
    """

    def __init__(self, mse_weight: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        if mse_weight < 0:
            raise ValueError(f"mse_weight must be non-negative, got {mse_weight}")
        self.mse_weight = mse_weight
        self.dice = DiceLoss(reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``output`` and ``mask`` (B, 1, H, W); the mask in {0, 1}."""
        if output.shape != mask.shape:
            raise ValueError(f"output {tuple(output.shape)} and mask {tuple(mask.shape)} must have the same shape")
        output, mask = output.float(), mask.float()
        per_image = self.dice(output.clamp(0, 1), mask).flatten(1).mean(1)  # (B,)
        per_image = per_image + self.mse_weight * (output - mask).pow(2).flatten(1).mean(1)
        if self.reduction == "mean":
            return per_image.mean()
        if self.reduction == "sum":
            return per_image.sum()
        if self.reduction == "none":
            return per_image
        raise ValueError(f'unsupported reduction {self.reduction!r}; use "mean", "sum" or "none"')
