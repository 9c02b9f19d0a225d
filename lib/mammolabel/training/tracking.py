"""MLflow tracking of every training run: options, label counts, per-epoch metrics, the checkpoint and its card.

On by default, switched off with MONAI Label's ``MONAI_LABEL_TRACKING_ENABLED=false``. The store is
``MONAI_LABEL_TRACKING_URI`` when set (e.g. a lab's MLflow server), else the SQLite database
``mlflow.db`` of the model folder, with the artifacts in ``mlartifacts/`` beside it; one experiment
per train task. Rank 0 alone tracks a distributed run. A tracking failure is a warning, never the
end of a training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mammolabel.training import distributed

logger = logging.getLogger("mammolabel")

STORE_NAME, ARTIFACTS_NAME = "mlflow.db", "mlartifacts"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_FALSE = ("0", "false", "no", "off")


def _setting(name: str) -> Any:
    from monailabel.config import settings

    return os.environ.get(name, getattr(settings, name))


def enabled() -> bool:
    return str(_setting("MONAI_LABEL_TRACKING_ENABLED")).strip().lower() not in _FALSE


def tracking_uri(model_dir: str | os.PathLike) -> str:
    """``MONAI_LABEL_TRACKING_URI``, else ``sqlite:///<model_dir>/mlflow.db``."""
    return str(_setting("MONAI_LABEL_TRACKING_URI") or "") or f"sqlite:///{Path(model_dir).resolve() / STORE_NAME}"


def card_path(checkpoint: Path) -> Path:
    """The model card of a checkpoint: ``<task>.md`` beside ``<task>[.<kind>].pt``."""
    return checkpoint.with_name(checkpoint.name.split(".")[0] + ".md")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:MAX_PARAM_CHARS]
    return out


class TrainingRun:
    """One MLflow run; every call after a failure is skipped (the failure was logged once)."""

    def __init__(self, task: str, model_dir: Path):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(model_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(task)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            local = self.uri.startswith("sqlite:///") and not _setting("MONAI_LABEL_TRACKING_URI")
            location = (Path(model_dir).resolve() / ARTIFACTS_NAME).as_uri() if local else None
            experiment_id = self.client.create_experiment(task, artifact_location=location)
        self.run_id = self.client.create_run(experiment_id, tags={"mammolabel.train_task": task}).info.run_id
        self.ok = True

    def _do(self, what: str, call, *args, **kwargs) -> None:
        if not self.ok:
            return
        try:
            call(self.run_id, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop a training
            self.ok = False
            logger.warning(f"MLflow tracking at {self.uri} stopped ({what}: {e}); training goes on")

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _flat(values).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self._do("parameters", self.client.log_batch, params=params[start : start + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        self._do("metrics", self.client.log_batch, metrics=metrics)

    def artifact(self, path: Path) -> None:
        if path.is_file():
            self._do(f"artifact {path.name}", self.client.log_artifact, str(path))

    def json(self, name: str, value: Any) -> None:
        self._do(f"artifact {name}", self.client.log_text, json.dumps(value, indent=2, default=str), name)

    def end(self, status: str) -> None:
        self._do("end", self.client.set_terminated, status=status)


_current: tuple[TrainingRun, str] | None = None  # the run being tracked in this process, with its task name


@contextmanager
def training_run(task: str, options: dict[str, Any], label_counts: dict[str, int], out: Path,
                 model_dir: Path) -> Iterator[TrainingRun | None]:
    """Track the training inside the block (None when tracking is off or on ranks other than 0).

    Logs the options and label counts at the start, :func:`log_epoch`'s metrics during the run,
    and the checkpoint ``out``, its stats and model card at the end (status FAILED on an error).
    """
    global _current
    run = None
    if enabled() and distributed.is_main() and _current is None:
        try:
            run = TrainingRun(task, model_dir)
        except Exception as e:  # noqa: BLE001 - tracking must never stop a training
            logger.warning(f"MLflow tracking off for this run ({tracking_uri(model_dir)}: {e})")
    if run is None:
        yield None
        return
    logger.info(f"{task}: tracked in MLflow at {run.uri} (run {run.run_id})")
    run.params({**options, "world_size": distributed.world_size(),
                **{f"labels.{k}": n for k, n in sorted(label_counts.items())}})
    _current = (run, task)
    try:
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    else:
        for path in (out, out.with_name(out.stem + ".stats.json"), card_path(out)):
            run.artifact(path)
        run.end("FINISHED")
    finally:
        _current = None


def log_epoch(stage: str, record: dict[str, float]) -> None:
    """Log one epoch's metrics of ``stage`` (``<stage>/<name>``, step = epoch) to the run being tracked."""
    if _current is None:
        return
    run, task = _current
    prefix = "" if stage == task else stage.replace(" ", "_") + "/"
    run.metrics({f"{prefix}{k}": v for k, v in record.items() if k != "epoch"}, int(record["epoch"]))


def log_summary(summary: dict[str, Any]) -> None:
    """Log a training's summary (label usage, stages, best metrics) as ``summary.json``."""
    if _current is not None:
        _current[0].json("summary.json", summary)
