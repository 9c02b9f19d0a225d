"""Losses of Xiong et al. (hybrid strong/weak mass segmentation), paper Sec. 2.4.

- :class:`PixelPositionAwareLoss` (Eq. 1): weighted BCE + weighted IoU of F3Net (Wei et al.,
  AAAI 2020), on both branches.
- :class:`UncertainAreaPerceptionLoss` (Eq. 2): ``1 - TN / (TN + FP)`` on the auxiliary
  background branch, whose positive class is *background* (targets are reversed box masks), so
  TN counts in-box pixels predicted uncertain and FP in-box pixels predicted background.
- :class:`HybridLoss` (Eq. 3): ``L_ppa^seg + L_ppa^aux + L_percept^aux``.
- :func:`reversed_box_mask`: the auxiliary target ``y^w`` (Fig. 1e), 1 outside every box.

Both losses take logits (B, 1, H, W) and binary targets of the same shape and follow MONAI's
``_Loss`` conventions (``reduction`` = "mean", "sum" or "none" over the batch).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from mammolabel.data.labels import box_mask, boxes_from_mask
from mammolabel.methods.xiong.network import HybridOutput
from mammolabel.training.reduction import reduce

__all__ = ["HybridLoss", "PixelPositionAwareLoss", "UncertainAreaPerceptionLoss", "reversed_box_mask"]


def reversed_box_mask(weak: np.ndarray) -> np.ndarray:
    """Reversed bounding-box mask of a weak label (paper Fig. 1e): 1 outside every box, 0 inside.

    ``weak`` is a (rows, cols) box label as the datastore holds it: filled boxes or rough strokes
    whose connected components' bounding boxes are the boxes. An empty label gives all ones.
    """
    return (1 - box_mask(boxes_from_mask(weak), weak.shape)).astype(np.float32)


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(f"logits and target must both be (B, C, H, W), got {tuple(logits.shape)} and {tuple(target.shape)}")


class PixelPositionAwareLoss(_Loss):
    """Pixel-position-aware loss ``L_ppa = L^w_bce + L^w_iou`` (Xiong Eq. 1, from F3Net).

    Each pixel is weighted by ``1 + gamma * |avgpool_k(y) - y|``, large near boundaries and in
    small structures, so small masses are not drowned by background. The weighted BCE is
    normalised by the weight sum; the weighted IoU term is ``1 - (I + 1) / (U - I + 1)`` with
    ``I = sum w * p * y`` and ``U = sum w * (p + y)`` over each image.

    Args:
        kernel_size: side of the averaging window (odd; 31 in F3Net at 352x352 input).
        gamma: weight of the boundary term (5 in F3Net).

    Example::

        loss = PixelPositionAwareLoss()(torch.randn(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    """

    def __init__(self, kernel_size: int = 31, gamma: float = 5.0, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size, self.gamma = kernel_size, gamma

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """Pixel weights ``1 + gamma * |avgpool(y) - y|`` (B, 1, H, W)."""
        local = F.avg_pool2d(target, self.kernel_size, stride=1, padding=self.kernel_size // 2, count_include_pad=False)
        return 1.0 + self.gamma * (local - target).abs()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        logits, target = logits.float(), target.float()
        w = self.weights(target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weighted_bce = (w * bce).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))
        p = torch.sigmoid(logits)
        inter = (w * p * target).sum(dim=(1, 2, 3))
        union = (w * (p + target)).sum(dim=(1, 2, 3))
        weighted_iou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
        return reduce(weighted_bce + weighted_iou, self.reduction)


class UncertainAreaPerceptionLoss(_Loss):
    """Uncertain-area perception loss ``L_percept = 1 - TN / (TN + FP)`` (Xiong Eq. 2).

    On the auxiliary branch, positive predictions mean *background* and the target is the
    reversed box mask (1 = definite background outside the boxes, 0 = uncertain, inside a box).
    With soft counts from probabilities ``p``: ``TN = sum (1 - p)(1 - y)`` and ``FP = sum p (1 - y)``.
    The loss is 0 when every in-box pixel is predicted uncertain and grows towards 1 as in-box
    pixels are predicted background: it rewards the recall of the uncertain area. An image with no
    in-box pixel contributes 0 (it has no negatives); the mean runs over images that have some.
    """

    def __init__(self, reduction: str = "mean", eps: float = 1e-6):
        super().__init__(reduction=reduction)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        p, negative = torch.sigmoid(logits.float()), 1.0 - target.float()
        tn = ((1.0 - p) * negative).sum(dim=(1, 2, 3))
        fp = (p * negative).sum(dim=(1, 2, 3))
        has_negatives = negative.sum(dim=(1, 2, 3)) > 0
        loss = torch.where(has_negatives, 1.0 - tn / (tn + fp + self.eps), torch.zeros_like(tn))
        if self.reduction == "mean":
            return loss.sum() / has_negatives.sum().clamp(min=1)
        return reduce(loss, self.reduction)


class HybridLoss(torch.nn.Module):
    """Total loss of Xiong Eq. 3: ``L_ppa^seg + L_ppa^aux + L_percept^aux``.

    The segmentation branch is supervised only on strongly labelled images (pixel masks; a normal
    film counts as an empty mask), the auxiliary branch on every image by its reversed box mask.
    A batch without strong images gives the segmentation term 0 (no gradient to ``Dec_s``).

    Args:
        perception: include the uncertain-area perception loss (PL); False for the ablation.
        kernel_size: PPA averaging window.

    ``forward(output, mask, background, strong)`` with masks (B, 1, H, W) and ``strong`` (B,)
    returns the terms by name (``ppa_seg``, and with an auxiliary branch ``ppa_aux`` and, with PL,
    ``percept``) plus their sum as ``total``.
    """

    def __init__(self, perception: bool = True, kernel_size: int = 31):
        super().__init__()
        self.ppa = PixelPositionAwareLoss(kernel_size, reduction="none")
        self.percept = UncertainAreaPerceptionLoss() if perception else None

    def forward(
        self, output: HybridOutput, mask: torch.Tensor, background: torch.Tensor, strong: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        strong = strong.bool()
        seg = output.segmentation
        terms = {"ppa_seg": self.ppa(seg[strong], mask[strong]).mean() if strong.any() else seg.sum() * 0.0}
        if output.background is not None:
            terms["ppa_aux"] = self.ppa(output.background, background).mean()
            if self.percept is not None:
                terms["percept"] = self.percept(output.background, background)
        terms["total"] = sum(terms.values())
        return terms
