"""Metrics (Dice, localisation hit rate, AUC) and the pictures evaluation writes."""

from mammolabel.metrics.core import auc, dice, point_hits, roc

__all__ = ["auc", "dice", "point_hits", "roc"]
