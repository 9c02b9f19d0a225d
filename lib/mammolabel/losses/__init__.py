"""Losses from the papers, as MONAI-style _Loss subclasses."""
