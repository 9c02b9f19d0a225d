"""The infer tasks MONAI Label serves and the CLI runs: :class:`MethodInferTask` adapts any method.

A task only says how to ``predict`` on a canonical image. The base loads and canonicalises the
image (MONAI Label's pre-transforms), runs the prediction (its inferer), maps the labelmap, points
and boxes back to the original orientation, and writes the labelmap as a W x H x 1 uint8 NRRD
(what 3D Slicer and OHIF display) next to a JSON result (its writer). :class:`MethodInferTask`
serves a :class:`~mammolabel.methods.contract.Method`: the network is rebuilt from the checkpoint,
and the patient's other views come from the datastore the app serves.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from mammolabel.data.exam import exam_of
from mammolabel.data.labels import ImageLabels
from mammolabel.tasks import calibration
from mammolabel.training import precision
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.errors import MammoLabelError, ModelNotTrainedError
from mammolabel.io import write_labelmap
from mammolabel.io.prediction import Prediction, restore
from mammolabel.methods.contract import Method, PredictContext
from mammolabel.transforms import LoadMammogramd
from mammolabel.zoo import describe

logger = logging.getLogger(__name__)


class DicomResultSink(Protocol):
    """Where the DICOM results of a DICOM input go (the DICOMweb datastore: SEG, heatmap SC, SR)."""

    def store_results(
        self, task: str, labels: dict[str, int], prediction: Prediction, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Build and store the DICOM results of ``prediction`` (original orientation); return their UIDs."""


