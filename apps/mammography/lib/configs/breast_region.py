"""Model ``breast_region``: breast and pectoral muscle, classical (no checkpoint, no training)."""

from mammolabel.tasks.breast_region import BreastRegionConfig


class BreastRegion(BreastRegionConfig):
    pass
