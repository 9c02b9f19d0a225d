"""Model ``discriminative_segmentation``: Tardy & Mateus's subtraction U-Net for malignant regions
(train tasks ``pretrain_reconstruction``, then ``train_discriminative``)."""

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.config import MethodConfig


class DiscriminativeSegmentation(MethodConfig, TaskConfig):
    """``TaskConfig`` is named among the bases because MONAI Label finds a config by its direct bases' names."""
