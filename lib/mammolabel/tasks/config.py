"""The MONAI Label ``TaskConfig`` of any method: its infer task and its train tasks, with the checkpoints
the app serves (the site-trained one in the model folder, else the shipped one matching the data)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from mammolabel.methods import methods
from mammolabel.tasks.infer import MethodInferTask
from mammolabel.tasks.train import MammoTrainTask
from mammolabel.zoo import checkpoint_paths


class MethodConfig(TaskConfig):
    """An app's ``lib/configs/<task>.py`` is one subclass of this, named after the file (the method's task)."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.method = methods()[name]
        self.labels = dict(self.method.labels)
        self.model_dir = model_dir
        self.path = checkpoint_paths(name, model_dir, conf)  # shipped first, site-trained last

    def infer(self) -> MethodInferTask:
        return MethodInferTask.for_method(self.method)(path=self.path)

    def trainer(self) -> dict[str, MammoTrainTask]:
        return {t.name: MammoTrainTask.for_trainer(self.method, t)(self.model_dir, shipped=self.path[0])
                for t in self.method.trainers}
