"""Model ``localization``: lesion points and heatmap (Liang et al.), trained by ``train_cam_self_training``."""

from mammolabel.tasks.config import MethodConfig


class Localization(MethodConfig):
    pass
