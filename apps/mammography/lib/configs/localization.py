"""Model ``localization``: lesion points and heatmap (Liang et al.), trained by ``train_cam_self_training``."""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.liang import LABELS, CamSelfTrainingTrain, LocalizationInfer
from mammolabel.zoo import checkpoint_paths


class Localization(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self):
        return LocalizationInfer(path=self.path)

    def trainer(self):
        return {CamSelfTrainingTrain.name: CamSelfTrainingTrain(model_dir=self.model_dir, shipped=self.path[0])}
