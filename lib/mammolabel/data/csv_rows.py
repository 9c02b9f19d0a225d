"""Reading an import CSV: columns through a layout, one :class:`ImageRecord` per image, every value checked.

A row names an image and may give its patient, study, laterality, view, finding, BI-RADS,
density, lesion type, a box (x0, y0, x1, y1 in pixels), a point (x, y) and a mask file. Rows of
the same image (several lesions) are merged. A finding is ``normal``, ``benign`` or ``malignant``
or a pathology word (``BENIGN_WITHOUT_CALLBACK``, ``cancer``...). Without one, BI-RADS gives it:
1 normal, 2 and 3 benign, 4 to 6 malignant (suspicion, not pathology); BI-RADS 0 gives none.
Density is stored as A-D (1-4 are read as A-D). A malformed file or row is refused with one line
naming the file and line.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammolabel.data.labels import FINDINGS
from mammolabel.data.view import view_from_text
from mammolabel.errors import InputError

KEYS = ("image", "image_id", "sop_instance_uid", "patient", "study", "laterality", "view", "finding", "birads",
        "finding_birads", "density", "lesion_type", "x0", "y0", "x1", "y1", "x", "y", "mask", "split")
#: Column names of each layout, per key (the first one present in the file is used).
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "generic": {key: (key,) for key in KEYS} | {"patient": ("patient_id", "patient"),
                                                "study": ("study_id", "study")},
    "vindr": {"image_id": ("image_id",), "patient": ("study_id",), "study": ("study_id",), "laterality": ("laterality",),
              "view": ("view_position",), "birads": ("breast_birads",), "finding_birads": ("finding_birads",),
              "density": ("breast_density",), "lesion_type": ("finding_categories",), "x0": ("xmin",),
              "y0": ("ymin",), "x1": ("xmax",), "y1": ("ymax",), "split": ("split",)},
    "cbis": {"image": ("image file path",), "patient": ("patient_id",), "laterality": ("left or right breast",),
             "view": ("image view",), "finding": ("pathology",), "birads": ("assessment",),
             "density": ("breast_density", "breast density"), "lesion_type": ("abnormality type",),
             "mask": ("ROI mask file path",)},
}
_FINDING_WORDS = {
    "normal": "normal", "negative": "normal", "no finding": "normal", "none": "normal",
    "benign": "benign", "benign_without_callback": "benign", "benign without callback": "benign",
    "malignant": "malignant", "malignancy": "malignant", "cancer": "malignant", "carcinoma": "malignant",
}
_LESION_WORDS = {"mass": "mass", "calcification": "calcification", "calc": "calcification",
                 "distortion": "distortion", "asymmetry": "asymmetry"}
_SEVERITY = {f: i for i, f in enumerate(FINDINGS)}


@dataclass
class ImageRecord:
    """Everything the rows of one image say, with the line numbers they came from."""

    key: str
    lines: list[int] = field(default_factory=list)
    fields: dict[str, tuple[str, int]] = field(default_factory=dict)  # image-level value and its line
    findings: list[str] = field(default_factory=list)
    birads: list[int] = field(default_factory=list)
    lesion_types: list[str] = field(default_factory=list)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[tuple[list[int], int]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    masks: list[tuple[str, int]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return self.fields[key][0] if key in self.fields else None

    @property
    def finding(self) -> str | None:
        """The most severe finding of the rows, else the one the highest BI-RADS gives."""
        if self.findings:
            return max(self.findings, key=_SEVERITY.__getitem__)
        return birads_finding(max(self.birads)) if self.birads else None


def birads_finding(category: int) -> str | None:
    """BI-RADS 1 normal, 2-3 benign, 4-6 malignant (suspicion); 0 (incomplete) gives no finding."""
    return None if category == 0 else ("normal" if category == 1 else "benign" if category <= 3 else "malignant")


def parse_birads(text: str) -> int:
    m = re.fullmatch(r"(?:BI-?RADS\s*)?([0-6])\s*[ABC]?", text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"BI-RADS {text!r} is not a category 0-6")
    return int(m.group(1))


def parse_density(text: str) -> str:
    m = re.fullmatch(r"(?:DENSITY\s*)?([ABCD1-4])", text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"density {text!r} is not A-D or 1-4")
    value = m.group(1).upper()
    return "ABCD"[int(value) - 1] if value.isdigit() else value


def parse_finding(text: str) -> str:
    word = _FINDING_WORDS.get(text.strip().lower())
    if word is None:
        raise ValueError(f"finding {text!r} is not normal, benign or malignant (or a pathology word)")
    return word


def parse_lesion_types(text: str) -> list[str]:
    """Lesion types of a cell: a word, a comma-separated list, or VinDr's "['Mass', 'Asymmetry']"."""
    text = text.strip()
    if text.startswith("["):
        try:
            words = [str(w) for w in ast.literal_eval(text)]
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"lesion types {text!r} are not a list") from e
    else:
        words = [w for w in re.split(r"[,;]", text) if w.strip()]
    types = []
    for word in words:
        lowered = word.strip().lower()
        if lowered in ("no finding", "none", "normal"):
            continue
        kind = next((v for k, v in _LESION_WORDS.items() if k in lowered), "other")
        if kind not in types:
            types.append(kind)
    return types


