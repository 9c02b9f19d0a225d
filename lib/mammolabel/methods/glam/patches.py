"""Patch selection of GLAM (Liu et al., MIDL 2021, Fig. 2 step 2): where the local module looks, and back.

:func:`select_patches` finds K windows at the peaks of the global saliency ``S_g`` (the authors'
greedy search on the min-max normalised map), :func:`crop_patches` cuts them exactly out of the
input, and :func:`paste_patches` pastes the local module's patch maps back into an input-sized
local saliency ``S_l``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_patches", "paste_patches", "select_patches"]


@torch.no_grad()
def select_patches(saliency: torch.Tensor, patch_cells: tuple[int, int], k: int) -> torch.Tensor:
    """Upper-left cells (B, K, 2) = (row, col) of K windows of ``patch_cells`` at the peaks of ``saliency``.

    Each class of ``saliency`` (B, C, h, w) is min-max normalised and the classes are summed; the
    window with the highest mean is taken, its cells are zeroed, and so on K times (the authors'
    greedy search). A window overlapping one already taken is only chosen when no other is left,
    so the patches do not overlap as long as the image has room for them. Windows lie inside the map.
    """
    b, _, h, w = saliency.shape
    ph, pw = patch_cells
    if ph > h or pw > w:
        raise ValueError(f"patch of {patch_cells} cells does not fit a saliency map of {(h, w)} cells")
    low = saliency.amin(dim=(2, 3), keepdim=True)
    high = saliency.amax(dim=(2, 3), keepdim=True)
    current = ((saliency - low) / (high - low).clamp_min(1e-12)).sum(dim=1, keepdim=True).float()  # (B, 1, h, w)
    taken = torch.zeros(b, h - ph + 1, w - pw + 1, dtype=torch.bool, device=saliency.device)
    corners = torch.zeros(b, k, 2, dtype=torch.long, device=saliency.device)
    for i in range(k):
        score = F.avg_pool2d(current, (ph, pw), stride=1)[:, 0]  # mean of every window, by upper-left cell
        free = score.masked_fill(taken, float("-inf"))
        full = taken.flatten(1).all(dim=1)  # no non-overlapping window left: allow overlap
        free[full] = score[full]
        index = free.flatten(1).argmax(dim=1)
        rows, cols = index // score.shape[-1], index % score.shape[-1]
        corners[:, i, 0], corners[:, i, 1] = rows, cols
        for j in range(b):
            r, c = int(rows[j]), int(cols[j])
            current[j, :, r : r + ph, c : c + pw] = 0
            taken[j, max(0, r - ph + 1) : r + ph, max(0, c - pw + 1) : c + pw] = True
    return corners


def crop_patches(x: torch.Tensor, corners: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Exact crops (B, K, C, p, q) of x (B, C, H, W) with upper-left ``corners`` (B, K, 2) in pixels."""
    p, q = patch_size
    return torch.stack([
        torch.stack([x[i, :, r : r + p, c : c + q] for r, c in corners[i].tolist()]) for i in range(x.shape[0])
    ])


@torch.no_grad()
def paste_patches(maps: torch.Tensor, corners: torch.Tensor, patch_size: tuple[int, int],
                  size: tuple[int, int]) -> torch.Tensor:
    """Local saliency ``S_l`` (B, C, H, W): each patch map (B, K, C, h, w) resized to its patch and pasted.

    Where patches overlap the maximum is kept; outside every patch ``S_l`` is zero.
    """
    b, k, c = maps.shape[:3]
    up = F.interpolate(maps.flatten(0, 1).float(), size=patch_size, mode="bilinear", align_corners=False)
    up = up.unflatten(0, (b, k))
    canvas = torch.zeros(b, c, *size, device=maps.device)
    p, q = patch_size
    for i in range(b):
        for j, (r, col) in enumerate(corners[i].tolist()):
            region = canvas[i, :, r : r + p, col : col + q]
            torch.maximum(region, up[i, j], out=region)
    return canvas
