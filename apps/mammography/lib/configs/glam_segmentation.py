"""Model ``glam_segmentation``: benign/malignant segmentation from image labels (GLAM), trained by ``train_glam``."""

from mammolabel.tasks.config import MethodConfig


class GlamSegmentation(MethodConfig):
    pass
