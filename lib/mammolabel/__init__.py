"""MammoLabel: mammography methods, weak labels and active learning for MONAI Label."""

from mammolabel.errors import InputError, MammoLabelError, ModelNotTrainedError

__version__ = "0.1.0"
__all__ = ["InputError", "MammoLabelError", "ModelNotTrainedError", "__version__"]
