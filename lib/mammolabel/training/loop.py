"""The one training loop every MammoLabel method uses, from the CLI and from MONAI Label.

It moves batches to the device (channels_last on a GPU or under bf16, and on request bfloat16 autocast:
:mod:`mammolabel.training.precision`), logs progress
with an ETA, validates every epoch, keeps the best checkpoint at ``out`` and the latest at
``out.last.pt`` (both written atomically, with the optimizer state for resuming), and resumes
from ``out.last.pt`` when the resume rule of :mod:`mammolabel.training.stages` allows it. A run
that does not resume starts from the weights of its ``init`` checkpoint where they fit
(fine-tuning a shipped or site-trained model).
Under torchrun (:mod:`mammolabel.training.distributed`) each process trains on its share of the
batches under DistributedDataParallel; rank 0 alone validates, logs, tracks and writes, and every
epoch checks that the processes hold the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mammolabel.training import distributed, precision, tracking
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.progress import Progress, format_seconds
from mammolabel.io import atomic_path, remove_stale_temps
from mammolabel.training.stages import last_path, prepare_resume, stats_path

logger = logging.getLogger("mammolabel")

Batch = Any
StepFn = Callable[[torch.nn.Module, Batch], torch.Tensor]
ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class FitOptions:
    """Options shared by every trainer (each method adds its own)."""

    epochs: int = 10
    device: str = "auto"
    precision: str = "fp32"
    select_start: bool = False  # validate the starting weights too: model selection may keep them (epoch 0)
    channels_last: bool = True
    resume: bool = True
    grad_clip: float = 0.0
    log_every_s: float = 10.0


@dataclass
class FitResult:
    path: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from mammolabel.errors import InputError

        raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return device


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """Move every tensor of a (nested) batch to ``device``; 4D float tensors optionally channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


#: A training estimated to take longer than this says so at its start.
LONG_TRAINING_S = 3600.0


def load_matching(model: torch.nn.Module, path: Path) -> int:
    """Copy ``path``'s weights into the trainable modules of ``model`` when every one of their tensors is
    there with the same shape (another preset or input size: nothing is copied). Frozen modules keep their
    weights (e.g. the Holistic model an Attention stage builds on). Returns the number of tensors copied."""
    trainable = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    wanted = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] in trainable}
    stored = load_checkpoint(path)["model"]
    if not wanted or any(k not in stored or stored[k].shape != v.shape for k, v in wanted.items()):
        return 0
    model.load_state_dict({k: stored[k] for k in wanted}, strict=False)
    return len(wanted)


def write_stats(out: Path, stats: dict[str, Any]) -> None:
    """Write ``<out>.stats.json`` (on rank 0 alone under torchrun)."""

    def write() -> None:
        with atomic_path(stats_path(out), suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps(stats, indent=2, default=str))

    distributed.main_only(write)


