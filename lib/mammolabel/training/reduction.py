"""The ``reduction`` of a loss (``mean``, ``sum`` or ``none``), as torch's losses apply it."""

from __future__ import annotations

import torch


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``values`` averaged (``mean``), summed (``sum``) or as they are (``none``)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
