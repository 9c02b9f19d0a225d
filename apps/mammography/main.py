"""MammoLabel: the MONAI Label app serving every MammoLabel task.

Each ``lib/configs/<model>.py`` holds one ``TaskConfig``; ``--conf models all`` (the default) or a
comma-separated list picks which are served. Everything else (datastore, strategies, checkpoints,
DICOMweb) is :class:`mammolabel.tasks.app.MammoApp`'s; the work itself lives in the ``mammolabel`` library.
"""

import importlib
import inspect
import pkgutil

import lib.configs
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig

from mammolabel.errors import InputError
from mammolabel.tasks import app


def config_classes() -> dict[str, type[TaskConfig]]:
    """The ``TaskConfig`` defined in each ``lib/configs/<model>.py``, by model name."""
    found = {}
    for module in pkgutil.iter_modules(lib.configs.__path__):
        loaded = importlib.import_module(f"lib.configs.{module.name}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(cls, TaskConfig) and cls.__module__ == loaded.__name__:
                found[module.name] = cls
    return found


class MammoLabelApp(app.MammoApp, MONAILabelApp):
    def task_configs(self, conf: dict[str, str]) -> dict[str, TaskConfig]:
        classes = config_classes()
        wanted = [m.strip() for m in conf.get("models", "all").split(",") if m.strip()]
        unknown = [m for m in wanted if m != "all" and m not in classes]
        if unknown:
            raise InputError(f"unknown model(s) {unknown}; available: all, {', '.join(sorted(classes))}")
        models: dict[str, TaskConfig] = {}
        for name in sorted(classes):
            if "all" in wanted or name in wanted:
                models[name] = classes[name]()
                models[name].init(name, self.model_dir, conf, None)
        return models
