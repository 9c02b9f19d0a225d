"""Losses of GLAM (Liu et al., MIDL 2021, Fig. 3): binary cross-entropy plus a sparsity loss on the saliency maps.

- :class:`SaliencySparsityLoss`: ``L_sparse(S) = sum_c mean_ij |S_c[i, j]|``, the L1 penalty of
  GMIC/GLAM taken as a per-pixel mean (resolution independent; GMIC's sum over a 46x30 map with
  beta = 3.26e-6 equals a mean with beta of about 0.009 per class).
- :class:`GlamLoss`: the loss of each training stage, on a :class:`~mammolabel.methods.glam.network.GlamOutput`:

  - ``global``: ``sum_n BCE(y_n, y) + beta * sum_n L_sparse(S_n)`` over the three scales (Fig. 6);
  - ``local``: ``BCE(y_l, y) + beta * L_sparse(A)`` over the patch maps (Fig. 7);
  - ``joint``: ``BCE(y_fusion, y)`` plus both of the above (Fig. 3, step 4).

Targets are (B, 2) multi-label 0/1 (benign, malignant). Predictions of the global and local
modules are top-t% pools of sigmoid maps, so they are probabilities; the fusion gives logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from mammolabel.methods.glam.network import STAGES, GlamOutput
from mammolabel.training.reduction import reduce

__all__ = ["GlamLoss", "SaliencySparsityLoss"]

_EPS = 1e-6


class SaliencySparsityLoss(_Loss):
    """L1 sparsity of saliency maps: per image, the pixel mean of ``|S|`` summed over classes.

    ``forward(maps)`` with maps (B, C, H, W) or (B, K, C, H, W) (patch maps: the mean runs over
    the patches too) returns the reduction over the batch of the (B,) per-image values.

    Example::

        >>> SaliencySparsityLoss()(torch.full((2, 2, 4, 4), 0.5))
        tensor(1.)
    """

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.ndim == 5:
            maps = maps.transpose(1, 2).flatten(2, 3)  # (B, C, K*H, W)
        if maps.ndim != 4:
            raise ValueError(f"maps must be (B, C, H, W) or (B, K, C, H, W), got {tuple(maps.shape)}")
        per_image = maps.float().abs().mean(dim=(2, 3)).sum(dim=1)
        return reduce(per_image, self.reduction)


def _bce(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image BCE summed over classes, from probabilities (clamped away from 0 and 1)."""
    p = probabilities.float().clamp(_EPS, 1 - _EPS)
    return F.binary_cross_entropy(p, target, reduction="none").sum(dim=1)


class GlamLoss(_Loss):
    """Loss of a GLAM training stage: binary cross-entropy plus ``beta`` times the sparsity of the maps.

    Args:
        beta: weight of the sparsity loss.
        reduction: over the batch, ``mean`` (default), ``sum`` or ``none``.

    ``forward(output, target, stage)``: ``output`` a :class:`GlamOutput` of that stage, ``target``
    (B, 2) in {0, 1}; returns the reduced loss. Computed in float32 outside any autocast.
    """

    def __init__(self, beta: float = 0.01, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.sparsity = SaliencySparsityLoss(reduction="none")

    def global_terms(self, output: GlamOutput, target: torch.Tensor) -> torch.Tensor:
        bce = sum(_bce(output.scale_predictions[:, n], target) for n in range(output.scale_predictions.shape[1]))
        return bce + self.beta * sum(self.sparsity(s) for s in output.scale_maps)

    def local_terms(self, output: GlamOutput, target: torch.Tensor) -> torch.Tensor:
        if output.local_prediction is None or output.patch_maps is None:
            raise ValueError("the local loss needs the local path's output (run the network with stage local or joint)")
        return _bce(output.local_prediction, target) + self.beta * self.sparsity(output.patch_maps)

    def forward(self, output: GlamOutput, target: torch.Tensor, stage: str) -> torch.Tensor:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if target.ndim != 2 or target.shape != output.global_prediction.shape:
            raise ValueError(f"target must be (B, {output.global_prediction.shape[1]}), got {tuple(target.shape)}")
        target = target.float()
        with torch.autocast(target.device.type, enabled=False):
            if stage == "global":
                values = self.global_terms(output, target)
            elif stage == "local":
                values = self.local_terms(output, target)
            else:
                fusion = F.binary_cross_entropy_with_logits(output.fusion_logits.float(), target, reduction="none")
                values = fusion.sum(1) + self.global_terms(output, target) + self.local_terms(output, target)
        return reduce(values, self.reduction)
