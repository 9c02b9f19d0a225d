"""MONAI Label adapters (infer, train, strategy, scoring) and the registry the app and CLI share.

Every module of this package is imported by :func:`infer_tasks` / :func:`train_tasks`; a task is
registered by subclassing :class:`MammoInferTask` or :class:`MammoTrainTask` with a ``name``.
"""

from __future__ import annotations

import importlib
import pkgutil

from mammolabel.errors import NotFoundError
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask


def _subclasses(base: type) -> dict[str, type]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found, todo = {}, list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if getattr(cls, "name", ""):
            found[cls.name] = cls
    return dict(sorted(found.items()))


def infer_tasks() -> dict[str, type[MammoInferTask]]:
    """Infer task classes by name."""
    return _subclasses(MammoInferTask)


def train_tasks() -> dict[str, type[MammoTrainTask]]:
    """Train task classes by name."""
    return _subclasses(MammoTrainTask)


def lookup(registry: dict[str, type], name: str, what: str) -> type:
    """The class called ``name``, or a :class:`NotFoundError` that lists the known names."""
    if name not in registry:
        raise NotFoundError(f"unknown {what} '{name}'; known: {', '.join(registry) or 'none'}")
    return registry[name]


__all__ = ["MammoInferTask", "MammoTrainTask", "Prediction", "infer_tasks", "lookup", "train_tasks"]
