"""Starting a train task in several processes: torchrun's launcher, one :class:`Job` per process.

:func:`launch` starts ``nproc_per_node`` processes per node with torchrun's launcher (the arguments
are torchrun's own, parsed by ``torch.distributed.run``); each runs :func:`run_job`, which joins the
process group (:func:`mammolabel.training.distributed.process_group`) and runs the train task as a
single process would.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from mammolabel.errors import InputError, MammoLabelError
from mammolabel.training.distributed import is_main, process_group

logger = logging.getLogger("mammolabel")


@dataclass
class Job:
    """A training run to start in every process: train task, model folder, request and datastore."""

    task: str
    model_dir: str
    request: dict[str, Any]
    studies: str


def open_studies(studies: str):
    """A local datastore folder (read only), or a DICOMweb URL (credentials from MONAI Label's settings)."""
    if studies.startswith(("http://", "https://")):
        from mammolabel.data.dicomweb import from_settings

        return from_settings(studies)
    from mammolabel.data.datastore import MammoDatastore

    return MammoDatastore(studies, read_only=True)


def studies_of(datastore: Any) -> str:
    """What :func:`open_studies` opens again in another process: the datastore's URL or folder."""
    url = getattr(datastore, "url", None)
    return str(url) if url else str(datastore._datastore_path)


def run_job(job: Job) -> dict[str, Any] | None:
    """Run ``job`` in this process (one of torchrun's, or alone); rank 0's summary, None on the other ranks."""
    from mammolabel.tasks import lookup, train_tasks

    with process_group(str(job.request.get("device", "auto"))):
        task = lookup(train_tasks(), job.task, "train task")(model_dir=job.model_dir)
        summary = task(job.request, open_studies(job.studies))
        return summary if is_main() else None


def _worker(job: Job) -> dict[str, Any] | None:
    """torchrun's entry point: :func:`run_job`, logging as the CLI does; a user's mistake is one line, exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mammolabel").setLevel(logging.INFO)
    try:
        return run_job(job)
    except MammoLabelError as e:
        print(f"mammolabel: error (training process {os.environ.get('RANK', '0')}): {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def torchrun_config(nproc_per_node: int, nnodes: str = "1", rdzv_endpoint: str = "", rdzv_id: str = ""):
    """torchrun's launch configuration for these arguments (as ``--standalone`` on one node without endpoint)."""
    from torch.distributed.run import config_from_args, parse_args

    if not rdzv_endpoint and str(nnodes) != "1":
        raise InputError("training on several nodes needs --rdzv-endpoint HOST:PORT (the first node's address)")
    # As torchrun --standalone does on one node: a rendezvous on a free local port.
    endpoint, run_id = (rdzv_endpoint, rdzv_id or "mammolabel") if rdzv_endpoint else ("localhost:0", uuid.uuid4().hex)
    args = parse_args(["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes), "--max-restarts", "0",
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, "mammolabel"])
    config, _, _ = config_from_args(args)
    return config


def launch(job: Job, nproc_per_node: int, nnodes: str = "1", rdzv_endpoint: str = "",
           visible_gpus: str | None = None) -> dict[str, Any]:
    """Train ``job`` in ``nproc_per_node`` processes on this node (of ``nnodes``) and return rank 0's summary.

    ``visible_gpus`` (CUDA_VISIBLE_DEVICES of the processes) picks the GPUs they use.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    if nproc_per_node < 1:
        raise InputError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    config = torchrun_config(nproc_per_node, nnodes, rdzv_endpoint)
    if visible_gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus
    logger.info(f"{job.task}: starting {nproc_per_node} training processes per node on {nnodes} node(s)")
    try:
        results = elastic_launch(config, _worker)(job)
    except ChildFailedError as e:
        failed_rank, failure = e.get_first_failure()
        raise MammoLabelError(f"{job.task}: training process {failed_rank} failed (exit code {failure.exitcode}); "
                              "its message is above") from None
    if 0 in results:
        return results[0]
    return {"task": job.task, "ranks": sorted(results), "note": "rank 0 runs on another node and writes the checkpoint"}
