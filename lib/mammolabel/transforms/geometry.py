"""How a network input maps to the canonical full-resolution image, and back.

Networks see a fixed-size input: the canonical image, optionally cropped to the breast's bounding
box, resized to ``size``. A :class:`Frame` records that crop and size so that maps and points
predicted on the input are placed exactly on the full image (and truth is brought to the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mammolabel.io.orientation import body_mask


@dataclass(frozen=True)
class Frame:
    """Crop ``(r0, c0, r1, c1)`` (end-exclusive) of a ``full_shape`` image, resized to ``size`` (rows, cols)."""

    crop: tuple[int, int, int, int]
    size: tuple[int, int]
    full_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Input pixels per full-image pixel along rows and columns."""
        r0, c0, r1, c1 = self.crop
        return self.size[0] / (r1 - r0), self.size[1] / (c1 - c0)

    def to_input(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Crop and resize a full (rows, cols) array to the input size (order 0 = nearest, for masks)."""
        r0, c0, r1, c1 = self.crop
        t = torch.from_numpy(np.ascontiguousarray(array[r0:r1, c0:c1], dtype=np.float32))[None, None]
        mode = "nearest" if order == 0 else "area"
        return F.interpolate(t, size=self.size, mode=mode)[0, 0].numpy()

    def to_full(self, array: np.ndarray | torch.Tensor, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """Resize an input-sized (rows, cols) map back into the crop of a full-size array."""
        r0, c0, r1, c1 = self.crop
        t = torch.as_tensor(array, dtype=torch.float32).detach().cpu()[None, None]
        mode = "nearest" if order == 0 else "bilinear"
        kwargs = {} if order == 0 else {"align_corners": False}
        up = F.interpolate(t, size=(r1 - r0, c1 - c0), mode=mode, **kwargs)[0, 0].numpy()
        out = np.full(self.full_shape, fill, np.float32)
        out[r0:r1, c0:c1] = up
        return out

    def point_to_full(self, x: float, y: float) -> tuple[float, float]:
        """Input pixel (x, y) (centre convention) to full-image pixel coordinates."""
        sy, sx = self.scale
        return self.crop[1] + (x + 0.5) / sx - 0.5, self.crop[0] + (y + 0.5) / sy - 0.5

    def point_to_input(self, x: float, y: float) -> tuple[float, float]:
        sy, sx = self.scale
        return (x - self.crop[1] + 0.5) * sx - 0.5, (y - self.crop[0] + 0.5) * sy - 0.5


def make_frame(pixels: np.ndarray, size: tuple[int, int], crop_breast: bool = True, margin: float = 0.02) -> Frame:
    """Frame of a canonical image: the breast's bounding box (plus ``margin``) or the whole image."""
    rows, cols = pixels.shape
    crop = (0, 0, rows, cols)
    if crop_breast:
        mask, scale = body_mask(pixels)
        rr, cc = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rr.size > 4 and cc.size > 4:
            m = int(margin * max(rows, cols))
            crop = (
                max(0, int(rr[0] / scale) - m),
                max(0, int(cc[0] / scale) - m),
                min(rows, int((rr[-1] + 1) / scale) + m),
                min(cols, int((cc[-1] + 1) / scale) + m),
            )
    return Frame(crop=crop, size=(int(size[0]), int(size[1])), full_shape=(rows, cols))
