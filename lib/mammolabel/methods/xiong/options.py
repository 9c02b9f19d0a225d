"""Options of ``train_hybrid``: the paper's configuration (Sec. 3.2) as defaults, sizes reducible for CPU runs."""

from __future__ import annotations

from dataclasses import dataclass

from mammolabel.methods.xiong.network import STRIDE, HybridConfig
from mammolabel.networks.backbones import LAYERS
from mammolabel.training.options import TrainOptions

MODES = ("hybrid", "strong_only")


@dataclass
class HybridTrainOptions(TrainOptions):
    """Options of ``train_hybrid`` (``epochs``, ``device``, ``val_fraction``, ``seed``, ``resume``: the base's).

    Attributes:
        rows, cols: network input size (352 x 352 in the paper; multiples of 32).
        crop_breast: crop to the breast before resizing.
        depth, width: ResNet encoder depth (34) and first-stage width (64).
        fd, spm, pl: feature disentanglement, spatial prompting, perception loss (ablation switches).
        mode: "hybrid" or "strong_only" (masks only, no auxiliary branch).
        strong_fraction: share of the training lesion images that keep their mask (1 = all masks).
        normals: also train on normal films (an empty mask, everything definite background).
        batch_size, lr, poly_power: optimisation (8, 1e-4, 0.9).
        steps_per_epoch: optimisation steps per epoch (0 = one pass over the training images);
            set it to compare runs on different numbers of images with the same number of steps.
        threshold: probability above which a pixel is lesion (stored as the checkpoint's ``lesion`` threshold).
        ppa_kernel: averaging window of the pixel-position-aware weights.
        lesion_fraction: share of encoder channels that become lesion-related features.
        init_encoder: a MammoLabel checkpoint whose ResNet encoder initialises ours ("" = random init).
    """

    epochs: int = 50
    rows: int = 352
    cols: int = 352
    crop_breast: bool = True
    depth: int = 34
    width: int = 64
    fd: bool = True
    spm: bool = True
    pl: bool = True
    mode: str = "hybrid"
    strong_fraction: float = 1.0
    normals: bool = False
    batch_size: int = 8
    lr: float = 1e-4
    poly_power: float = 0.9
    steps_per_epoch: int = 0
    threshold: float = 0.5
    ppa_kernel: int = 31
    lesion_fraction: float = 0.5
    init_encoder: str = ""

    def problems(self) -> list[str]:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.strong_fraction <= 1:
            problems.append(f"strong_fraction must lie in (0, 1], got {self.strong_fraction}")
        if self.rows < STRIDE or self.cols < STRIDE or self.rows % STRIDE or self.cols % STRIDE:
            problems.append(f"rows and cols must be positive multiples of {STRIDE}, got {self.rows} x {self.cols}")
        if self.batch_size < 1 or self.steps_per_epoch < 0 or self.lr <= 0:
            problems.append("batch_size must be >= 1, steps_per_epoch >= 0 and lr > 0")
        if not 0 < self.threshold < 1:
            problems.append(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.ppa_kernel < 1 or self.ppa_kernel % 2 == 0:
            problems.append(f"ppa_kernel must be odd and positive, got {self.ppa_kernel}")
        if not 0 < self.lesion_fraction < 1:
            problems.append(f"lesion_fraction must lie in (0, 1), got {self.lesion_fraction}")
        if self.depth not in LAYERS:
            problems.append(f"depth must be one of {sorted(LAYERS)}, got {self.depth}")
        if self.width < 4:
            problems.append(f"width must be at least 4, got {self.width}")
        return problems

    def network(self) -> HybridConfig:
        """Network settings implied by the options (strong_only = plain U-Net)."""
        hybrid = self.mode == "hybrid"
        return HybridConfig(depth=self.depth, width=self.width, auxiliary=hybrid, disentangle=hybrid and self.fd,
                            spatial_prompt=hybrid and self.spm, lesion_fraction=self.lesion_fraction)

    def frame(self) -> dict[str, int | bool]:
        """The input frame the checkpoint records."""
        return {"rows": self.rows, "cols": self.cols, "crop_breast": self.crop_breast}
