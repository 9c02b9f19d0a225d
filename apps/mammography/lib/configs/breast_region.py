"""Model ``breast_region``: breast and pectoral muscle, classical (no checkpoint, no training)."""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.breast_region import BreastRegionInfer


class BreastRegion(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = {"breast": 1, "pectoral_muscle": 2}

    def infer(self):
        return BreastRegionInfer()

    def trainer(self):
        return None
