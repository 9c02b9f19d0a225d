"""Checks of the DICOM header values a mammogram is displayed and measured with.

A value that is present but unparsable or out of range (a zero window width, a negative pixel
spacing, a NaN rescale slope), a bit depth that contradicts itself, or a modality that is no
projection radiograph is refused when the file is read, so that nothing stored fails later.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mammolabel.errors import InputError

#: Projection radiography: mammography, digital and computed radiography, other, secondary capture.
MODALITIES = ("MG", "DX", "CR", "OT", "SC")
MAX_SPACING_MM = 10.0


def _numbers(ds: Dataset, keyword: str, path: Path, count: int | None = None) -> list[float] | None:
    """The numeric values of ``keyword`` (None when absent), or :class:`InputError` when unparsable."""
    if keyword not in ds:
        return None
    try:
        raw = ds[keyword].value
        if raw is None or raw == "":
            return None
        values = [float(v) for v in (raw if isinstance(raw, (MultiValue, list, tuple)) else [raw])]
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{path}: DICOM {keyword} is not a number ({e})") from e
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{path}: DICOM {keyword} must hold finite numbers, got {values}")
    if count is not None and len(values) != count:
        raise InputError(f"{path}: DICOM {keyword} must hold {count} values, got {len(values)}")
    return values


def check_header(path: Path, ds: Dataset) -> None:
    """Refuse a DICOM image whose display or geometry values cannot be used (see module docstring)."""
    modality = str(ds.get("Modality", "") or "")
    if modality and modality not in MODALITIES:
        raise InputError(f"{path}: modality {modality} is not a mammogram (expected one of {', '.join(MODALITIES)})")
    allocated, stored = int(ds.get("BitsAllocated", 16) or 16), int(ds.get("BitsStored", 0) or 0)
    high = ds.get("HighBit")
    if stored and (stored > allocated or (high is not None and int(high) != stored - 1)):
        raise InputError(f"{path}: bit depth contradicts itself (BitsAllocated {allocated}, BitsStored {stored}, "
                         f"HighBit {high})")
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _numbers(ds, keyword, path, count=2)
        if spacing and not all(0 < v <= MAX_SPACING_MM for v in spacing):
            raise InputError(f"{path}: DICOM {keyword} {spacing} mm is outside (0, {MAX_SPACING_MM}]")
    slope = _numbers(ds, "RescaleSlope", path)
    if slope and slope[0] == 0:
        raise InputError(f"{path}: DICOM RescaleSlope is 0")
    _numbers(ds, "RescaleIntercept", path)
    _numbers(ds, "WindowCenter", path)
    width = _numbers(ds, "WindowWidth", path)
    if width and min(width) < 1:
        raise InputError(f"{path}: DICOM WindowWidth must be at least 1, got {min(width)}")
