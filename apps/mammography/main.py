"""MammoLabel: the MONAI Label app serving the MammoLabel tasks.

Each ``lib/configs/<model>.py`` holds one ``TaskConfig``; ``--conf models all`` (the default) or a
comma-separated list picks which are served; ``--conf model_dir DIR`` moves the checkpoints folder
(default ``model/`` in this app). A task without a site-trained checkpoint in that folder answers
with the shipped one that matches the data (``models/``: ``demo`` for the phantoms, ``mias`` for
anything else); ``--conf checkpoints demo|mias|none`` overrides. The work itself lives in the
``mammolabel`` library.
``--studies http(s)://.../dicom-web`` serves the mammograms (DICOM MG) of a DICOMweb server and stores
every result back there as DICOM SEG, heatmap Secondary Capture and Structured Report.
"""

import logging
import os
import sys
import tempfile
from typing import Any

import lib.configs
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.class_utils import get_class_names

import mammolabel
from mammolabel.confine import is_inside
from mammolabel.data.datastore import MammoDatastore, check_name
from mammolabel.data.dicomweb import DICOMwebError, DICOMwebMammoDatastore
from mammolabel.data.dicomweb import from_settings as dicomweb_datastore
from mammolabel.errors import InputError, NotFoundError
from mammolabel.tasks.activelearning import (
    FirstStrategy,
    RandomStrategy,
    UncertaintyScoring,
    UncertaintyStrategy,
    WeakFirstStrategy,
)
from mammolabel.tasks.calibrate import calibration_tasks
from mammolabel.tasks.infer import MammoInferTask, MethodInferTask
from mammolabel.tasks.routes import REQUEST_PATHS, install_routes
from mammolabel.tasks.server import install_error_handlers
from mammolabel.zoo import choose_kind

logger = logging.getLogger(__name__)


class MammoLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        conf = {**conf, "checkpoints": choose_kind(conf.get("checkpoints"), studies)}
        logger.info(f"+++ MammoLabel shipped checkpoints: {conf['checkpoints']} (site-trained ones in {self.model_dir} "
                    "take precedence)")
        configs = {c.split(".")[-2].lower(): c for c in get_class_names(lib.configs, "TaskConfig")}
        wanted = [m.strip() for m in conf.get("models", "all").split(",") if m.strip()]
        unknown = [m for m in wanted if m != "all" and m not in configs]
        if unknown:
            raise InputError(f"unknown model(s) {unknown}; available: all, {', '.join(sorted(configs))}")
        self.models: dict[str, TaskConfig] = {}
        for name, cls_path in sorted(configs.items()):
            if "all" in wanted or name in wanted:
                module, cls = cls_path.rsplit(".", 1)
                self.models[name] = getattr(__import__(module, fromlist=[cls]), cls)()
                self.models[name].init(name, self.model_dir, conf, None)
        logger.info(f"+++ MammoLabel models: {list(self.models)}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MammoLabel ({mammolabel.__version__})",
            description="Mammography: lesion heatmaps, points and segmentations from weak labels",
            version=mammolabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            try:
                return dicomweb_datastore(self.studies)
            except DICOMwebError as e:
                # One line instead of the traceback the ASGI start-up would print for any exception.
                print(f"MammoLabel cannot start: {e}", file=sys.stderr, flush=True)
                os._exit(2)
        return MammoDatastore(self.studies, auto_reload=True)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for config in self.models.values():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {config.name: task})
        for task in infers.values():
            if isinstance(task, MethodInferTask):
                task.datastore = self._datastore  # where a method finds the patient's other views
            if isinstance(task, MammoInferTask) and isinstance(self._datastore, DICOMwebMammoDatastore):
                task.dicom_sink = self._datastore
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for config in self.models.values():
            task = config.trainer()
            if task:
                trainers.update(task if isinstance(task, dict) else {config.name: task})
        trainers.update(calibration_tasks(self._infers))
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {
            "random": RandomStrategy(),
            "first": FirstStrategy(),
            "weak_first": WeakFirstStrategy(),
            "uncertainty": UncertaintyStrategy(),
        }
        for config in self.models.values():
            s = config.strategy()
            if s:
                strategies.update(s if isinstance(s, dict) else {config.name: s})
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        infers = {n: t for n, t in self._infers.items() if isinstance(t, MammoInferTask)}
        return {"uncertainty": UncertaintyScoring(infers)}

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise NotFoundError(f"unknown strategy '{strategy}'; known: {', '.join(sorted(self._strategies))}")
        return super().next_sample(request)

    def on_init_complete(self) -> None:
        super().on_init_complete()
        from monailabel.app import app as server

        install_routes(server)
        install_error_handlers(server, {"train": set(self._trainers), "scoring": set(self._scoring_methods)})

    def check_image(self, image: str, datastore: Datastore | None = None) -> str:
        """The image id (a DICOMweb series UID resolved to its mammogram), or a 4xx error."""
        check_name(image, "image id")
        store = datastore or self.datastore()
        if isinstance(store, DICOMwebMammoDatastore):
            return store.resolve(image)  # a series UID (what OHIF sends) names its one mammogram
        if image not in store.list_images():
            raise NotFoundError(f"image '{image}' is not in the datastore")
        if not os.path.isfile(store.get_image_uri(image)):
            raise NotFoundError(f"image '{image}' has been removed from the datastore")
        return image

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Refuse unknown image ids with a 404 before MONAI Label turns them into a path.

        A path is accepted only for this request's own upload (in the temp folder) or session.
        """
        image = request.get("image")
        allowed = REQUEST_PATHS.get()
        roots = ([tempfile.gettempdir()] if "upload" in allowed else []) + (
            [self.sessions().store_path] if "session" in allowed and self.sessions() else [])
        is_path = isinstance(image, str) and os.path.isabs(image)
        if is_path and not (is_inside(image, roots) and os.path.isfile(image)):
            raise InputError("an image is named by its id in the datastore, not by a path")
        if isinstance(image, str) and not is_path:
            store = datastore or self.datastore()
            image = self.check_image(image, store)
            info = store.get_image_info(image)
            request = {**request, "image": image, "image_id": image}
            request = {"laterality": info.get("laterality"), "view": info.get("view"), **request}
        return super().infer(request, datastore)
