"""Upper bounds of the train options that size the network input, the batch and the network.

A request beyond them would ask for more memory than any supported machine has (or run for ever);
it is refused with a message before training starts.
"""

from __future__ import annotations

import re
from typing import Any

from mammolabel.errors import InputError

MAX_SIDE = 4096  # pixels of one input side (a full-field mammogram at 0.1 mm is about 3300 x 2600)
MAX_BATCH_PIXELS = 1 << 26  # batch_size x rows x cols: 256 MB of float32 input per step
#: Option -> largest value.
UPPER = {
    "epochs": 100_000, "local_epochs": 100_000, "joint_epochs": 100_000, "self_training_epochs": 100_000,
    "attention_epochs": 100_000, "steps_per_epoch": 1_000_000, "batch_size": 256, "num_patches": 64,
    "max_points": 1000, "depth": 200, "local_depth": 200, "width": 512, "global_width": 512, "local_width": 512,
    "head_channels": 8192, "first_channels": 8192, "shared_channels": 8192, "ppa_kernel": 1023,
    "rows": MAX_SIDE, "cols": MAX_SIDE, "input_rows": MAX_SIDE, "input_cols": MAX_SIDE, "roi_size": MAX_SIDE,
    "patch_size": MAX_SIDE,
}


def _sides(options: dict[str, Any]) -> tuple[int, int] | None:
    """(rows, cols) of the network input, from ``rows``/``cols``, ``input_rows``/``input_cols`` or ``size``."""
    for r, c in (("rows", "cols"), ("input_rows", "input_cols")):
        if isinstance(options.get(r), int) and isinstance(options.get(c), int):
            return options[r], options[c]
    size = options.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        numbers = [int(n) for n in re.findall(r"\d+", size)]
        if len(numbers) in (1, 2):
            return numbers[0], numbers[-1]
    return None


def check_limits(options: dict[str, Any]) -> None:
    """Raise :class:`InputError` when an option exceeds its upper bound (see module docstring)."""
    for key, top in UPPER.items():
        value = options.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > top:
            raise InputError(f"option '{key}' must be at most {top}, got {value}")
    features = options.get("features")
    if isinstance(features, str) and any(int(n) > 8192 for n in re.findall(r"\d+", features)):
        raise InputError("option 'features': each width must be at most 8192")
    sides = _sides(options)
    if sides and max(sides) > MAX_SIDE:
        raise InputError(f"network input {sides[0]}x{sides[1]} exceeds {MAX_SIDE} pixels a side")
    batch = options.get("batch_size")
    if sides and isinstance(batch, int) and batch * sides[0] * sides[1] > MAX_BATCH_PIXELS:
        raise InputError(f"batch_size {batch} x {sides[0]}x{sides[1]} input exceeds {MAX_BATCH_PIXELS:,} pixels "
                         "per step (memory): lower batch_size or the input size")