def _warn_if_long(desc: str, elapsed: float, steps: int, remaining_steps: int) -> None:
    """Log the expected duration of a stage after its first steps; a warning when it is over an hour."""
    expected = elapsed / steps * remaining_steps
    if expected > LONG_TRAINING_S:
        logger.warning(f"{desc}: this training will take about {format_seconds(expected)} on this machine "
                       "(over an hour); the cpu preset is sized for this machine")
    else:
        logger.info(f"{desc}: expected to take about {format_seconds(expected)} (validation not included)")


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    step: StepFn,
    validate: ValidateFn,
    metric: str,
    out: str | Path,
    options: FitOptions,
    meta: dict[str, Any] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    desc: str = "train",
    identity: dict[str, Any] | None = None,
    init: Path | None = None,
) -> FitResult:
    """Train ``model`` for ``options.epochs`` epochs; higher ``metric`` (from ``validate``) is better.

    Args:
        batches: ``batches(epoch)`` yields the epoch's training batches (CPU tensors).
        steps_per_epoch: number of batches per epoch, for progress and ETA.
        step: computes the loss of one batch (already on the device, under autocast on a GPU).
        validate: returns metrics on the validation split (called under ``torch.no_grad``).
        out: path of the best checkpoint; ``<out>.last.pt`` and ``<out>.stats.json`` go beside it.
        meta: plain values stored in every checkpoint (network settings, label report...).
        identity: the run's :func:`mammolabel.training.stages.run_identity`; a saved run with another one is
            not resumed (:func:`mammolabel.training.stages.prepare_resume`). Stored as ``run``.
        init: a checkpoint whose weights start the run where they fit, when it does not resume (fine-tuning).
    """
    out = Path(out)
    names = [out.name, last_path(out).name, stats_path(out).name]
    distributed.main_only(lambda: remove_stale_temps(out.parent, names))  # temporary files a kill left
    device = resolve_device(options.device)
    model.to(device)
    run_precision = precision.resolve(options.precision, device)
    # channels_last on a GPU or under bf16; a default fp32 CPU run keeps the contiguous layout (and its numbers)
    last = options.channels_last and (device.type == "cuda" or run_precision == "bf16")
    if last:
        model.to(memory_format=torch.channels_last)
    meta = {**(meta or {}), **({"run": identity} if identity is not None else {})}
    resuming = prepare_resume(out, identity, options.resume) if identity is not None else (
        options.resume and last_path(out).exists())
    history: list[dict[str, float]] = []
    best, best_epoch, start_epoch = -math.inf, -1, 0

    if resuming:
        ckpt = load_checkpoint(last_path(out))
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt.get("epoch", -1)) + 1
        best, best_epoch = float(ckpt.get("best_metric", -math.inf)), int(ckpt.get("best_epoch", -1))
        history = list(ckpt.get("history", []))
        logger.info(f"{desc}: resuming from {last_path(out)} at epoch {start_epoch + 1}")
    elif init is not None:
        copied = load_matching(model, init)
        if copied:
            logger.info(f"{desc}: starting from {init} ({copied} tensors)")
        else:
            logger.warning(f"{desc}: {init} does not fit this network (another preset or size); not used")

    have_best = resuming
    if options.select_start and not resuming:
        best, best_epoch, history = _validate_start(model, validate, metric, out, meta)
        have_best = True
    logger.info(f"{desc}: {run_precision} on {device.type}{', channels_last' if last else ''}")
    world = distributed.world_size()
    run_step = distributed.parallel_step(model, step, device)
    started = time.monotonic()
    for epoch in range(start_epoch, options.epochs):
        model.train()
        progress = Progress(-(-steps_per_epoch // world), f"{desc} epoch {epoch + 1}/{options.epochs}",
                            options.log_every_s)
        total, count = 0.0, 0
        for batch in distributed.shard(batches(epoch)):
            if epoch == start_epoch and count == 3:
                _warn_if_long(desc, time.monotonic() - started, count,
                              -(-steps_per_epoch // world) * (options.epochs - epoch))
            batch = to_device(batch, device, last)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(run_precision, device):
                loss = run_step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            loss.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            total, count = total + float(loss.item()), count + 1
            progress.update(loss=total / count)
        if scheduler is not None:
            scheduler.step()

        total, count = distributed.mean_over_ranks(total, count)
        digests = distributed.check_in_sync(model, desc) if world > 1 else None
        metrics = _validated(model, validate)
        value = metrics.get(metric, -math.inf)
        improved = value > best or not have_best
        have_best = True
        if improved:
            best, best_epoch = value, epoch
        record = {"epoch": epoch + 1, "loss": total / max(1, count), **metrics}
        history.append(record)
        extra = {**meta, "epoch": epoch, "best_metric": best, "best_epoch": best_epoch, "history": history}
        if improved:
            save_checkpoint(out, model, **extra)
        state = {"optimizer": optimizer.state_dict(), **({"scheduler": scheduler.state_dict()} if scheduler else {})}
        save_checkpoint(last_path(out), model, **extra, **state)
        done = epoch + 1 - start_epoch
        eta = (time.monotonic() - started) / done * (options.epochs - epoch - 1)
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        logger.info(
            f"{desc} epoch {epoch + 1}/{options.epochs}: {shown} | best {metric}={best:.4g} "
            f"(epoch {best_epoch + 1}){' *saved*' if improved else ''} | ETA {format_seconds(eta)}"
        )
        tracking.log_epoch(desc, record)
        parallel = {"distributed": {"world_size": world, "backend": distributed.backend(), "weights_sha256": digests}}
        write_stats(out, {"stage": desc, "epoch": epoch + 1, "epochs": options.epochs, "eta_s": round(eta),
                          "latest": record, "best_metric": best, "metric": metric, "best_epoch": best_epoch + 1,
                          "history": history, "options": asdict(options), **meta, **(parallel if digests else {})})

    return FitResult(str(out), best, best_epoch + 1, len(history), history)


def _validated(model: torch.nn.Module, validate: ValidateFn) -> dict[str, float]:
    """The validation metrics of ``model`` (in eval mode), computed by rank 0 and given to every rank."""
    model.eval()
    metrics = None
    if distributed.is_main():
        with torch.no_grad():
            metrics = {k: float(v) for k, v in validate(model).items()}
    return distributed.broadcast(metrics)


def _validate_start(model: torch.nn.Module, validate: ValidateFn, metric: str, out: Path, meta: dict[str, Any]
                    ) -> tuple[float, int, list[dict[str, float]]]:
    """Validate the starting weights and keep them as the best so far (epoch 0 of the history)."""
    metrics = _validated(model, validate)
    best = metrics.get(metric, -math.inf)
    history = [{"epoch": 0, **metrics}]
    save_checkpoint(out, model, **meta, epoch=-1, best_metric=best, best_epoch=-1, history=history)
    logger.info(f"{out.name}: the starting weights: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return best, -1, history
