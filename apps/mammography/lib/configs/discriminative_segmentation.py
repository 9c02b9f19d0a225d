"""Model ``discriminative_segmentation``: Tardy & Mateus's subtraction U-Net for malignant regions.

Two train tasks: ``pretrain_reconstruction`` (self-supervised, normal/benign images) and
``train_discriminative`` (malignant images with masks, from the stage-1 checkpoint when present).
"""

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.tardy import (
    CHECKPOINT,
    MALIGNANT,
    DiscriminativeSegmentationInfer,
    PretrainReconstructionTrain,
    TrainDiscriminativeTrain,
)


class DiscriminativeSegmentation(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = {"malignant": MALIGNANT}
        self.path = os.path.join(model_dir, f"{CHECKPOINT}.pt")

    def infer(self):
        return DiscriminativeSegmentationInfer(path=self.path)

    def trainer(self):
        return {
            PretrainReconstructionTrain.name: PretrainReconstructionTrain(self.model_dir),
            TrainDiscriminativeTrain.name: TrainDiscriminativeTrain(self.model_dir),
        }
