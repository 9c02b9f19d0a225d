"""Options of ``train_cam_self_training``; the defaults are the paper's (section II-D, III-A)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mammolabel.methods.liang.network import LiangConfig
from mammolabel.training.options import TrainOptions

#: The method's name, stored in its checkpoints and run identities.
NAME = "liang"

#: Findings counted as the positive class, by the ``positive`` option.
POSITIVE_FINDINGS = {"abnormal": ("benign", "malignant"), "malignant": ("malignant",)}


@dataclass
class LiangOptions(TrainOptions):
    """Options of ``train_cam_self_training``.

    ``epochs`` is the classifier stage; each self-training round runs ``self_training_epochs``.
    The input is a ``size`` x ``size`` square (the paper's rotations keep its shape).
    ``negatives_background``: the paper derives every trimap from a heatmap; for an image whose
    finding is normal the image label already says that no pixel is a lesion, so its trimap is
    all background (set False to use its CAM trimap like any other image).
    ``breast_only``: pixels outside the breast (the largest bright component) are set to 0 in the
    input, and every map is normalised within the breast and 0 outside it, in training and
    inference alike (not in the paper, whose digital images have an empty background).
    ``point_threshold``, ``max_points`` and ``peak_distance`` (fraction of the input side) define
    the predicted points: local maxima of the fused map; ``heat_low`` < ``heat_mid`` < ``heat_high``
    the labelmap's heat levels (labels 2, 3, 4).
    """

    size: int = 832
    width: float = 1.0
    head_channels: int = 1024
    first_channels: int = 512
    shared_channels: int = 512
    temperature: float = 1.0
    positive: str = "abnormal"
    crop_breast: bool = True
    breast_only: bool = True
    augment_positives: bool = True
    negatives_background: bool = True
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    self_training_epochs: int = 10
    t_f: float = 0.6
    t_b: float = 0.1
    point_threshold: float = 0.5
    max_points: int = 3
    peak_distance: float = 0.04
    heat_low: float = 0.3
    heat_mid: float = 0.5
    heat_high: float = 0.7

    def problems(self) -> list[str]:
        problems = []
        if self.positive not in POSITIVE_FINDINGS:
            problems.append(f"option 'positive' must be one of {', '.join(POSITIVE_FINDINGS)}, got {self.positive!r}")
        if self.size < 32 or self.size % 32:
            problems.append(f"option 'size' must be a multiple of 32 (the classifier's stride), got {self.size}")
        if not 0 <= self.t_b <= self.t_f <= 1:
            problems.append(f"need 0 <= t_b <= t_f <= 1, got t_b={self.t_b}, t_f={self.t_f}")
        if self.batch_size < 1 or self.self_training_epochs < 1:
            problems.append("batch_size, epochs and self_training_epochs must be at least 1")
        levels = self.levels()
        if levels != sorted(levels) or not all(0 < v <= 1 for v in levels):
            problems.append(f"option 'heat_levels' (heat_low, heat_mid, heat_high) must increase within (0, 1], "
                            f"got {levels}")
        return problems

    def levels(self) -> list[float]:
        """The labelmap's heat levels, labels 2, 3 and 4."""
        return [self.heat_low, self.heat_mid, self.heat_high]

    def network_config(self) -> LiangConfig:
        return LiangConfig(width=self.width, head_channels=self.head_channels, first_channels=self.first_channels,
                           shared_channels=self.shared_channels, temperature=self.temperature)

    def frame(self) -> dict[str, Any]:
        """The checkpoint's input ``frame``."""
        return {"rows": self.size, "cols": self.size, "crop_breast": self.crop_breast}


def stored_options(values: dict[str, Any]) -> LiangOptions:
    """The options a checkpoint stores; those of older checkpoints give their ``heat_levels`` text
    (``"0.3,0.5,0.7"``) as ``heat_low``, ``heat_mid`` and ``heat_high``."""
    values = dict(values)
    if isinstance(values.get("heat_levels"), str):
        low, mid, high = (float(v) for v in values.pop("heat_levels").split(","))
        values.update(heat_low=low, heat_mid=mid, heat_high=high)
    return LiangOptions.parse(values, "localization")
