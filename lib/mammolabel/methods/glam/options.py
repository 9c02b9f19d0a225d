"""Options of GLAM's train task ``train_glam`` (Liu et al., MIDL 2021); defaults are the paper's network."""

from __future__ import annotations

from dataclasses import dataclass

from mammolabel.methods.glam.network import STAGES, GlamConfig
from mammolabel.training.options import TrainOptions


@dataclass
class GlamOptions(TrainOptions):
    """Options of ``train_glam``; defaults are the paper's network at its 2944 x 1920 input.

    Attributes:
        rows, cols: input size (multiples of 64); the image is cropped to the breast first (``crop_breast``).
        patch_size: side of the square patches in input pixels (512; a multiple of 16).
        num_patches: K. global_width, local_width, local_depth: network sizes (16, 64, 34).
        t_global, t_local: top-t% pooling fractions (0.03 and 0.3 as in the authors' code).
        aggregation: ``concat`` or ``attention``.
        stage: ``global``, ``local``, ``joint`` or ``all`` (the three in turn).
        epochs (the base's), local_epochs, joint_epochs: epochs of the global, local and joint stages.
        beta: weight of the sparsity loss. lr: Adam learning rate of the global and local stages;
        joint_lr: of the joint stage. batch_size. augment: random vertical flips.
        small_radius_px: lesions with a smaller equivalent radius (pixels of the stored image)
        count as small in the evaluation (30 px: 6 mm on the 200 um MIAS films).
        patches: start the local module's ResNet from a ``pretrain_patches`` checkpoint of the same depth and
            width (Shen et al.; not in the paper, whose local module starts from ImageNet): ``auto`` (the
            model folder's, when there is one), a path, or empty (none).
    """

    rows: int = 2944
    cols: int = 1920
    crop_breast: bool = True
    patch_size: int = 512
    num_patches: int = 3
    global_width: int = 16
    local_width: int = 64
    local_depth: int = 34
    t_global: float = 0.03
    t_local: float = 0.3
    aggregation: str = "concat"
    stage: str = "all"
    local_epochs: int = 10
    joint_epochs: int = 5
    beta: float = 0.01
    lr: float = 1e-3
    joint_lr: float = 1e-4
    batch_size: int = 4
    augment: bool = True
    small_radius_px: float = 30.0
    patches: str = ""

    def problems(self) -> list[str]:
        problems = []
        if self.stage not in (*STAGES, "all"):
            problems.append(f"option 'stage' must be one of {', '.join((*STAGES, 'all'))}, got {self.stage!r}")
        if min(self.local_epochs, self.joint_epochs, self.batch_size) < 1:
            problems.append("epochs, local_epochs, joint_epochs and batch_size must be at least 1")
        if self.beta < 0 or self.lr <= 0 or self.joint_lr <= 0:
            problems.append("beta must be >= 0 and the learning rates > 0")
        try:
            config = self.network_config()
        except ValueError as e:
            return [*problems, f"invalid network options: {e}"]
        if self.rows % config.total_stride or self.cols % config.total_stride:
            problems.append(f"options 'rows' and 'cols' must be multiples of {config.total_stride}, "
                            f"got {self.rows} x {self.cols}")
        if self.patch_size > min(self.rows, self.cols):
            problems.append(f"option 'patch_size' ({self.patch_size}) must fit the input ({self.rows} x {self.cols})")
        return problems

    def network_config(self) -> GlamConfig:
        """The network these options describe (stored in the checkpoint as ``network``)."""
        return GlamConfig(global_width=self.global_width, local_width=self.local_width, local_depth=self.local_depth,
                          num_patches=self.num_patches, patch_size=(self.patch_size, self.patch_size),
                          t_global=self.t_global, t_local=self.t_local, aggregation=self.aggregation)

    def frame(self) -> dict[str, int | bool]:
        """The input frame (stored in the checkpoint as ``frame``)."""
        return {"rows": self.rows, "cols": self.cols, "crop_breast": self.crop_breast}

    def stage_epochs(self, stage: str) -> int:
        return {"global": self.epochs, "local": self.local_epochs, "joint": self.joint_epochs}[stage]
