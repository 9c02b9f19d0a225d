"""Image corruptions of Tardy & Mateus's self-supervised pretraining (Models Genesis adapted to mammograms).

Zhou et al.'s Models Genesis learns by restoring an image from a corrupted copy. Tardy & Mateus
(Section 2, "Self-supervised training") keep its idea for full mammograms with three changes:
a gamma intensity transform instead of the Bezier non-linear one, no local pixel shuffling,
and in-painting extended to a range of non-rectangular shapes. Here every shape (in-painting
holes and out-painting windows alike) is an ellipse, a star polygon or a smooth blob.

Array transforms act on channel-first (C, H, W) tensors or arrays; the dictionary versions draw
once and apply the same draw to every key, as MONAI's do. All randomness comes from the
transform's ``R`` (``set_random_state(seed)`` makes a draw reproducible).
:func:`reconstruction_corruption` composes them with Models Genesis's rates and keeps the
original image as the target.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, CopyItemsd, Identityd, MapTransform, OneOf, RandomizableTransform
from monai.utils import convert_to_dst_type
from skimage.draw import ellipse, polygon

__all__ = [
    "RandGamma",
    "RandGammad",
    "RandIrregularInPaint",
    "RandIrregularInPaintd",
    "RandIrregularOutPaint",
    "RandIrregularOutPaintd",
    "SHAPES",
    "irregular_shapes",
    "reconstruction_corruption",
]

SHAPES = ("ellipse", "polygon", "blob")
Image = np.ndarray | torch.Tensor


def _shape_mask(kind: str, shape: tuple[int, int], centre: tuple[float, float], size: float,
                rng: np.random.RandomState) -> np.ndarray:
    """One filled non-rectangular shape of about ``size`` pixels across, centred at (row, col)."""
    mask = np.zeros(shape, bool)
    radius = size / 2
    if kind == "ellipse":
        rr, cc = ellipse(centre[0], centre[1], radius * rng.uniform(0.4, 1.0), radius * rng.uniform(0.4, 1.0),
                         shape=shape, rotation=rng.uniform(-np.pi, np.pi))
    elif kind == "polygon":  # star polygon: sorted angles, jittered radii
        n = int(rng.randint(5, 13))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.35, 1.0, n)
        rr, cc = polygon(centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles), shape=shape)
    elif kind == "blob":  # smooth outline r(theta) = R (1 + sum_k a_k sin(k theta + phi_k))
        r0, r1 = int(max(0, centre[0] - 1.6 * radius)), int(min(shape[0], centre[0] + 1.6 * radius + 1))
        c0, c1 = int(max(0, centre[1] - 1.6 * radius)), int(min(shape[1], centre[1] + 1.6 * radius + 1))
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        dy, dx = yy - centre[0], xx - centre[1]
        theta = np.arctan2(dy, dx)
        edge = 0.7 * radius * (1 + sum(rng.uniform(0.05, 0.3) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                                       for k in (2, 3, 5)))
        mask[r0:r1, c0:c1] = np.hypot(dy, dx) <= edge
        return mask
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")
    mask[rr, cc] = True
    return mask


def irregular_shapes(shape: tuple[int, int], rng: np.random.RandomState, count: int,
                     size_range: tuple[float, float]) -> np.ndarray:
    """Union of ``count`` random non-rectangular shapes, each ``size_range`` x the shorter side across.

    Returns a (rows, cols) bool mask. Centres are drawn so that each shape lies mostly inside.
    """
    if not 0 < size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be increasing positive fractions, got {size_range}")
    mask = np.zeros(shape, bool)
    side = min(shape)
    for _ in range(count):
        kind = SHAPES[int(rng.randint(len(SHAPES)))]
        size = side * rng.uniform(*size_range)
        margin = min(size / 2, side / 2 - 1)
        centre = (rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin))
        mask |= _shape_mask(kind, shape, centre, size, rng)
    return mask


class RandGamma(RandomizableTransform):
    """With probability ``prob``, ``img -> clip(img, 0, 1) ** gamma`` with log-uniform ``gamma``.

    The gamma transform replaces Models Genesis's non-linear intensity curve (Tardy & Mateus, Sec. 2):
    monotone, it keeps 0 and 1 and the order of intensities, and changes no pixel's position.
    """

    def __init__(self, prob: float = 0.9, gamma_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__(prob)
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range must be increasing and positive, got {gamma_range}")
        self.gamma_range = gamma_range
        self.gamma = 1.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.gamma = float(np.exp(self.R.uniform(np.log(self.gamma_range[0]), np.log(self.gamma_range[1]))))

    def __call__(self, img: Image, randomize: bool = True) -> Image:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        t = torch.as_tensor(img)
        return convert_to_dst_type(t.clamp(0, 1) ** self.gamma, img)[0]


class _RandIrregularPaint(RandomizableTransform):
    """Shared draw of the painting corruptions: a region of irregular shapes and uniform noise."""

    keep_inside: bool  # out-painting keeps the image inside the region; in-painting replaces it

    def __init__(self, prob: float, max_shapes: int, size_range: tuple[float, float]):
        super().__init__(prob)
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        self.max_shapes, self.size_range = max_shapes, size_range
        self.region: np.ndarray | None = None
        self.noise: np.ndarray | None = None

    def randomize(self, data: Image | None = None) -> None:
        """Draw the region and noise for an image like ``data`` (C, H, W)."""
        super().randomize(None)
        if not self._do_transform:
            return
        if data is None:
            raise ValueError("randomize needs the image (C, H, W) to size the corruption")
        spatial = tuple(int(s) for s in data.shape[-2:])
        count = int(self.R.randint(1, self.max_shapes + 1))
        self.region = irregular_shapes(spatial, self.R, count, self.size_range)
        self.noise = self.R.uniform(0.0, 1.0, size=spatial).astype(np.float32)

    def __call__(self, img: Image, randomize: bool = True) -> Image:
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self.region is None or self.noise is None or self.region.shape != tuple(img.shape[-2:]):
            raise ValueError(f"the drawn corruption does not fit an image of shape {tuple(img.shape)}")
        t = torch.as_tensor(img)
        region = torch.as_tensor(self.region, device=t.device)
        noise = torch.as_tensor(self.noise, dtype=t.dtype, device=t.device).expand_as(t)
        out = torch.where(region, t, noise) if self.keep_inside else torch.where(region, noise, t)
        return convert_to_dst_type(out, img)[0]


class RandIrregularInPaint(_RandIrregularPaint):
    """In-painting: 1 to ``max_shapes`` irregular holes filled with uniform noise in [0, 1).

    Sizes follow Models Genesis (1/6 to 1/3 of the side); pixels outside the holes are unchanged.
    After a draw, ``region`` is the (H, W) bool mask of the pixels it replaces.
    """

    keep_inside = False

    def __init__(self, prob: float = 1.0, max_shapes: int = 5, size_range: tuple[float, float] = (1 / 6, 1 / 3)):
        super().__init__(prob, max_shapes, size_range)


class RandIrregularOutPaint(_RandIrregularPaint):
    """Out-painting: keep 1 to ``max_shapes`` irregular windows, replace everything else with noise.

    Window sizes follow Models Genesis (3/7 to 4/7 of the side); pixels inside the windows are
    unchanged. After a draw, ``region`` is the (H, W) bool mask of the pixels it keeps.
    """

    keep_inside = True

    def __init__(self, prob: float = 1.0, max_shapes: int = 5, size_range: tuple[float, float] = (3 / 7, 4 / 7)):
        super().__init__(prob, max_shapes, size_range)


class _Randd(RandomizableTransform, MapTransform):
    """Dictionary wrapper: one draw (sized by the first key) applied to every key."""

    def __init__(self, keys: KeysCollection, prob: float, transform: RandomizableTransform,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _Randd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Image]) -> dict[Hashable, Image]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            return d
        self.transform.randomize(d[keys[0]])
        for key in keys:
            d[key] = self.transform(d[key], randomize=False)
        return d


class RandGammad(_Randd):
    """Dictionary version of :class:`RandGamma`."""

    def __init__(self, keys: KeysCollection, prob: float = 0.9, gamma_range: tuple[float, float] = (0.5, 2.0),
                 allow_missing_keys: bool = False):
        super().__init__(keys, prob, RandGamma(1.0, gamma_range), allow_missing_keys)


class RandIrregularInPaintd(_Randd):
    """Dictionary version of :class:`RandIrregularInPaint`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, max_shapes: int = 5,
                 size_range: tuple[float, float] = (1 / 6, 1 / 3), allow_missing_keys: bool = False):
        super().__init__(keys, prob, RandIrregularInPaint(1.0, max_shapes, size_range), allow_missing_keys)