class MammoInferTask(BasicInferTask):
    """Infer task over one mammogram: subclasses set ``name``, ``labels`` and implement :meth:`predict`.

    Class attributes:
        name: the task's name (``/infer/<name>``, ``mammolabel infer <name>``).
        train_task: the train task that produces its checkpoint, or None when it needs none.
    """

    name: str = ""
    train_task: str | None = None
    rank_key: str = "dice"  # per-image row key that orders the best and worst evaluation pictures
    #: Set by the app when it serves a DICOMweb datastore: every result of a DICOM input goes there too.
    dicom_sink: DicomResultSink | None = None

    def __init__(
        self,
        path: str | None,
        labels: dict[str, int],
        description: str,
        network: torch.nn.Module | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(
            path=path,
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=description,
            config=config,
            load_strict=True,
        )

    # --- what a task implements -------------------------------------------------------------
    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        """Predict on a canonical (1, rows, cols) image; ``data`` holds the request options."""
        raise NotImplementedError

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        """Per-image evaluation row (see :meth:`mammolabel.methods.contract.Method.score`)."""
        return {}

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific aggregates added to ``metrics.json``."""
        return {}

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        """Build the (untrained) network described by a checkpoint's stored configuration."""
        raise NotImplementedError

    def load(self, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
        """The trained network on ``device`` and its checkpoint, cached until the file changes.

        The network is rebuilt from the configuration stored in the checkpoint, so any checkpoint
        a train task wrote is served as it was trained; weights are read with ``weights_only=True``.
        It is kept in channels_last memory format (see :mod:`mammolabel.training.precision`).
        """
        path = self.checkpoint()
        if not path or not os.path.exists(path):
            raise ModelNotTrainedError(self.name, self.train_task or "?", str(path))
        key = (path, os.stat(path).st_mtime_ns, str(device))
        if getattr(self, "_loaded", (None,))[0] != key:
            with torch.inference_mode(False):  # normal tensors: a method may backpropagate (saliency)
                ckpt = load_checkpoint(path, getattr(self, "method", None) and self.method.name)
                network = self.build_network(ckpt)
                network.load_state_dict(ckpt["model"])  # float16 storage is widened to the network's float32
                self._loaded = (key, precision.channels_last(network.to(device).eval()), ckpt)
        return self._loaded[1], self._loaded[2]

    def checkpoint_info(self) -> dict[str, Any] | None:
        """Which checkpoint answers (shipped demo/mias or site-trained), its date and preset; None without one."""
        path = self.checkpoint()
        if not self.train_task or not path or not os.path.exists(path):
            return None
        key = (path, os.stat(path).st_mtime_ns)
        if getattr(self, "_described", (None,))[0] != key:
            try:
                ckpt = load_checkpoint(path)
            except MammoLabelError:  # an unreadable file is refused by load(); /info still answers
                ckpt = {}
            self._described = (key, describe(path, ckpt))
        return self._described[1]

    # --- benchmark hooks (mammolabel benchmark) ------------------------------------------------
    @classmethod
    def benchmark_module(cls) -> torch.nn.Module | None:
        """The network(s) one inference runs, as a module taking (B, 1, H, W); None for no network."""
        return None

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        """Write a checkpoint with random weights into ``model_dir`` so that timing runs need no training."""

    # --- MONAI Label plumbing ---------------------------------------------------------------
    def is_valid(self) -> bool:
        """Always listed, so that clients show the task; without a checkpoint it says what to train."""
        return True

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint": self.checkpoint_info()}

    def checkpoint(self) -> str | None:
        """The checkpoint in use: the last of the task's paths that exists (site-trained over shipped), else the
        last path (where the train task writes)."""
        return self.get_path(validate=True) or self.get_path(validate=False)

    def __call__(self, request: dict[str, Any], callbacks: dict | None = None):
        if self.train_task and not (self.checkpoint() and os.path.exists(self.checkpoint())):
            raise ModelNotTrainedError(self.name, self.train_task, str(self.checkpoint()))
        return super().__call__(request, callbacks)

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [LoadMammogramd(keys="image")]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"):
        """Run :meth:`predict` in inference mode, with bf16 autocast where the request's ``precision`` resolves to it.

        ``data["precision"]`` records what ran (None for a task without a network).
        """
        image = data["image"]
        run_on = str(data.get("device") or "cpu")
        run_on = run_on if run_on.startswith("cuda") and torch.cuda.is_available() else "cpu"
        chosen = precision.resolve(data.get("precision"), run_on)
        data["precision"] = chosen if self.train_task else None
        with torch.inference_mode(), precision.autocast(chosen, run_on):
            data["prediction"] = self.predict(image, dict(image.meta), data)
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        meta = dict(data["image"].meta)
        pred = restore(data["prediction"], meta)
        fd, path = tempfile.mkstemp(suffix=".nrrd", prefix=f"{self.name}_")
        os.close(fd)
        write_labelmap(path, pred.labelmap, meta.get("spacing"))
        result = {
            "model": self.name,
            "image_shape": [int(s) for s in pred.labelmap.shape],
            "flipped": bool(meta.get("flipped")),
            "laterality": meta.get("laterality"),
            "view": meta.get("view"),
            "view_inferred": meta.get("view_source") == "pixels",
            "spacing": meta.get("spacing"),
            "precision": data.get("precision"),
            **pred.values,
            "points": pred.points,
            "boxes": pred.boxes,
        }
        if self.train_task:
            result["checkpoint"] = self.checkpoint_info()
        result["calibration"] = calibration.annotate(self, result)
        if self.dicom_sink is not None and meta.get("format") == "dicom":
            try:
                result["dicom"] = self.dicom_sink.store_results(self.name, dict(self.labels), pred, meta)
            except MammoLabelError as e:  # the PACS refused or is down: the result itself still goes back
                logger.warning(f"{self.name}: DICOM results not stored ({e})")
                result["dicom"] = {"stored": False, "reason": str(e)}
        data["restored"] = pred
        return path, result


def run_device(requested: Any) -> str:
    """The request's device, or the CPU when it asks for CUDA on a machine without it."""
    device = str(requested or "cpu")
    return device if not device.startswith("cuda") or torch.cuda.is_available() else "cpu"


class MethodInferTask(MammoInferTask):
    """The infer task of a :class:`~mammolabel.methods.contract.Method` (one subclass per method, made by
    :meth:`for_method`). The app sets :attr:`datastore` to the datastore it serves, where a method finds
    the patient's other views."""

    method: Method
    datastore: Any = None

    @classmethod
    def for_method(cls, method: Method) -> type[MethodInferTask]:
        """This task's class for ``method`` (the same class on every call)."""
        made = _INFER_CLASSES.get(method.task)
        if made is None:
            trains = [t.name for t in method.trainers if (t.checkpoint or method.task) == method.task]
            made = type(f"{method.name.title()}Infer", (cls,), {
                "method": method, "name": method.task, "train_task": trains[-1] if trains else None,
                "rank_key": method.rank_key, "__doc__": method.description, "__module__": cls.__module__})
            _INFER_CLASSES[method.task] = made
        return made

    def __init__(self, path: str | list[str] | None = None, config: dict[str, Any] | None = None):
        super().__init__(path=path, labels=dict(self.method.labels), description=self.method.description,
                         config={**self.method.infer_options, **(config or {})})

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return self.method.build_network(checkpoint)

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        device = run_device(data.get("device"))
        network, ckpt = self.load(device)
        image_id = data.get("image_id")
        context = PredictContext(device=device, request=data, image_id=image_id,
                                 find_exam=lambda: exam_of(self.datastore, image_id))
        return self.method.predict(network, ckpt, image[0].detach().cpu().numpy(), meta, context)

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        return self.method.score(record, labelmap, result)

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.method.summarise(rows)

    @classmethod
    def benchmark_module(cls) -> torch.nn.Module:
        return cls.method.benchmark_network()

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        ckpt = cls.method.benchmark_checkpoint()
        save_checkpoint(os.path.join(model_dir, f"{cls.name}.pt"), ckpt.pop("model"), **ckpt)


_INFER_CLASSES: dict[str, type[MethodInferTask]] = {}
