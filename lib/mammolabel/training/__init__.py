"""Training shared by every method (no MONAI Label here): the fit loop, options, stages, checkpoints."""

from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.loop import FitOptions, FitResult, fit, resolve_device, to_device

__all__ = ["FitOptions", "FitResult", "fit", "load_checkpoint", "resolve_device", "save_checkpoint", "to_device"]
