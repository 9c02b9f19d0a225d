"""Time one training step of the Dahl ResNet in fp32, channels_last and bf16 + channels_last, side by side.

    python benchmarks/train_step.py [--size 512] [--batch 8] [--threads 1] [--repeats 5] [--out benchmarks/train_step.json]

The three settings run interleaved in one process (fp32, channels_last, bf16, fp32, ...) on the
same random batch, so that they see the same machine load; each figure is the median step
(forward, loss, backward, Adam) after one warm-up step. bf16 is the training loop's autocast
(:mod:`mammolabel.training.precision`), which only pays where the processor computes bf16 natively.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mammolabel.methods.dahl.network import DahlResNet
from mammolabel.training.precision import autocast, native_bf16

SETTINGS = {"fp32": (False, "fp32"), "channels_last": (True, "fp32"), "bf16_channels_last": (True, "bf16")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(args.batch, 1, args.size, args.size), torch.randint(0, 2, (args.batch,))
    runs = {}
    for name, (last, precision) in SETTINGS.items():
        torch.manual_seed(0)
        model = DahlResNet(depth=18, width=16)
        inputs = x
        if last:
            model, inputs = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        runs[name] = (model, torch.optim.Adam(model.parameters()), inputs, precision, [])
    for repeat in range(args.repeats + 1):
        for name, (model, optimizer, inputs, precision, times) in runs.items():
            started = time.perf_counter()
            with autocast(precision):
                loss = F.cross_entropy(model(inputs).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if repeat:  # the first step warms up
                times.append(time.perf_counter() - started)
    fp32 = statistics.median(runs["fp32"][4])
    report = {"network": "DahlResNet depth 18 width 16", "input": [args.batch, 1, args.size, args.size],
              "threads": args.threads, "native_bf16": native_bf16(), "load_1m": round(os.getloadavg()[0], 2),
              "step_s": {name: round(statistics.median(r[4]), 3) for name, r in runs.items()}}
    report["speedup"] = {name: round(fp32 / s, 2) for name, s in report["step_s"].items()}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
