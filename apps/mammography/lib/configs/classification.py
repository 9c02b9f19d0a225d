"""Model ``classification``: Dahl et al. Holistic + Attention ResNets (train task ``train_classifier``)."""

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.engines.dahl import LABELS
from mammolabel.tasks.dahl import ClassificationInfer, ClassifierTrain
from mammolabel.zoo import checkpoint_paths


class Classification(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.model_dir = model_dir
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self):
        return ClassificationInfer(path=self.path)

    def trainer(self):
        return {ClassifierTrain.name: ClassifierTrain(self.model_dir, shipped=self.path[0])}
