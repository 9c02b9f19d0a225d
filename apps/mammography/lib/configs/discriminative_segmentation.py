"""Model ``discriminative_segmentation``: Tardy & Mateus's subtraction U-Net for malignant regions
(train tasks ``pretrain_reconstruction``, then ``train_discriminative``)."""

from mammolabel.tasks.config import MethodConfig


class DiscriminativeSegmentation(MethodConfig):
    pass
