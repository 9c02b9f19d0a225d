"""Loss of the self-training CNNs of Liang et al. (EMBC 2020): binary cross-entropy against a trimap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from mammolabel.methods.liang.network import BACKGROUND, FOREGROUND

__all__ = ["TrimapBCELoss"]


class TrimapBCELoss(_Loss):
    """Binary cross-entropy (the paper's Eq. 1) over the confident pixels of a trimap.

    Foreground pixels are targets 1, background pixels targets 0; unknown pixels are left out, so
    N of Eq. 1 counts only the foreground and background pixels (section II-C).

    Args:
        reduction: ``"mean"`` (over the confident pixels of the whole batch), ``"sum"`` or ``"none"``
            (per-pixel losses of shape (B, 1, h, w), zero at unknown pixels).

    Shapes: ``logits`` and ``trimap`` (B, 1, h, w); the trimap holds
    :data:`~mammolabel.methods.liang.network.FOREGROUND`, ``BACKGROUND`` or ``UNKNOWN``.

    Example:
        >>> loss = TrimapBCELoss()
        >>> logits = torch.zeros(1, 1, 2, 2)
        >>> target = torch.tensor([[[[1.0, 0.0], [-1.0, -1.0]]]])
        >>> round(float(loss(logits, target)), 4)  # log 2: two confident pixels at p = 0.5
        0.6931
    """

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        super().__init__(reduction=reduction)

    def forward(self, logits: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        if logits.shape != trimap.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and trimap {tuple(trimap.shape)} must have the same shape")
        known = (trimap == FOREGROUND) | (trimap == BACKGROUND)
        target = (trimap == FOREGROUND).to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * known
        if self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        return losses.sum() / known.sum().clamp(min=1)
