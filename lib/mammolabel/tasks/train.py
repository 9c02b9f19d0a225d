"""The train task of any method's :class:`~mammolabel.methods.contract.Trainer`, run by MONAI Label
(``/train/<name>``) and the CLI.

A trainer declares its ``name``, the checkpoint it writes, its options (defaults: the paper's
configuration) and its ``cpu`` preset; :meth:`MammoTrainTask.run` hands it the datastore's
:class:`LabelInventory`, the parsed options and the starting weights. Options arriving as strings (from 3D Slicer or the CLI) are converted to
the type of their default. ``preset`` (``auto``: ``cpu`` without a GPU, ``paper`` with one) fills
the options the request does not give; ``init`` (``auto``: the checkpoint the server answers with,
site-trained or shipped) gives the starting weights, ``scratch`` none. MONAI Label's ``multi_gpu``
and ``gpus`` run the task in several processes (:mod:`mammolabel.training.distributed`); every run is
tracked in MLflow (:mod:`mammolabel.training.tracking`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from mammolabel.data.datastore import LabelInventory, collect_labels
from mammolabel.tasks import launch
from mammolabel.training import distributed, tracking
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.options import coerce
from mammolabel.errors import InputError
from mammolabel.methods.contract import Method, Trainer
from mammolabel.tasks.limits import check_limits
from mammolabel.zoo import stamp

logger = logging.getLogger("mammolabel")

PRESETS = ("paper", "cpu")


def auto_preset() -> tuple[str, str]:
    """``cpu`` without a CUDA GPU, ``paper`` with one, and why."""
    if torch.cuda.is_available():
        return "paper", f"a CUDA GPU is present ({torch.cuda.get_device_name(0)})"
    return "cpu", "no CUDA GPU is present"


class MammoTrainTask(TrainTask):
    """The train task of one :class:`Trainer` (one subclass per trainer, made by :meth:`for_trainer`)."""

    name: str = ""
    checkpoint_name: str = ""  # file stem in the model folder, usually the infer task's name
    defaults: dict[str, Any] = {}
    cpu_preset: dict[str, Any] = {}
    method: Method
    trainer: Trainer

    @classmethod
    def for_trainer(cls, method: Method, trainer: Trainer) -> type[MammoTrainTask]:
        """This task's class for ``trainer`` of ``method`` (the same class on every call)."""
        made = _TRAIN_CLASSES.get(trainer.name)
        if made is None:
            made = type("".join(w.title() for w in trainer.name.split("_")), (cls,), {
                "name": trainer.name, "checkpoint_name": trainer.checkpoint or method.task,
                "defaults": trainer.options().to_dict(), "cpu_preset": dict(trainer.cpu_preset),
                "method": method, "trainer": trainer, "__doc__": trainer.description, "__module__": cls.__module__})
            _TRAIN_CLASSES[trainer.name] = made
        return made

    def __init__(self, model_dir: str | Path, description: str | None = None, defaults: dict[str, Any] | None = None,
                 shipped: str | Path | None = None):
        super().__init__(description or self.trainer.description)
        self.model_dir = Path(model_dir)
        self.shipped = Path(shipped) if shipped else None
        self._defaults = {"epochs": 10, "device": "auto", "val_fraction": 0.2, "seed": 0, "resume": True,
                          "multi_gpu": False, "gpus": "all"}
        self._defaults.update(self.defaults)
        self._defaults.update(defaults or {})
        self._defaults.update(preset="auto", init="auto")

    @property
    def path(self) -> Path:
        """Default checkpoint path of this task."""
        return self.model_dir / f"{self.checkpoint_name or self.name}.pt"

    def config(self) -> dict[str, Any]:
        return dict(self._defaults)

    def presets(self) -> dict[str, dict[str, Any]]:
        """Each preset's option values: ``paper`` (the defaults) and ``cpu``."""
        return {"paper": {}, "cpu": dict(self.cpu_preset)}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "presets": self.presets(), "auto_preset": auto_preset()[0]}

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """Defaults, then the preset's values, then the request's known keys, each converted to its default's type."""
        preset = str(request.get("preset") or "auto").strip().lower()
        if preset == "auto":
            preset, why = auto_preset()
            logger.info(f"{self.name}: preset '{preset}' because {why}")
        if preset not in PRESETS:
            raise InputError(f"option 'preset': unknown preset {preset!r}; known: auto, {', '.join(PRESETS)}")
        opts = {**self._defaults, **self.presets()[preset], "preset": preset}
        for key, value in request.items():
            if key in opts and key != "preset":
                opts[key] = coerce(key, value, self._defaults[key])
        if opts["epochs"] < 1:
            raise InputError("option 'epochs' must be at least 1")
        check_limits(opts)
        return opts

    def check(self, options: dict[str, Any]) -> None:
        """Refuse options that :meth:`run` would refuse, without training (before a background run is queued)."""
        self.trainer.options.parse(options, self.name)

    def initial_weights(self, init: str, out: Path) -> Path | None:
        """The checkpoint training starts from: ``auto`` = the one the server answers with (the site-trained
        checkpoint ``out`` if it exists, else the shipped one); ``scratch`` = none."""
        init = str(init).strip().lower()
        if init == "scratch":
            return None
        if init != "auto":
            raise InputError(f"option 'init' must be auto (fine-tune the served checkpoint) or scratch; got {init!r}")
        if out.is_file():
            return out
        return self.shipped if self.shipped and self.shipped.is_file() else None

    def stats(self) -> dict[str, Any]:
        """Progress of the latest stage this task ran (``<checkpoint>.stats.json`` or a stage's)."""
        found = sorted(self.path.parent.glob(f"{self.path.stem}*.stats.json"), key=lambda p: p.stat().st_mtime_ns)
        return json.loads(found[-1].read_text()) if found else {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        opts = self.options(request)
        out = Path(request.get("checkpoint") or self.path)
        processes, gpus = distributed.processes_for(opts["multi_gpu"], opts["gpus"], opts["device"])
        if processes > 1:
            request = {**request, "multi_gpu": False, "checkpoint": str(out)}
            job = launch.Job(self.name, str(self.model_dir), request, launch.studies_of(datastore))
            return launch.launch(job, processes, visible_gpus=gpus)
        inventory = collect_labels(datastore)
        return self.train(inventory, opts, out, getattr(datastore, "_datastore_path", None))

    def train(self, inventory: LabelInventory, opts: dict[str, Any], out: Path, studies: str | None = None
              ) -> dict[str, Any]:
        """:meth:`run` from the initial weights ``opts['init']`` names, tracked in MLflow; the checkpoint is
        stamped with the preset, date, label counts and starting weights (:func:`mammolabel.zoo.stamp`)."""
        if self.shipped and out.resolve() == self.shipped.resolve():
            raise InputError(f"{out} is a shipped checkpoint; train into the model folder instead")
        start = self.initial_weights(opts["init"], out)
        logger.info(f"{self.name}: {len(inventory.images)} images; labels {dict(inventory.counts)}; "
                    f"starting from {start or 'random weights'}; options {opts}")
        with tracking.training_run(self.name, opts, dict(inventory.counts), out, self.model_dir):
            summary = self.run(inventory, opts, out, start)
            if out.is_file():
                ckpt = stamp(load_checkpoint(out), self.name, opts["preset"], inventory.counts, studies, start)
                save_checkpoint(out, ckpt.pop("model"), **ckpt)
            tracking.log_summary(summary)
        return {**summary, "preset": opts["preset"], "started_from": str(start) if start else "scratch"}

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path, init: Path | None = None
            ) -> dict[str, Any]:
        """Train on ``inventory`` into ``out``, starting from ``init``'s weights where they fit; return a summary."""
        return self.trainer.run(inventory, self.trainer.options.parse(options, self.name), out, init)


_TRAIN_CLASSES: dict[str, type[MammoTrainTask]] = {}
