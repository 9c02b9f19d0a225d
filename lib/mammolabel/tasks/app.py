"""The MONAI Label app every MammoLabel app derives from: datastore, tasks, strategies, routes, errors.

An app's ``main.py`` subclasses :class:`MammoApp` (and names ``MONAILabelApp`` among its bases, which is
how MONAI Label finds the app class) and says which tasks and strategies it serves: the list
:attr:`MammoApp.tasks`, or its own :meth:`MammoApp.task_configs`. ``--conf model_dir DIR`` moves the
checkpoints folder (default ``model/`` in the app). A task without a site-trained checkpoint there
answers with the shipped one that matches the data (``demo`` for the phantoms, ``mias`` for anything
else); ``--conf checkpoints demo|mias|none`` overrides. ``--studies http(s)://.../dicom-web`` serves the
mammograms (DICOM MG) of a DICOMweb server and stores every result back there as DICOM SEG, heatmap
Secondary Capture and Structured Report.
"""

import logging
import os
import sys
import tempfile
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

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
from mammolabel.tasks.breast_region import BreastRegionConfig
from mammolabel.tasks.calibrate import calibration_tasks
from mammolabel.tasks.config import MethodConfig
from mammolabel.tasks.infer import MammoInferTask, MethodInferTask
from mammolabel.tasks.routes import REQUEST_PATHS, install_routes
from mammolabel.tasks.server import install_error_handlers
from mammolabel.zoo import choose_kind

logger = logging.getLogger(__name__)

STRATEGIES: dict[str, type[Strategy]] = {"random": RandomStrategy, "first": FirstStrategy,
                                         "weak_first": WeakFirstStrategy, "uncertainty": UncertaintyStrategy}


class MammoApp(MONAILabelApp):
    #: Served when ``task_configs`` is not overridden: method infer tasks by name (and ``breast_region``).
    tasks: tuple[str, ...] = ()
    #: Active-learning strategies served.
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    title = "MammoLabel"
    summary = "Mammography: lesion heatmaps, points and segmentations from weak labels"

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        conf = {**conf, "checkpoints": choose_kind(conf.get("checkpoints"), studies)}
        logger.info(f"+++ MammoLabel shipped checkpoints: {conf['checkpoints']} (site-trained ones in {self.model_dir} "
                    "take precedence)")
        self.models = self.task_configs(conf)
        logger.info(f"+++ MammoLabel models: {list(self.models)}")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name=f"{self.title} ({mammolabel.__version__})",
                         description=self.summary, version=mammolabel.__version__)

    def task_configs(self, conf: dict[str, str]) -> dict[str, TaskConfig]:
        """The served tasks' configs, initialised: by default one :class:`MethodConfig` per name in :attr:`tasks`."""
        configs: dict[str, TaskConfig] = {}
        for name in self.tasks:
            configs[name] = BreastRegionConfig() if name == "breast_region" else MethodConfig()
            configs[name].init(name, self.model_dir, conf, None)
        return configs

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
        strategies: dict[str, Strategy] = {name: STRATEGIES[name]() for name in self.strategies}
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
