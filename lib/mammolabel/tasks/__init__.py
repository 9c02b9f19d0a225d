"""MONAI Label adapters (infer, train, strategy, scoring) and the registry the app and CLI share.

Every method of :mod:`mammolabel.methods` is served by :class:`MethodInferTask` and one
:class:`MammoTrainTask` per trainer; a task without a method (``breast_region``) subclasses
:class:`MammoInferTask` with a ``name`` in a module of this package.
"""

from __future__ import annotations

import importlib
import pkgutil

from mammolabel.errors import NotFoundError
from mammolabel.methods import methods
from mammolabel.tasks.infer import MammoInferTask, MethodInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask


def _subclasses(base: type) -> dict[str, type]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found, todo = {}, list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if getattr(cls, "name", "") and not hasattr(cls, "method"):
            found[cls.name] = cls
    return dict(sorted(found.items()))


def infer_tasks() -> dict[str, type[MammoInferTask]]:
    """Infer task classes by name."""
    found = _subclasses(MammoInferTask)
    found.update({name: MethodInferTask.for_method(m) for name, m in methods().items()})
    return dict(sorted(found.items()))


def train_tasks() -> dict[str, type[MammoTrainTask]]:
    """Train task classes by name."""
    found = _subclasses(MammoTrainTask)
    found.update({t.name: MammoTrainTask.for_trainer(m, t) for m in methods().values() for t in m.trainers})
    return dict(sorted(found.items()))


def lookup(registry: dict[str, type], name: str, what: str) -> type:
    """The class called ``name``, or a :class:`NotFoundError` that lists the known names."""
    if name not in registry:
        raise NotFoundError(f"unknown {what} '{name}'; known: {', '.join(registry) or 'none'}")
    return registry[name]


__all__ = ["MammoInferTask", "MammoTrainTask", "MethodInferTask", "Prediction", "infer_tasks", "lookup", "train_tasks"]
