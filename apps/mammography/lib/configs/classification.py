"""Model ``classification``: Dahl et al. Holistic + Attention ResNets (train task ``train_classifier``)."""

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.engines.dahl import LABELS
from mammolabel.tasks.dahl import ClassificationInfer, ClassifierTrain


class Classification(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, f"{ClassifierTrain.checkpoint_name}.pt")

    def infer(self):
        return ClassificationInfer(path=self.path)

    def trainer(self):
        return {ClassifierTrain.name: ClassifierTrain(self.model_dir)}
