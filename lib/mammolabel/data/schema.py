"""The schema of the values MammoLabel stores in image info and label info, and reads back.

:func:`check_info` runs on every save (upload, label save, info update): a field the project reads
back must have its type and range, otherwise :class:`InputError` names it and nothing is stored.
:func:`read_field` is what readers use: a bad stored value (an index edited by hand, a file written
by another tool) gives the default and is counted, so one bad value never fails a whole endpoint.
Fields the project does not read are stored as given.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from mammolabel.data.labels import check_finding
from mammolabel.errors import InputError

logger = logging.getLogger(__name__)

MAX_ITEMS = 10_000  # boxes, points, radii or lesion types of one label
MAX_COORD = 100_000  # pixels: beyond any supported image side
MAX_TEXT = 256


def _number(value: Any, lo: float = -math.inf, hi: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a number, got {value!r}")
    if value < lo or value > hi or (low_open and value == lo):
        raise ValueError(f"{value!r} is outside {'(' if low_open else '['}{lo}, {hi}]")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or len(str(value)) > MAX_TEXT:
        raise ValueError(f"expected a short text, got {value!r:.80}")
    return str(value)


def _list(value: Any, item: Callable[[Any], Any]) -> list:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise ValueError(f"expected a list of at most {MAX_ITEMS} items, got {type(value).__name__}")
    return [item(v) for v in value]


def _box(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) != 4 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value):
        raise ValueError(f"a box is [x0, y0, x1, y1] of integers, got {value!r:.80}")
    x0, y0, x1, y1 = value
    if not (0 <= x0 <= x1 <= MAX_COORD and 0 <= y0 <= y1 <= MAX_COORD):
        raise ValueError(f"box {value} needs 0 <= x0 <= x1 and 0 <= y0 <= y1")
    return list(value)


def _point(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"a point is [x, y], got {value!r:.80}")
    return [_number(v, 0, MAX_COORD) for v in value]


def _laterality(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value not in ("L", "R"):
        raise ValueError(f"expected 'L' or 'R', got {value!r:.80}")
    return value


def _finding(value: Any) -> str:
    try:
        return check_finding(value)
    except InputError as e:
        raise ValueError(str(e)) from e


def _lock(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object with client_id and ts, got {value!r:.80}")
    out = dict(value)
    if "client_id" in out and out["client_id"] is not None:
        out["client_id"] = _text(out["client_id"])
    out["ts"] = _number(out.get("ts", 0), 0)
    return out


def _uncertainty(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object with a score, got {value!r:.80}")
    out = dict(value)
    out["score"] = _number(out.get("score", -1), -1)
    per_task = out.get("per_task", {})
    if not isinstance(per_task, dict):
        raise ValueError("per_task must be an object of numbers")
    out["per_task"] = {_text(k): _number(v) for k, v in per_task.items()}
    return out


#: Field -> check returning the value to store (or raising ValueError).
FIELDS: dict[str, Callable[[Any], Any]] = {
    "patient_id": _text,
    "laterality": _laterality,
    "view": lambda v: None if v is None else _text(v),
    "spacing_mm": lambda v: _number(v, 0, 10, low_open=True),
    "finding": _finding,
    "lesion_types": lambda v: _list(v, _text),
    "boxes": lambda v: _list(v, _box),
    "points": lambda v: _list(v, _point),
    "radii": lambda v: _list(v, lambda r: _number(r, 0, MAX_COORD, low_open=True)),
    "lock": _lock,
    "uncertainty": _uncertainty,
}


def check_info(info: Any, what: str) -> dict[str, Any]:
    """``info`` with every known field checked (and normalised); :class:`InputError` names a bad one."""
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise InputError(f"{what} must be a JSON object, got {type(info).__name__}")
    out = dict(info)
    for key, check in FIELDS.items():
        if key in out and not (key == "finding" and out[key] is None):
            try:
                out[key] = check(out[key])
            except (ValueError, TypeError) as e:
                raise InputError(f"{what}: field '{key}': {e}") from e
    return out


def read_field(info: dict[str, Any], key: str, default: Any, counts: Counter | None = None, where: str = "") -> Any:
    """The stored ``info[key]`` checked against the schema; ``default`` (counted) when absent or bad."""
    if not isinstance(info, dict) or info.get(key) is None:
        return default
    try:
        return FIELDS[key](info[key])
    except (ValueError, TypeError) as e:
        logger.warning(f"{where}: stored '{key}' ignored: {e}")
        if counts is not None:
            counts[f"invalid_{key}"] += 1
        return default
