"""Model ``hybrid_segmentation``: Xiong et al. hybrid strong/weak mass segmentation (train task ``train_hybrid``)."""

from mammolabel.tasks.config import MethodConfig


class HybridSegmentation(MethodConfig):
    pass
