"""The ``classification`` method: Dahl et al.'s Holistic, Attention and Ensemble ResNet classifiers.

The answer holds the malignancy risk of the image from the three models (and of the patient's
examination when the served datastore holds the patient's other views, §3.4) and a labelmap of
where the Holistic model looked: its gradient saliency in three levels inside the breast and the
outline of the ROI the Attention model classified.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mammolabel.data.exam import ExamView, ExamViews
from mammolabel.data.labels import ImageLabels
from mammolabel.io import boxes_from_canonical, points_from_canonical
from mammolabel.io.prediction import Prediction
from mammolabel.methods.contract import Method, PredictContext, Trainer
from mammolabel.methods.dahl.analysis import LABELS, MODELS, Analysis, analyse, saliency_maps
from mammolabel.methods.dahl.evaluation import evaluation_row, summarise_rows
from mammolabel.methods.dahl.network import DahlClassifier, exam_risk
from mammolabel.methods.dahl.options import DahlOptions
from mammolabel.methods.dahl.patches import PATCH_TRAINER
from mammolabel.methods.dahl.training import train_classifier
from mammolabel.training.checkpoint import method_fields
from mammolabel.training.options import coerce


def probability(risk: float | None) -> float | None:
    """Positive-class probability of a risk score (softmax of two logits = sigmoid of their difference)."""
    return None if risk is None else math.exp(-np.logaddexp(0.0, -risk))


@dataclass(frozen=True)
class View:
    """One image of an examination, with the risk scores of the three models."""

    image_id: str
    side: str
    holistic: float
    attention: float | None
    ensemble: float | None

    @classmethod
    def of(cls, image_id: str, side: str, analysis: Analysis) -> View:
        return cls(image_id, side, analysis.holistic, analysis.attention, analysis.ensemble)


def image_side(meta: dict[str, Any], info: dict[str, Any] | None = None) -> str:
    """Breast side: the datastore's image info, else the file's laterality, else the chest-wall side.

    Viewers hang a right breast with its chest wall on the right, so an image that canonical
    orientation had to flip is a right breast.
    """
    side = (info or {}).get("laterality") or meta.get("laterality")
    return str(side).upper()[:1] if side else ("R" if meta.get("flipped") else "L")


def exam_summary(patient_id: str, views: list[View]) -> dict[str, Any]:
    """Examination risk of each model: max over breasts of the sum of the breast's view risks (§3.4)."""
    summary: dict[str, Any] = {"patient_id": patient_id, "views": [asdict(v) for v in views], "breast_risk": {}}
    for model in MODELS:
        risks = [(v.side, getattr(v, model)) for v in views]
        if any(r is None for _, r in risks):
            summary[f"{model}_risk"] = None
            continue
        summary[f"{model}_risk"], summary["breast_risk"][model] = exam_risk(risks)
    return summary


class DahlMethod(Method):
    """Malignancy risk (Holistic, Attention, Ensemble; image and examination) with a saliency labelmap.

    Request options: ``exam`` (default true) also scores the patient's other images in the served
    datastore and returns the examination risk (§3.4 of the paper).
    """

    name = "dahl"
    task = "classification"
    description = ("Malignancy risk from the Holistic, Attention and Ensemble ResNets (Dahl et al.) "
                   "with the gradient saliency and the attention ROI")
    labels = dict(LABELS)
    infer_options = {"exam": True}
    rank_key = "confidence"
    trainers = (
        PATCH_TRAINER,
        Trainer(
            name="train_classifier",
            description="Dahl et al. Holistic then Attention ResNet classifier from image-level findings",
            options=DahlOptions,
            #: ResNet-18 of width 16 at 256 x 256 (Holistic) and a 256 x 256 ROI at the film's resolution.
            cpu_preset={"depth": 18, "width": 16, "input_rows": 256, "input_cols": 256, "roi_size": 256,
                        "roi_scale": 1.0, "batch_size": 8, "lr": 3e-4, "epochs": 15},
            run=train_classifier,
            checkpoint="classification",
        ),
    )

    def __init__(self) -> None:
        #: image id -> (network it was scored with, its datastore info, its view scores)
        self._views: dict[str, tuple[weakref.ref, dict[str, Any], View]] = {}

    def build_network(self, checkpoint: dict[str, Any]) -> torch.nn.Module:
        return DahlClassifier(**checkpoint["network"])

    def predict(self, network: torch.nn.Module, checkpoint: dict[str, Any], pixels: np.ndarray,
                meta: dict[str, Any], context: PredictContext) -> Prediction:
        analysis = analyse(network, pixels)
        labelmap, heatmap = saliency_maps(analysis, pixels)
        flipped, width = bool(meta.get("flipped")), pixels.shape[1]
        (x, y), = points_from_canonical([analysis.coa], flipped, width)
        r0, c0, r1, c1 = analysis.roi_frame.crop
        roi = [c0, r0, c1 - 1, r1 - 1]
        values: dict[str, Any] = {"target": checkpoint["target"], "stage": checkpoint["stage"],
                                  "model_used": analysis.main}
        for model in MODELS:
            values[f"{model}_risk"] = analysis.risk(model)
            values[f"{model}_probability"] = probability(analysis.risk(model))
        values["coa"] = {"x": x, "y": y}
        values["roi"] = boxes_from_canonical([roi], flipped, width)[0]
        wanted = coerce("exam", context.request.get("exam", True), True)
        values["exam"] = self.exam(context, meta, analysis, network) if wanted else None
        return Prediction(
            labelmap=labelmap,
            values=values,
            points=[{"x": analysis.coa[0], "y": analysis.coa[1], "name": "centre_of_attention"}],
            boxes=[{"box": roi, "name": "attention_roi"}],
            heatmap=heatmap,
        )

    def exam(self, context: PredictContext, meta: dict[str, Any], analysis: Analysis,
             network: DahlClassifier) -> dict[str, Any] | None:
        """Examination risk when the image's patient has other images in the served datastore, else None."""
        exam: ExamViews | None = context.exam
        views = list(exam) if exam is not None else []
        if len(views) < 2:
            return None
        scored = [View.of(v.image_id, image_side(meta, v.info), analysis) if v.image_id == context.image_id
                  else self.view(v, network) for v in views]
        return exam_summary(exam.patient, scored)

    def view(self, view: ExamView, network: DahlClassifier) -> View:
        """Risk scores of another image of the examination, kept until it or the network (checkpoint) changes."""
        cached = self._views.get(view.image_id)
        if cached and cached[0]() is network and cached[1] == view.info:
            return cached[2]
        picture = view.read()
        scored = View.of(view.image_id, image_side(picture.meta, view.info), analyse(network, picture.pixels))
        self._views[view.image_id] = (weakref.ref(network), dict(view.info), scored)
        return scored

    def score(self, record: ImageLabels, labelmap: np.ndarray, result: dict[str, Any]) -> dict[str, Any]:
        return evaluation_row(record, result)

    def summarise(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return summarise_rows(rows)

    def benchmark_network(self) -> torch.nn.Module:
        """The paper's configuration: ResNet-101 Holistic and Attention models at 976 x 976."""
        return DahlClassifier()

    def benchmark_checkpoint(self) -> dict[str, Any]:
        options = DahlOptions()
        network = options.network(attention=True)
        return {"model": DahlClassifier(**network).state_dict(),
                **method_fields(self.name, network, options.frame(), options.to_dict(), "attention", {}, [], {},
                                target=options.target)}
