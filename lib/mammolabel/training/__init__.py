"""Training and evaluation engines shared by the CLI and the MONAI Label tasks."""

from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.loop import FitOptions, FitResult, fit, resolve_device, to_device

__all__ = ["FitOptions", "FitResult", "fit", "load_checkpoint", "resolve_device", "save_checkpoint", "to_device"]
