"""Base class of every MammoLabel train task, run by MONAI Label (``/train/<name>``) and the CLI.

A task declares its ``name``, the checkpoint it writes and its options with defaults; it
implements :meth:`run` on the datastore's :class:`LabelInventory`. Options arriving as strings
(from 3D Slicer or the CLI) are converted to the type of their default. MONAI Label's ``multi_gpu``
and ``gpus`` run the task in several processes (:mod:`mammolabel.engines.distributed`); every run is
tracked in MLflow (:mod:`mammolabel.engines.tracking`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from mammolabel.data.datastore import LabelInventory, collect_labels
from mammolabel.engines import distributed, tracking
from mammolabel.engines.loop import stats_path
from mammolabel.errors import InputError
from mammolabel.tasks.limits import check_limits

logger = logging.getLogger("mammolabel")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` or raise a clear :class:`InputError`."""
    if default is None or type(value) is type(default):
        return value
    try:
        if isinstance(default, bool):
            text = str(value).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError(text)
            return text in _TRUE
        if isinstance(default, int):
            return int(str(value))
        if isinstance(default, float):
            return float(str(value))
        return type(default)(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"option '{name}': cannot use {value!r} as {type(default).__name__}") from e


class MammoTrainTask(TrainTask):
    """Train task base. Subclasses set ``name``, ``checkpoint_name`` and ``defaults`` and implement ``run``."""

    name: str = ""
    checkpoint_name: str = ""  # file stem in the model folder, usually the infer task's name
    defaults: dict[str, Any] = {}

    def __init__(self, model_dir: str | Path, description: str, defaults: dict[str, Any] | None = None):
        super().__init__(description)
        self.model_dir = Path(model_dir)
        self._defaults = {"epochs": 10, "device": "auto", "val_fraction": 0.2, "seed": 0, "resume": True,
                          "multi_gpu": False, "gpus": "all"}
        self._defaults.update(self.defaults)
        self._defaults.update(defaults or {})

    @property
    def path(self) -> Path:
        """Default checkpoint path of this task."""
        return self.model_dir / f"{self.checkpoint_name or self.name}.pt"

    def config(self) -> dict[str, Any]:
        return dict(self._defaults)

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated with the request's known keys, each converted to its default's type."""
        opts = dict(self._defaults)
        for key, value in request.items():
            if key in opts:
                opts[key] = coerce(key, value, self._defaults[key])
        if opts["epochs"] < 1:
            raise InputError("option 'epochs' must be at least 1")
        check_limits(opts)
        return opts

    def check(self, options: dict[str, Any]) -> None:
        """Refuse options that :meth:`run` would refuse, without training (before a background run is queued)."""

    def stats(self) -> dict[str, Any]:
        path = stats_path(self.path)
        return json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        opts = self.options(request)
        out = Path(request.get("checkpoint") or self.path)
        processes, gpus = distributed.processes_for(opts["multi_gpu"], opts["gpus"], opts["device"])
        if processes > 1:
            request = {**request, "multi_gpu": False, "checkpoint": str(out)}
            job = distributed.Job(self.name, str(self.model_dir), request, distributed.studies_of(datastore))
            return distributed.launch(job, processes, visible_gpus=gpus)
        inventory = collect_labels(datastore)
        logger.info(f"{self.name}: {len(inventory.images)} images; labels {dict(inventory.counts)}; options {opts}")
        with tracking.training_run(self.name, opts, dict(inventory.counts), out, self.model_dir):
            summary = self.run(inventory, opts, out)
            tracking.log_summary(summary)
        return summary

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        """Train on ``inventory`` and write the checkpoint to ``out``; return a summary."""
        raise NotImplementedError
