"""``mammolabel benchmark``: click latency, forward latency per precision and achieved FLOP rate of every task.

Per task, in one run: the latency of one click (POST /infer on a 1024x1024 film) through the real
server, as served (bf16 where the CPU has it; the result names the precision); and for tasks with a
network, the forward latency of the served network on the input it gets from that film, in default
fp32 (contiguous), channels_last fp32 and bf16 + channels_last, each with its achieved GFLOP/s, next
to this machine's peak measured in the same run with a large matrix product in fp32 and bf16 (same
thread count). Every figure carries the 1-minute load average when it was taken: the machine is
shared, so ratios taken side by side in one run say more than absolute times. Forward figures run
in a fresh subprocess, whose max RSS is the peak memory. On a GPU it also reports bf16 latency,
throughput at batch 8 and training-step memory of the paper's network at full field (2944x1920).
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mammolabel.training import precision
from mammolabel.errors import InputError
from mammolabel.io import atomic_path

logger = logging.getLogger("mammolabel")

FULL_FIELD = (2944, 1920)
SERVER_IMAGE = (1024, 1024)
#: Side of the square matrices of the peak FLOP rate measurement.
PEAK_SIDE = 4096
#: Forward variants: (name, channels_last, precision).
VARIANTS = (("fp32", False, "fp32"), ("fp32_channels_last", True, "fp32"), ("bf16_channels_last", True, "bf16"))


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_bf16": precision.cpu_bf16(), "load_avg_1m": load()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


SHIPPED_KIND = {"cpu": "demo", "mias": "mias"}  # benchmark preset -> the shipped checkpoint it serves
PRESETS = (*SHIPPED_KIND, "paper")


def load() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def write_checkpoint(task_cls: type, model_dir: str | os.PathLike, preset: str) -> None:
    """The checkpoint every measurement of a task serves: ``cpu``, the shipped demo checkpoint (the cpu preset,
    trained on phantoms); ``mias``, the shipped mias checkpoint (its cross-validated recipe, which may read the
    film at a higher resolution); ``paper``, the paper's configuration with random weights (timing needs no
    training)."""
    from mammolabel.zoo import shipped_path

    shipped = shipped_path(task_cls.name, SHIPPED_KIND.get(preset, ""))
    if shipped:
        shutil.copyfile(shipped, Path(model_dir) / f"{task_cls.name}.pt")
    elif preset == "paper":
        task_cls.write_benchmark_checkpoint(model_dir)
    else:
        raise InputError(f"benchmark: no {preset!r} checkpoint for {task_cls.name} (presets: {', '.join(PRESETS)})")


def flops(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of ``module`` on a zero input of ``shape`` (backward passes it runs inside included)."""
    module.eval()
    return count_flops(lambda: module(torch.zeros(shape)))


def count_flops(call: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _in_child(target: Callable, *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a fresh spawned process and return what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return result


def _peak(threads: int, repeats: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    out = {"threads": threads, "side": PEAK_SIDE}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.rand(PEAK_SIDE, PEAK_SIDE).to(dtype) for _ in range(2))
        seconds = _timed(lambda: a @ b, repeats)
        out[f"{name}_gflops"] = round(2 * PEAK_SIDE**3 / seconds / 1e9, 1)
        out[f"{name}_load_1m"] = load()
    queue.put(out)


def peak_rate(threads: int, repeats: int) -> dict[str, Any]:
    """This machine's fp32 and bf16 matrix-product GFLOP/s with ``threads`` threads."""
    return _in_child(_peak, threads, repeats)


def _capture(task, film: str) -> tuple[torch.nn.Module, tuple, dict]:
    """The served network of ``task`` and the arguments one click on ``film`` calls it with (fp32 run)."""
    from mammolabel.transforms import LoadMammogramd

    network, _ = task.load()
    calls: list[tuple[tuple, dict]] = []
    hook = network.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)) and None,
                                              with_kwargs=True)
    task.run_inferer(LoadMammogramd(keys="image")({"image": film, "precision": "fp32"}))
    hook.remove()
    return network, *calls[0]


def _forward(task_name: str, film: str, repeats: int, threads: int, preset: str, queue: mp.Queue) -> None:
    """Child process: the served network's forward latency and GFLOP/s in each of :data:`VARIANTS`."""
    from mammolabel.tasks import infer_tasks

    torch.set_num_threads(threads)
    cls = infer_tasks()[task_name]
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(cls, tmp, preset)
        task = cls(path=str(Path(tmp) / f"{task_name}.pt"))
        served, args, kwargs = _capture(task, film)
    default = copy.deepcopy(served).to(memory_format=torch.contiguous_format)
    out: dict[str, Any] = {"input_shapes": [list(a.shape) for a in args if torch.is_tensor(a)],
                           "flops": count_flops(lambda: served(*args, **kwargs))}
    for name, channels_last, chosen in VARIANTS:
        network = served if channels_last else default
        inputs = [precision.channels_last(a) if channels_last and torch.is_tensor(a) else a for a in args]

        def call():
            with torch.inference_mode(), precision.autocast(chosen):
                network(*inputs, **kwargs)

        seconds = _timed(call, repeats)
        # four significant digits: a small network's forward can take well under a millisecond
        out[name] = {"latency_s": float(f"{seconds:.4g}"), "gflops_per_s": round(out["flops"] / seconds / 1e9, 1),
                     "load_1m": load()}
    out["speedup"] = {name: round(out["fp32"]["latency_s"] / out[name]["latency_s"], 2) for name, *_ in VARIANTS}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    queue.put(out)


