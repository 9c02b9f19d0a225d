"""Model ``glam_segmentation``: benign/malignant segmentation from image labels (GLAM), trained by ``train_glam``."""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.glam import LABELS, GlamSegmentationInfer, TrainGlam
from mammolabel.zoo import checkpoint_paths


class GlamSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self):
        return GlamSegmentationInfer(path=self.path)

    def trainer(self):
        return {TrainGlam.name: TrainGlam(model_dir=self.model_dir, shipped=self.path[0])}
