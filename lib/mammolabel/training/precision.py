"""Inference precision: bf16 autocast where the processor computes bf16 natively, channels_last always.

A request option ``precision`` (or the environment variable ``MAMMOLABEL_PRECISION``) chooses:
``auto`` (the default) runs bf16 on a CPU with AVX512-BF16 or AMX and on a GPU with bf16 support,
fp32 elsewhere; ``fp32`` forces fp32; ``bf16`` forces bf16 (emulated, slowly, where not native).
Networks are kept in channels_last memory format, which oneDNN convolutions run faster on a CPU.
Their inputs need no conversion: a one-channel image has the same layout in both formats, and
channels_last weights make every later activation channels_last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import torch

from mammolabel.errors import InputError

PRECISIONS = ("auto", "bf16", "fp32")
ENV = "MAMMOLABEL_PRECISION"
#: /proc/cpuinfo flags of native bf16 arithmetic (AVX512-BF16 on Cooper Lake and Zen 4 on; AMX on Sapphire Rapids on).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), as torch or /proc/cpuinfo says."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return any(bool(found.get(flag)) for flag in BF16_FLAGS)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16()


def resolve(requested: Any = None, device: str | torch.device = "cpu") -> str:
    """The precision that runs (``bf16`` or ``fp32``) for a requested one (None: the environment, else auto)."""
    value = str(requested or os.environ.get(ENV) or "auto").strip().lower()
    if value not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    if value == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return value


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor (or a module's 4-D weights) in channels_last memory format; anything else unchanged."""
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``; plain fp32 otherwise."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
