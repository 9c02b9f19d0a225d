"""The contract every method implements, and nothing else: it knows neither MONAI Label nor the app.

A method is one package ``mammolabel.methods.<name>`` whose ``METHOD`` is an instance of a
:class:`Method` subclass. It says how to build its network from a checkpoint
(:mod:`mammolabel.training.checkpoint`'s schema), how to :meth:`~Method.predict` a
:class:`~mammolabel.io.prediction.Prediction` on a canonical image, how to score that prediction
against an image's labels (:meth:`~Method.score`, :meth:`~Method.summarise`), and how to train:
one :class:`Trainer` per train task, each with its options (a
:class:`~mammolabel.training.options.TrainOptions` subclass) and ``cpu`` preset.
:class:`mammolabel.tasks.infer.MethodInferTask` and :class:`mammolabel.tasks.train.MethodTrainTask`
serve any method through MONAI Label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.exam import ExamViews
from mammolabel.data.labels import ImageLabels
from mammolabel.io.prediction import Prediction
from mammolabel.training.options import TrainOptions

#: ``run(inventory, options, out, init)``: train into ``out`` (from ``init``'s weights where they fit) and
#: return a summary.
TrainFn = Callable[[LabelInventory, Any, Path, Path | None], dict[str, Any]]


@dataclass(frozen=True)
class Trainer:
    """One train task of a method.

    Attributes:
        name: the train task's name (``/train/<name>``, ``mammolabel train <name>``).
        description: one line for clients.
        options: the options dataclass; its defaults are the paper's configuration (the ``paper`` preset).
        cpu_preset: the options the ``cpu`` preset changes.
        run: the training itself.
        checkpoint: file stem of the checkpoint it writes in the model folder (default: the infer task's name).
        optional: an extra stage (e.g. a pretraining) that a from-scratch recipe runs only when asked
            (``with=<name>``; :mod:`mammolabel.evaluation.recipes`).
    """

    name: str
    description: str
    options: type[TrainOptions]
    cpu_preset: dict[str, Any]
    run: TrainFn
    checkpoint: str = ""
    optional: bool = False


@dataclass
class PredictContext:
    """What a prediction may need besides the image: device, the request's options and the patient's other views."""

    device: str = "cpu"
    request: dict[str, Any] = field(default_factory=dict)
    image_id: str | None = None
    find_exam: Callable[[], ExamViews | None] = lambda: None  # looked up only when a method asks

    @cached_property
    def exam(self) -> ExamViews | None:
        """The patient's views in the served datastore (None without one), listed on first use."""
        return self.find_exam()


class Method:
    """A published method: subclasses set the class attributes and implement the methods below.

    Class attributes:
        name: the method's short name (``dahl``), stored in its checkpoints as ``method``.
        task: the infer task's name (``classification``).
        description: one line for clients.
        labels: labelmap names and values.
        infer_options: the infer task's request options and their defaults.
        rank_key: evaluation row key that orders the best and worst pictures.
        trainers: the train tasks, in the order they run.
    """

    name: str = ""
    task: str = ""
    description: str = ""
    labels: dict[str, int] = {}
    infer_options: dict[str, Any] = {}
    rank_key: str = "dice"
    trainers: tuple[Trainer, ...] = ()

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        """The (untrained) network the checkpoint's ``network`` settings describe."""
        raise NotImplementedError

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        """Predict on a canonical (rows, cols) image in [0, 1] (chest wall left)."""
        raise NotImplementedError

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Evaluation row of one image: the task's labelmap and JSON (original orientation) against its labels.

        Standard keys: ``score`` (malignancy), ``abnormal_score``, ``hit`` (bool), ``dice``.
        """
        return {}

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The method's own aggregates of the evaluation rows."""
        return {}

    def benchmark_network(self) -> torch.nn.Module:
        """The paper's network, as one inference runs it on a (B, 1, H, W) input (for timing)."""
        raise NotImplementedError

    def benchmark_checkpoint(self) -> dict[str, Any]:
        """A checkpoint of the paper's configuration with random weights (``model`` included), for timing."""
        raise NotImplementedError

    def trainer(self, name: str) -> Trainer:
        return next(t for t in self.trainers if t.name == name)
