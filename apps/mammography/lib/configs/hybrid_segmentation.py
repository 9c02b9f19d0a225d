"""Model ``hybrid_segmentation``: Xiong et al. hybrid strong/weak mass segmentation (train task ``train_hybrid``)."""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.xiong import LABELS, HybridSegmentationInfer, TrainHybrid
from mammolabel.zoo import checkpoint_paths


class HybridSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self):
        return HybridSegmentationInfer(path=self.path)

    def trainer(self):
        return {TrainHybrid.name: TrainHybrid(model_dir=self.model_dir, shipped=self.path[0])}
