"""Laterality and view of a mammogram from its header, its names, or its pixels.

Laterality: DICOM ImageLaterality, else the series' Laterality, else Patient Orientation, else
the pixels (a breast is hung with its chest wall towards its own side). View: ViewPosition,
else the view code sequence, else the series description, else a view word in a name (Patient
Orientation or Patient ID, where CBIS-DDSM puts it, or the file name), else the pixels: an MLO
view shows the pectoral muscle in its upper chest-wall corner, a CC view does not.
Every answer comes with where it was found (``header``, ``name`` or ``pixels``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

VIEWS = ("CC", "MLO", "ML", "LM", "XCCL", "XCCM", "AT", "SIO", "FB")
#: Views recognised in free text (short codes such as AT are ordinary words there).
TEXT_VIEWS = ("CC", "MLO", "ML", "LM", "XCCL", "XCCM")
#: SNOMED CT and SNOMED-RT codes of the DICOM view code sequence (CID 4014), and their meanings.
VIEW_CODES = {
    "399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO", "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM", "399099002": "XCCL", "R-1024A": "XCCL", "399192003": "XCCM",
    "R-1024B": "XCCM",
}
_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML", "latero-medial": "LM"}
#: CBIS-DDSM names its files and patients ``Mass-Training_P_00001_LEFT_CC``.
CBIS_NAME = re.compile(r"^(?:Calc|Mass)-(?:Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_\d+)?$", re.IGNORECASE)


def _tokens(text: Any) -> list[str]:
    return [t for t in re.split(r"[^A-Z]+", str(text or "").upper()) if t]


def view_from_text(text: Any) -> str | None:
    """A view named in free text ("RCC", "left MLO", "Mass-Test_P_00173_LEFT_CC"), or None."""
    for token in _tokens(text):
        if token in TEXT_VIEWS:
            return token
        if len(token) > 1 and token[0] in "LR" and token[1:] in ("CC", "MLO", "ML", "LM"):
            return token[1:]
    return None


def laterality_from_text(text: Any) -> str | None:
    """"L" or "R" when free text names one side ("LEFT", "RMLO"), else None."""
    sides = set()
    for token in _tokens(text):
        if token in ("LEFT", "RIGHT"):
            sides.add(token[0])
        elif len(token) > 1 and token[0] in "LR" and token[1:] in ("CC", "MLO", "ML", "LM"):
            sides.add(token[0])
    return sides.pop() if len(sides) == 1 else None


def laterality_from_orientation(orientation: Any) -> str | None:
    """Laterality from DICOM Patient Orientation as mammograms are hung (e.g. A\\R for a left CC).

    The column direction runs medially (towards R on a left breast); without L or R in it, the row
    direction points away from the chest wall (A: chest wall on the left, a left breast).
    """
    values = [str(v).upper() for v in (orientation or [])]
    if len(values) != 2 or values[0][:1] not in ("A", "P"):
        return None
    column = values[1].replace("F", "").replace("H", "")
    if column in ("L", "R"):
        return "R" if column == "L" else "L"
    return "L" if values[0].startswith("A") else "R"


def dicom_laterality(ds: Any) -> tuple[str | None, str | None]:
    """(laterality, source) from ImageLaterality, Laterality, Patient Orientation, then the names."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword) or "").upper()
        if value in ("L", "R"):
            return value, "header"
    side = laterality_from_orientation(ds.get("PatientOrientation"))
    if side:
        return side, "header"
    side = laterality_from_text(ds.get("PatientID")) or laterality_from_text(ds.get("SeriesDescription"))
    return (side, "name") if side else (None, None)


def dicom_view(ds: Any) -> tuple[str | None, str | None]:
    """(view, source) from ViewPosition, the view code sequence, the series description, then the names."""
    value = str(ds.get("ViewPosition") or "").upper()
    if value in VIEWS:
        return value, "header"
    for item in ds.get("ViewCodeSequence") or []:
        code = VIEW_CODES.get(str(item.get("CodeValue", "")))
        code = code or _MEANINGS.get(str(item.get("CodeMeaning", "")).lower())
        if code:
            return code, "header"
    view = view_from_text(ds.get("SeriesDescription"))
    if view:
        return view, "header"
    orientation = ds.get("PatientOrientation") or []
    view = view_from_text(" ".join(str(v) for v in orientation)) or view_from_text(ds.get("PatientID"))
    return (view, "name") if view else (None, None)


def infer_view(canonical: np.ndarray) -> str:
    """CC or MLO of a canonical image (chest wall on the left): MLO when a pectoral muscle is found."""
    from mammolabel.breast import segment_breast

    return "MLO" if segment_breast(canonical, view="MLO").pectoral.any() else "CC"
