"""``mammolabel benchmark``: speed, memory and FLOPs of every task, each beside a reference model.

Per task: latency of one 1024x1024 image through the real server; forward latency, peak memory
and FLOPs of its network at full field (2944x1920, batch 1); on a GPU also bf16 latency,
throughput at batch 8 and the peak memory of a training step at batch 4. The reference is a
ResNet-34 (MONAI's, 1 input channel, 2 classes: the architecture of torchvision's) on the same
input, measured in the same run; ratios ours/reference are reported since machines are noisy.
Peak CPU memory is the max RSS of a fresh subprocess running only that measurement.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mammolabel.io import atomic_path

logger = logging.getLogger("mammolabel")

FULL_FIELD = (2944, 1920)
SERVER_IMAGE = (1024, 1024)


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def reference_network() -> torch.nn.Module:
    from monai.networks.nets import resnet34

    return resnet34(spatial_dims=2, n_input_channels=1, num_classes=2, conv1_t_stride=2)


def flops(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(shape))
    return int(counter.get_total_flops())


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_forward(task_name: str | None, shape: tuple[int, ...], repeats: int, threads: int, queue: mp.Queue) -> None:
    """Child process: forward latency and peak RSS of one network."""
    torch.set_num_threads(threads)
    module = reference_network() if task_name is None else _task_module(task_name)
    module.eval()
    x = torch.rand(shape)
    with torch.inference_mode():
        latency = _timed(lambda: module(x), repeats)
    queue.put({"latency_s": latency, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _task_module(name: str) -> torch.nn.Module:
    from mammolabel.tasks import infer_tasks

    return infer_tasks()[name].benchmark_module()


def cpu_forward(task_name: str | None, shape: tuple[int, ...], repeats: int, threads: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_forward, args=(task_name, shape, repeats, threads, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return result


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


def server_latency(task_names: list[str], repeats: int) -> dict[str, float]:
    """Median latency of POST /infer/<task> on one 1024x1024 phantom through the real server."""
    import requests

    from mammolabel.data.phantoms import write_phantom_study
    from mammolabel.server_process import ServerProcess
    from mammolabel.tasks import infer_tasks

    registry = infer_tasks()
    with tempfile.TemporaryDirectory() as tmp:
        studies, models = Path(tmp) / "studies", Path(tmp) / "model"
        write_phantom_study(studies, n=1, shape=SERVER_IMAGE, dicom=False)
        for name in task_names:
            registry[name].write_benchmark_checkpoint(models)
        result = {}
        with ServerProcess(studies, conf={"model_dir": str(models)}) as server:
            for name in task_names:
                def call():
                    r = requests.post(f"{server.url}/infer/{name}?image=phantom_000&output=json", timeout=600)
                    r.raise_for_status()
                result[name] = _timed(call, repeats)
    return result


def run_benchmarks(out_dir: str | Path, device: str = "cpu", tasks: list[str] | None = None,
                   quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Benchmark the tasks (all by default); write ``<out>/benchmark.json`` and ``<out>/<task>.json``.

    ``threads`` (default: every core) is the torch thread count of the CPU forward measurements;
    on a loaded machine one thread is often faster than all of them.
    """
    threads = threads or max(1, os.cpu_count() or 1)
    from mammolabel.tasks import infer_tasks, lookup

    registry = infer_tasks()
    names = [lookup(registry, t, "infer task").name for t in tasks] if tasks else list(registry)
    repeats = 1 if quick else 5
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (1, 1, *FULL_FIELD)
    logger.info(f"benchmark: server latency of {names}")
    latencies = server_latency(names, repeats)
    reference = {"name": "resnet34 (MONAI, 1 channel)", "flops": flops(reference_network(), shape)}
    if any(registry[n].benchmark_module() is not None for n in names):
        reference.update(cpu_forward(None, shape, repeats, threads))
    report: dict[str, Any] = {"machine": machine(), "device": device, "cpu_threads": threads, "full_field": list(FULL_FIELD),
                              "server_image": list(SERVER_IMAGE), "reference": reference, "tasks": {}}
    for name in names:
        entry: dict[str, Any] = {"server_latency_s": latencies[name], "server_target_s": 3.0}
        module = registry[name].benchmark_module()
        if module is not None:
            logger.info(f"benchmark: {name} at full field on CPU")
            entry["flops"] = flops(module, shape)
            entry.update(cpu_forward(name, shape, repeats, threads))
            entry["ratios"] = {k: entry[k] / reference[k] for k in ("flops", "latency_s", "peak_rss_mb")}
            if device.startswith("cuda") and torch.cuda.is_available():
                entry["gpu"] = gpu_figures(module, repeats)
                entry["gpu_reference"] = gpu_figures(reference_network(), repeats)
        report["tasks"][name] = entry
        with atomic_path(out_dir / f"{name}.json", suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps({"machine": report["machine"], "cpu_threads": threads, "reference": reference,
                                             name: entry}, indent=2))
    with atomic_path(out_dir / "benchmark.json", suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2))
    return report
