"""MONAI-style dictionary transforms for mammograms."""

from mammolabel.transforms.io import LoadMammogramd

__all__ = ["LoadMammogramd"]
