"""Distributed data-parallel training: each process trains on its share of the batches.

Processes are started by :mod:`mammolabel.tasks.launch` (torchrun's launcher); each joins the process
group from torchrun's environment with :func:`process_group` (NCCL on GPUs, gloo on CPUs).
:func:`mammolabel.training.loop.fit` then wraps the step in
DistributedDataParallel (:func:`parallel_step`) and takes every process's share of the epoch's
batches (:func:`shard`). Rank 0 alone validates, logs and writes files: :func:`main_only` runs a file
change on rank 0 while every rank waits before and after it, so that all ranks read the same files
(checkpoints written by one stage and read by the next must be on a filesystem every node sees).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from mammolabel.errors import InputError

logger = logging.getLogger("mammolabel")

T = TypeVar("T")


def active() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def backend() -> str | None:
    return str(dist.get_backend()) if active() else None


def is_main() -> bool:
    """Rank 0, the process that validates, logs and writes (the only process outside a process group)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def main_only(action: Callable[[], T]) -> T | None:
    """Run the file change ``action`` on rank 0 alone (returning its value there, None elsewhere).

    Every rank waits before it (all have read what it replaces) and after it (all see its result).
    """
    if not active():
        return action()
    dist.barrier()
    result = action() if is_main() else None
    dist.barrier()
    return result


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (a plain picklable value) on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(total: float, count: int) -> tuple[float, int]:
    """Sum ``total`` and ``count`` over the ranks (e.g. an epoch's summed loss and its number of batches)."""
    if not active():
        return total, count
    values = gather((total, count))
    return sum(v[0] for v in values), sum(v[1] for v in values)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters (not its buffers: batch-norm statistics are rank 0's at each forward)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_in_sync(model: torch.nn.Module, desc: str) -> list[str]:
    """Every rank's weights digest; raise when the ranks hold different weights (their training diverged)."""
    digests = gather(weights_digest(model))
    if len(set(digests)) > 1:
        raise RuntimeError(f"{desc}: the {len(digests)} training processes hold different weights; "
                           "their gradients were not averaged alike")
    return digests


# --- data: each rank's share of the epoch's batches --------------------------------------------
def _share(items: Iterable[T], rank_: int, world: int) -> Iterator[T]:
    """Items ``rank_``, ``rank_ + world``, ...; the last round is completed with the first items again, so that
    every rank takes ``ceil(n / world)`` items (as DistributedSampler pads its indices)."""
    first: list[T] = []
    count = 0
    for count, item in enumerate(items, start=1):
        if count <= world:
            first.append(item)
        if (count - 1) % world == rank_:
            yield item
    rounds = -(-count // world)
    for position in range(count, rounds * world):
        if position % world == rank_:
            yield first[(position - count) % len(first)]


class _ShardedBatches(Sampler[list[int]]):
    """A DataLoader's batches of indices, this rank's share only: each rank loads just its own images."""

    def __init__(self, batches: Iterable[list[int]], rank_: int, world: int):
        self.batches, self.rank, self.world = batches, rank_, world

    def __iter__(self) -> Iterator[list[int]]:
        return _share(self.batches, self.rank, self.world)

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)  # type: ignore[arg-type]


def shard(batches: Iterable[T]) -> Iterable[T]:
    """This rank's share of an epoch's batches (all of them outside a process group).

    Every rank draws the same epoch (the methods seed each epoch's order) and takes every
    ``world``-th batch; a DataLoader is sharded on its batch sampler, so that it loads only its share.
    """
    if not active():
        return batches
    if isinstance(batches, DataLoader) and batches.batch_sampler is not None:
        return DataLoader(batches.dataset, batch_sampler=_ShardedBatches(batches.batch_sampler, rank(), world_size()),
                          num_workers=batches.num_workers, collate_fn=batches.collate_fn,
                          pin_memory=batches.pin_memory)
    return _share(batches, rank(), world_size())


# --- the model: one DistributedDataParallel module around the whole step ------------------------
class _Step(torch.nn.Module):
    """A model with its loss function as one module, so that DistributedDataParallel sees the whole
    forward of a step, whichever submodules the step calls (``model.holistic``, ``model.classifier``...)."""

    def __init__(self, model: torch.nn.Module, step: Callable[[torch.nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, batch: Any) -> torch.Tensor:
        return self.step(self.model, batch)


def parallel_step(model: torch.nn.Module, step: Callable[[torch.nn.Module, Any], torch.Tensor],
                  device: torch.device) -> Callable[[Any], torch.Tensor]:
    """``step`` as a function of the batch; under DistributedDataParallel in a process group, whose backward
    averages the gradients over the ranks (the stages leave some parameters unused or frozen)."""
    if not active():
        return lambda batch: step(model, batch)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(_Step(model, step), device_ids=ids, find_unused_parameters=True)


# --- processes -------------------------------------------------------------------------------------
@contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """Join the process group described by torchrun's environment (nothing to do in a single process).

    NCCL on CUDA (each process on GPU ``LOCAL_RANK``), gloo on CPU; the ranks other than 0 log warnings only.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise InputError(f"process {local} of this node has no GPU ({torch.cuda.device_count()} visible); "
                             "start at most one process per GPU")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() > 0:
        logging.getLogger("mammolabel").setLevel(logging.WARNING)
    try:
        yield
    finally:
        dist.destroy_process_group()


def processes_for(multi_gpu: bool, gpus: str, device: str) -> tuple[int, str | None]:
    """Processes and CUDA_VISIBLE_DEVICES for MONAI Label's ``multi_gpu`` and ``gpus`` (``all`` or ``0,1,...``).

    On GPUs one process per GPU; on a machine without CUDA, one gloo process per listed id.
    """
    if not multi_gpu or active():
        return 1, None
    text = str(gpus).strip().lower()
    ids = [] if text in ("", "all") else [g.strip() for g in text.split(",") if g.strip()]
    if device != "cpu" and torch.cuda.is_available():
        ids = ids or [str(i) for i in range(torch.cuda.device_count())]
        return len(ids), ",".join(ids)
    if not ids:
        raise InputError("multi_gpu: no CUDA GPU here; list the processes to start on CPU in gpus (e.g. gpus=0,1)")
    return len(ids), None