def cpu_forward(task_name: str, film: str, repeats: int, threads: int, preset: str) -> dict[str, Any]:
    return _in_child(_forward, task_name, film, repeats, threads, preset)


def gpu_figures(module: torch.nn.Module, repeats: int) -> dict[str, float]:
    """bf16 latency (batch 1), throughput (batch 8) and training-step peak memory (batch 4) on CUDA."""
    dev = torch.device("cuda")
    module = module.to(dev).to(memory_format=torch.channels_last)
    out: dict[str, float] = {}

    def run(batch: int) -> float:
        x = torch.rand(batch, 1, *FULL_FIELD, device=dev).contiguous(memory_format=torch.channels_last)
        module.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            def step():
                module(x)
                torch.cuda.synchronize()
            return _timed(step, repeats)

    out["latency_bf16_s"] = run(1)
    out["throughput_b8_img_s"] = 8 / run(8)
    module.train()
    torch.cuda.reset_peak_memory_stats()
    x = torch.rand(4, 1, *FULL_FIELD, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = module(x)
    loss = sum(t.float().mean() for t in (y if isinstance(y, (tuple, list)) else [y]) if torch.is_tensor(t))
    loss.backward()
    torch.cuda.synchronize()
    out["train_step_b4_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def server_latency(task_names: list[str], studies: Path, repeats: int, preset: str) -> dict[str, dict[str, Any]]:
    """Median latency of POST /infer/<task> on the film ``phantom_000`` of ``studies`` through the real server."""
    import requests

    from mammolabel.server_process import ServerProcess
    from mammolabel.tasks import infer_tasks

    registry = infer_tasks()
    result = {}
    with tempfile.TemporaryDirectory() as models:
        for name in task_names:
            if registry[name].train_task:
                write_checkpoint(registry[name], models, preset)
        with ServerProcess(studies, conf={"model_dir": models}) as server:
            for name in task_names:
                answers = []

                def call():
                    r = requests.post(f"{server.url}/infer/{name}?image=phantom_000&output=json", timeout=600)
                    r.raise_for_status()
                    answers.append(r.json())

                seconds = _timed(call, repeats)
                result[name] = {"latency_s": round(seconds, 3), "precision": answers[-1].get("precision"),
                                "load_1m": load()}
    return result


def run_benchmarks(out_dir: str | Path, device: str = "cpu", tasks: list[str] | None = None,
                   quick: bool = False, threads: int | None = None, preset: str = "cpu") -> dict[str, Any]:
    """Benchmark the tasks (all by default) with the ``preset``'s checkpoints (:func:`write_checkpoint`); write
    ``<out>/benchmark.json`` and ``<out>/<task>.json``.

    ``threads`` (default: every core) is the torch thread count of the forward and peak measurements
    (the server uses torch's default); on a loaded machine one thread is often faster than all of them.
    """
    from mammolabel.data.phantoms import write_phantom_study
    from mammolabel.tasks import infer_tasks, lookup

    threads = threads or max(1, os.cpu_count() or 1)
    registry = infer_tasks()
    names = [lookup(registry, t, "infer task").name for t in tasks] if tasks else list(registry)
    networks = [n for n in names if registry[n].benchmark_module() is not None]
    repeats, server_repeats = (1, 1) if quick else (3, 5)  # timed runs after one warm-up
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "device": device, "cpu_threads": threads, "preset": preset,
                              "server_image": list(SERVER_IMAGE), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        studies = Path(tmp) / "studies"
        write_phantom_study(studies, n=1, shape=SERVER_IMAGE, dicom=False)
        film = str(next(studies.glob("phantom_000.*")))
        if networks:
            logger.info(f"benchmark: peak matrix-product rate with {threads} threads")
            report["peak"] = peak_rate(threads, repeats)
        logger.info(f"benchmark: server latency of {names}")
        latencies = server_latency(names, studies, server_repeats, preset)
        for name in names:
            entry: dict[str, Any] = {"server": latencies[name], "server_target_s": 3.0}
            if name in networks:
                logger.info(f"benchmark: {name} forward in {', '.join(v[0] for v in VARIANTS)}")
                entry["forward"] = cpu_forward(name, film, repeats, threads, preset)
                entry["forward"]["peak_fraction"] = {
                    v: round(entry["forward"][v]["gflops_per_s"] / report["peak"][f"{v[:4]}_gflops"], 3)
                    for v, *_ in VARIANTS}
                if device.startswith("cuda") and torch.cuda.is_available():
                    entry["gpu"] = gpu_figures(registry[name].benchmark_module(), repeats)
            report["tasks"][name] = entry
            with atomic_path(out_dir / f"{name}.json", suffix=".json") as path:
                Path(path).write_text(json.dumps({k: v for k, v in report.items() if k != "tasks"} | {name: entry},
                                                 indent=2))
    with atomic_path(out_dir / "benchmark.json", suffix=".json") as path:
        Path(path).write_text(json.dumps(report, indent=2))
    return report
