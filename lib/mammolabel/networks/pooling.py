"""Pooling of saliency maps into image-level predictions."""

from __future__ import annotations

import math

import torch

__all__ = ["top_t_pool"]


def top_t_pool(maps: torch.Tensor, t: float) -> torch.Tensor:
    """Mean of the top ``t`` fraction of values of each map (GMIC/GLAM top-t% pooling).

    ``maps`` (B, C, H, W) -> (B, C). ``t`` = 1 is the mean; a ``t`` small enough to keep one
    pixel is the max.
    """
    if not 0 < t <= 1:
        raise ValueError(f"t must lie in (0, 1], got {t}")
    flat = maps.flatten(2)
    k = max(1, math.ceil(t * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(dim=-1)