class RandIrregularOutPaintd(_Randd):
    """Dictionary version of :class:`RandIrregularOutPaint`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, max_shapes: int = 5,
                 size_range: tuple[float, float] = (3 / 7, 4 / 7), allow_missing_keys: bool = False):
        super().__init__(keys, prob, RandIrregularOutPaint(1.0, max_shapes, size_range), allow_missing_keys)


def reconstruction_corruption(key: str = "image", target_key: str = "target", gamma_prob: float = 0.9,
                              paint_prob: float = 0.9, inpaint_rate: float = 0.2,
                              gamma_range: tuple[float, float] = (0.5, 2.0)) -> Compose:
    """The pretraining input/target pair: ``target_key`` = the original, ``key`` = its corrupted copy.

    Gamma with probability ``gamma_prob``; then, with probability ``paint_prob``, in-painting
    (a fraction ``inpaint_rate`` of the time) or out-painting, never both: Models Genesis's scheme
    and rates (0.9, 0.9, 0.2), without local shuffling. Seed it with ``set_random_state``.
    """
    if not (0 <= gamma_prob <= 1 and 0 <= paint_prob <= 1 and 0 <= inpaint_rate <= 1):
        raise ValueError("gamma_prob, paint_prob and inpaint_rate must lie in [0, 1]")
    painting = OneOf(
        [RandIrregularInPaintd(key), RandIrregularOutPaintd(key), Identityd(key)],
        weights=[paint_prob * inpaint_rate, paint_prob * (1 - inpaint_rate), 1 - paint_prob],
    )
    return Compose([CopyItemsd(key, names=target_key), RandGammad(key, gamma_prob, gamma_range), painting])
