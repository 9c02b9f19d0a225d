"""Model ``localization``: lesion points and heatmap (Liang et al.), trained by ``train_cam_self_training``."""

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.liang import LABELS, CamSelfTrainingTrain, LocalizationInfer


class Localization(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = [os.path.join(model_dir, f"{CamSelfTrainingTrain.checkpoint_name}.pt")]

    def infer(self):
        return LocalizationInfer(path=self.path[0])

    def trainer(self):
        return {CamSelfTrainingTrain.name: CamSelfTrainingTrain(model_dir=self.model_dir)}
