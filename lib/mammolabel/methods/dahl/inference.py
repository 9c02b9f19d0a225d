"""Tasks ``classification`` (infer) and ``train_classifier`` (train): Dahl et al.'s Holistic,
Attention and Ensemble ResNet classifiers, trained from image-level findings only.

The infer task answers with the malignancy risk of the image from the three models (and of the
patient's examination when the other views are in the datastore) and a labelmap of where the
Holistic model looked: its gradient saliency in three levels inside the breast and the outline of
the ROI the Attention model classified.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolabel.data.datastore import LabelInventory
from mammolabel.data.labels import ImageLabels
from mammolabel.methods.dahl.training import (
    LABELS,
    Analysis,
    MODELS,
    DahlOptions,
    View,
    analyse,
    evaluation_row,
    exam_images,
    exam_summary,
    image_side,
    options_from,
    saliency_maps,
    summarise_rows,
    train_classifier,
)
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.io import boxes_from_canonical, canonicalise, points_from_canonical, read_mammogram
from mammolabel.methods.dahl.network import DahlClassifier
from mammolabel.tasks.infer import MammoInferTask, Prediction
from mammolabel.tasks.train import MammoTrainTask, coerce


def probability(risk: float | None) -> float | None:
    """Positive-class probability of a risk score (softmax of two logits = sigmoid of their difference)."""
    return None if risk is None else math.exp(-np.logaddexp(0.0, -risk))


class ClassificationInfer(MammoInferTask):
    """Malignancy risk (Holistic, Attention, Ensemble; image and examination) with a saliency labelmap.

    Request options: ``exam`` (default true) also scores the patient's other images in the datastore
    and returns the examination risk (§3.4 of the paper).
    """

    name = "classification"
    train_task = "train_classifier"
    rank_key = "confidence"

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(
            path=path,
            labels=dict(LABELS),
            description="Malignancy risk from the Holistic, Attention and Ensemble ResNets (Dahl et al.) "
            "with the gradient saliency and the attention ROI",
            config={"exam": True, **(config or {})},
        )
        self._views: dict[str, tuple[Any, View]] = {}  # image path -> (cache key, view scores)

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return DahlClassifier(**checkpoint["config"])

    def predict(self, image: torch.Tensor, meta: dict[str, Any], data: dict[str, Any]) -> Prediction:
        pixels = image[0].detach().cpu().numpy()
        with torch.inference_mode(False):
            network, ckpt = self.load(data.get("device", "cpu"))
            analysis = analyse(network, pixels)
        labelmap, heatmap = saliency_maps(analysis, pixels)
        flipped, width = bool(meta.get("flipped")), pixels.shape[1]
        (x, y), = points_from_canonical([analysis.coa], flipped, width)
        r0, c0, r1, c1 = analysis.roi_frame.crop
        roi = [c0, r0, c1 - 1, r1 - 1]
        values: dict[str, Any] = {"target": ckpt["target"], "stage": ckpt["stage"], "model_used": analysis.main}
        for model in MODELS:
            values[f"{model}_risk"] = analysis.risk(model)
            values[f"{model}_probability"] = probability(analysis.risk(model))
        values["coa"] = {"x": x, "y": y}
        values["roi"] = boxes_from_canonical([roi], flipped, width)[0]
        values["exam"] = self.exam(meta, analysis, network) if coerce("exam", data.get("exam", True), True) else None
        return Prediction(
            labelmap=labelmap,
            values=values,
            points=[{"x": analysis.coa[0], "y": analysis.coa[1], "name": "centre_of_attention"}],
            boxes=[{"box": roi, "name": "attention_roi"}],
            heatmap=heatmap,
        )

    def exam(self, meta: dict[str, Any], analysis: Analysis, network: DahlClassifier) -> dict[str, Any] | None:
        """Examination risk when the image's patient has other images in its datastore, else None."""
        found = exam_images(meta["path"])
        if found is None or len(found[2]) < 2:
            return None
        image_id, patient, images = found
        views = []
        for view_id, path, info in images:
            if view_id == image_id:
                view = View(view_id, image_side(meta, info), analysis.holistic, analysis.attention, analysis.ensemble)
            else:
                view = self._view(view_id, path, info, network)
            views.append(view)
        return exam_summary(patient, views)

    def _view(self, image_id: str, path: str, info: dict[str, Any], network: DahlClassifier) -> View:
        """Risk scores of another image of the examination, cached until it or the checkpoint changes."""
        key = (os.stat(str(self.checkpoint())).st_mtime_ns, os.stat(path).st_mtime_ns, id(network))
        cached = self._views.get(path)
        if cached and cached[0] == key:
            return cached[1]
        picture = canonicalise(read_mammogram(path), info.get("laterality"))
        with torch.inference_mode(False):
            analysis = analyse(network, picture.pixels)
        view = View(image_id, image_side(picture.meta, info), analysis.holistic, analysis.attention, analysis.ensemble)
        self._views[path] = (key, view)
        return view

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        return evaluation_row(record, result)

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return summarise_rows(rows)

    @classmethod
    def benchmark_module(cls) -> torch.nn.Module:
        """The paper's configuration: ResNet-101 Holistic and Attention models at 976 x 976."""
        return DahlClassifier()

    @classmethod
    def write_benchmark_checkpoint(cls, model_dir: str | os.PathLike) -> None:
        config = DahlOptions().network(attention=True)
        save_checkpoint(Path(model_dir) / f"{cls.name}.pt", DahlClassifier(**config), config=config,
                        target="malignant", stage="attention", method="dahl")


class ClassifierTrain(MammoTrainTask):
    """Train the Holistic model, then the Attention model initialised from it (option ``stage``)."""

    name = "train_classifier"
    checkpoint_name = "classification"
    defaults = asdict(DahlOptions())
    #: ResNet-18 of width 16 at 256 x 256 (Holistic) and a 256 x 256 ROI at the film's resolution.
    cpu_preset = {"depth": 18, "width": 16, "input_rows": 256, "input_cols": 256, "roi_size": 256, "roi_scale": 1.0,
                  "batch_size": 8, "lr": 3e-4, "epochs": 15}

    def __init__(self, model_dir: str | Path, description: str = "Dahl et al. Holistic then Attention ResNet "
                 "classifier from image-level findings",
                 defaults: dict[str, Any] | None = None, shipped: str | Path | None = None):
        super().__init__(model_dir, description, defaults, shipped)

    def check(self, options: dict[str, Any]) -> None:
        options_from(options)

    def run(self, inventory: LabelInventory, options: dict[str, Any], out: Path) -> dict[str, Any]:
        return train_classifier(inventory, options, out)
