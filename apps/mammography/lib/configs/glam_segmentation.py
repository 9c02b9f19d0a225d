"""Model ``glam_segmentation``: benign/malignant segmentation from image labels (GLAM), trained by ``train_glam``."""

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.glam import LABELS, GlamSegmentationInfer, TrainGlam


class GlamSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = [os.path.join(model_dir, f"{TrainGlam.checkpoint_name}.pt")]

    def infer(self):
        return GlamSegmentationInfer(path=self.path[0])

    def trainer(self):
        return {TrainGlam.name: TrainGlam(model_dir=self.model_dir)}
