"""Model ``hybrid_segmentation``: Xiong et al. hybrid strong/weak mass segmentation (train task ``train_hybrid``)."""

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.xiong import LABELS, HybridSegmentationInfer, TrainHybrid


class HybridSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = os.path.join(model_dir, f"{HybridSegmentationInfer.name}.pt")

    def infer(self):
        return HybridSegmentationInfer(path=self.path)

    def trainer(self):
        return {TrainHybrid.name: TrainHybrid(model_dir=self.model_dir)}
