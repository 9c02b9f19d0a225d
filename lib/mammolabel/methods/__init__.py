"""The five published methods, one package each (network, loss, options, training stages, inference,
evaluation rows), all implementing :class:`mammolabel.methods.contract.Method`.

A package ``mammolabel.methods.<name>`` is a method when it defines ``METHOD``; :func:`methods`
finds them all, so adding a method adds no line here.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from mammolabel.methods.contract import Method


@cache
def methods() -> dict[str, Method]:
    """Every method by its infer task's name."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            method = getattr(importlib.import_module(f"{__name__}.{module.name}"), "METHOD", None)
            if isinstance(method, Method):
                found[method.task] = method
    return dict(sorted(found.items()))
