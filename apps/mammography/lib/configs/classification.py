"""Model ``classification``: Dahl et al. Holistic + Attention ResNets (train task ``train_classifier``)."""

from mammolabel.tasks.config import MethodConfig


class Classification(MethodConfig):
    pass
