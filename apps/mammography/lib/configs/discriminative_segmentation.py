"""Model ``discriminative_segmentation``: Tardy & Mateus's subtraction U-Net for malignant regions.

Two train tasks: ``pretrain_reconstruction`` (self-supervised, normal/benign images) and
``train_discriminative`` (malignant images with masks, from the stage-1 checkpoint when present).
"""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.tardy import (
    CHECKPOINT,
    MALIGNANT,
    DiscriminativeSegmentationInfer,
    PretrainReconstructionTrain,
    TrainDiscriminativeTrain,
)
from mammolabel.zoo import checkpoint_paths


class DiscriminativeSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = {"malignant": MALIGNANT}
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self):
        return DiscriminativeSegmentationInfer(path=self.path)

    def trainer(self):
        return {
            PretrainReconstructionTrain.name: PretrainReconstructionTrain(self.model_dir, shipped=self.path[0]),
            TrainDiscriminativeTrain.name: TrainDiscriminativeTrain(self.model_dir, shipped=self.path[0]),
        }
