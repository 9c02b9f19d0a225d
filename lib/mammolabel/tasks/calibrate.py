"""Train tasks ``calibrate_<task>``: per-site calibration and operating point of an infer task, from the server.

They run :func:`mammolabel.tasks.calibration.calibrate` on the datastore's labelled images, as
``mammolabel calibrate`` does, and store the calibration in the task's model folder.
"""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from mammolabel.data.datastore import collect_labels
from mammolabel.tasks.calibration import DEFAULT_SENSITIVITY, TARGETS, calibrate, calibration_path, load_calibration
from mammolabel.tasks.infer import MammoInferTask
from mammolabel.training.options import coerce

PREFIX = "calibrate_"


class CalibrateTask(TrainTask):
    """Calibrate an infer task's probability. Options: ``method`` (platt or isotonic), ``sensitivity`` of the
    operating point, or ``specificity`` (above 0, it replaces the sensitivity), ``split`` (all or val), ``device``."""

    defaults: dict[str, Any] = {"method": "platt", "sensitivity": DEFAULT_SENSITIVITY, "specificity": 0.0,
                                "split": "all", "device": "cpu"}

    def __init__(self, infer: MammoInferTask):
        super().__init__(f"Calibrate the probability of '{infer.name}' on this datastore's labelled images and "
                         "choose its operating point")
        self.infer = infer

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    def stats(self) -> dict[str, Any]:
        return load_calibration(calibration_path(self.infer)) or {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        opts = {k: coerce(k, request.get(k, v), v) for k, v in self.defaults.items()}
        specificity = opts["specificity"] if opts["specificity"] > 0 else None
        return calibrate(self.infer, collect_labels(datastore), method=opts["method"],
                         sensitivity=None if specificity else opts["sensitivity"], specificity=specificity,
                         split=opts["split"], device=opts["device"])


def calibration_tasks(infers: dict[str, Any]) -> dict[str, CalibrateTask]:
    """One ``calibrate_<task>`` per served infer task that has an image probability."""
    return {f"{PREFIX}{name}": CalibrateTask(task) for name, task in infers.items()
            if isinstance(task, MammoInferTask) and name in TARGETS}