def _number(text: str, what: str, minimum: float | None = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{what} {text!r} must be a finite number >= {minimum:g}")
    return value


def _columns(header: list[str], layout: str, renames: dict[str, str], csv_path: Path) -> dict[str, str]:
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    unknown = sorted(set(renames) - set(KEYS))
    if unknown:
        raise InputError(f"--columns: unknown key(s) {', '.join(unknown)}; keys are {', '.join(KEYS)}")
    columns = {}
    for key, names in LAYOUTS[layout].items():
        found = next((n for n in names if n in header), None)
        if found:
            columns[key] = found
    for key, name in renames.items():
        if name not in header:
            raise InputError(f"{csv_path}:1: --columns {key}={name}: no column {name!r} in the header")
        columns[key] = name
    if not ({"image", "image_id", "sop_instance_uid", "patient"} & set(columns)):
        raise InputError(f"{csv_path}:1: no image column for layout {layout!r} (header: {', '.join(header[:12])})")
    return columns


def read_rows(csv_path: str | os.PathLike, layout: str = "generic",
              renames: dict[str, str] | None = None) -> tuple[dict[str, ImageRecord], dict[str, str]]:
    """Parse the CSV into one record per image (keyed by image path or id); raise on a malformed row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{csv_path}: not a UTF-8 text file ({e})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as e:
        raise InputError(f"{csv_path}:1: not a CSV header ({e})") from None
    if not header or len(set(header)) != len(header):
        raise InputError(f"{csv_path}:1: missing or repeated column names in the header")
    columns = _columns(header, layout, dict(renames or {}), csv_path)
    index = {key: header.index(name) for key, name in columns.items()}
    records: dict[str, ImageRecord] = {}
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            raise InputError(f"{csv_path}:{reader.line_num}: not a CSV row ({e})") from None
        if cells is None:
            break
        number = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise InputError(f"{csv_path}:{number}: {len(cells)} cells where the header has {len(header)}")
        row = {key: cells[i].strip() for key, i in index.items()}
        row = {k: v for k, v in row.items() if v and v.lower() not in ("nan", "na", "n/a")}
        try:
            _add_row(records, row, number, layout)
        except ValueError as e:
            raise InputError(f"{csv_path}:{number}: {e}") from None
    return records, columns


def _image_key(row: dict[str, str], layout: str) -> str:
    if layout == "vindr" and "image_id" in row and "study" in row:
        return f"{row['study']}/{row['image_id']}"
    for key in ("image", "image_id", "sop_instance_uid"):
        if key in row:
            return row[key]
    if "patient" in row and "laterality" in row and "view" in row:
        return f"{row['patient']}|{row['laterality']}|{row['view']}"
    raise ValueError("the row names no image (image, image_id, sop_instance_uid or patient + laterality + view)")


def _add_row(records: dict[str, ImageRecord], row: dict[str, str], number: int, layout: str) -> None:
    if "laterality" in row:
        side = row["laterality"].upper()
        row["laterality"] = side[0] if side in ("L", "R", "LEFT", "RIGHT") else ""
        if not row["laterality"]:
            raise ValueError(f"laterality {side!r} is not L, R, LEFT or RIGHT")
    if "view" in row:
        view = view_from_text(row["view"])
        if view is None:
            raise ValueError(f"view {row['view']!r} is not CC, MLO, ML, LM...")
        row["view"] = view
    key = _image_key(row, layout)
    record = records.setdefault(key, ImageRecord(key))
    record.lines.append(number)
    for name in ("image", "image_id", "sop_instance_uid", "patient", "study", "laterality", "view", "density", "split"):
        if name not in row:
            continue
        value = parse_density(row[name]) if name == "density" else row[name]
        old = record.fields.setdefault(name, (value, number))
        if old[0] != value:
            raise ValueError(f"{name} {value!r} contradicts line {old[1]} ({old[0]!r}) for the same image")
    finding = parse_finding(row["finding"]) if "finding" in row else None
    if finding:
        record.findings.append(finding)
    if "birads" in row:
        record.birads.append(parse_birads(row["birads"]))
    lesion = {"line": number}
    types = parse_lesion_types(row["lesion_type"]) if "lesion_type" in row else []
    record.lesion_types.extend(t for t in types if t not in record.lesion_types)
    corners = [row.get(k) for k in ("x0", "y0", "x1", "y1")]
    if any(corners):
        if not all(corners):
            raise ValueError("a box needs all of x0, y0, x1, y1")
        x0, y0, x1, y1 = (int(round(_number(v, "box corner", None))) for v in corners)  # clipped to the image later
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) has x1 < x0 or y1 < y0")
        record.boxes.append(([x0, y0, x1, y1], number))
        lesion["box"] = [x0, y0, x1, y1]
    if any(row.get(k) for k in ("x", "y")):
        if not (row.get("x") and row.get("y")):
            raise ValueError("a point needs both x and y")
        point = [_number(row["x"], "x"), _number(row["y"], "y")]
        record.points.append(point)
        lesion["point"] = point
    if "mask" in row:
        record.masks.append((row["mask"], number))
    if types or "finding_birads" in row or len(lesion) > 1:
        lesion.update(types=types, finding=finding)
        if "finding_birads" in row:
            lesion["birads"] = parse_birads(row["finding_birads"])
        record.lesions.append(lesion)
