"""``mammolabel import-dicom``: a folder tree of DICOM files into a datastore, one image per MG instance.

Every file is read first: single-frame MG instances become images (their SOP Instance UID is
the image id); other modalities, multi-frame objects (tomosynthesis) and files without pixels are
listed and skipped; files that are not DICOM at all (no ``DICM`` marker) are listed too. A DICOM
file that cannot be read or decoded stops the import before anything is written. Laterality and
view come from the header with the fallbacks of :mod:`mammolabel.data.view`; patient and study
are kept so that an examination finds its other views. CBIS-DDSM gives every image its own
Patient ID (``Mass-Test_P_00173_LEFT_CC``): the patient is its ``P_00173`` part.
Findings can be joined from a CSV (see :mod:`mammolabel.data.import_csv`) by SOP Instance UID
or by patient + laterality + view. Importing again gives the same datastore.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from tqdm import tqdm

from mammolabel.data.reimport import store_image
from mammolabel.data.view import CBIS_NAME, dicom_laterality, dicom_view, infer_view
from mammolabel.errors import InputError
from mammolabel.io import canonicalise, chest_wall_side, read_mammogram

@dataclass
class DicomImage:
    """One MG instance to import and what its header (or pixels) says."""

    path: Path
    sop_uid: str
    info: dict[str, Any]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def patient_of(ds: Any) -> str:
    """The patient: the Patient ID, or the patient part of a CBIS-DDSM name."""
    pid = str(ds.get("PatientID") or "")
    m = CBIS_NAME.match(pid)
    return m.group(1).upper() if m else pid


def scan(folder: Path) -> tuple[list[DicomImage], list[str]]:
    """The MG instances under ``folder`` (read and checked) and one line per file skipped."""
    images, skipped = [], []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in tqdm(files, desc="import-dicom (read)", unit="file"):
        if not _is_dicom(path):
            skipped.append(f"{path}: not a DICOM file; skipped")
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for a damaged file
            raise InputError(f"{path}: not a readable DICOM file ({e})") from e
        if "SOPClassUID" not in ds:
            raise InputError(f"{path}: damaged DICOM file (no SOP Class UID)")
        modality, frames = str(ds.get("Modality", "?")), int(ds.get("NumberOfFrames", 1) or 1)
        if modality != "MG":
            skipped.append(f"{path}: Modality {modality} object; skipped (MammoLabel imports mammograms)")
            continue
        if frames > 1:
            skipped.append(f"{path}: multi-frame MG ({frames} frames, e.g. tomosynthesis); skipped")
            continue
        if "SOPInstanceUID" not in ds:
            raise InputError(f"{path}: MG instance without a SOP Instance UID")
        image = read_mammogram(path)  # decodes and checks the pixels: a bad one stops the import here
        laterality, lat_source = dicom_laterality(ds)
        view, view_source = dicom_view(ds)
        if laterality is None:
            laterality, lat_source = ("R" if chest_wall_side(image.pixels) == "right" else "L"), "pixels"
        if view is None:
            view, view_source = infer_view(canonicalise(image, laterality).pixels), "pixels"
        spacing = image.meta.get("spacing")
        info = {"patient_id": patient_of(ds), "dicom_patient_id": str(ds.get("PatientID") or ""),
                "study_uid": str(ds.get("StudyInstanceUID", "")), "series_uid": str(ds.get("SeriesInstanceUID", "")),
                "sop_instance_uid": str(ds.SOPInstanceUID), "laterality": laterality, "laterality_source": lat_source,
                "view": view, "view_source": view_source, "source": "DICOM", "file": str(path.relative_to(folder))}
        if spacing:
            info["spacing_mm"] = float(spacing[0])
        images.append(DicomImage(path, str(ds.SOPInstanceUID), info))
    seen = Counter(i.sop_uid for i in images)
    doubles = [uid for uid, n in seen.items() if n > 1]
    if doubles:
        paths = [str(i.path) for i in images if i.sop_uid == doubles[0]]
        raise InputError(f"{paths[1]}: SOP Instance UID {doubles[0]} is also in {paths[0]}")
    return images, skipped


def import_dicom(folder: str | os.PathLike, datastore_dir: str | os.PathLike,
                 findings_csv: str | os.PathLike | None = None) -> dict[str, Any]:
    """Import every MG instance under ``folder``; return a summary (images, patients, skipped, findings)."""
    from mammolabel.data.datastore import MammoDatastore
    from mammolabel.data.import_csv import join_findings, read_findings

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    images, skipped = scan(folder)
    findings = read_findings(findings_csv, images) if findings_csv else None
    store = MammoDatastore(datastore_dir)
    outcomes = Counter()
    for image in tqdm(images, desc="import-dicom (store)", unit="image"):
        outcome = store_image(store, image.sop_uid, image.path, image.info)
        outcomes[outcome] += 1
        if outcome == "kept":
            skipped.append(f"{image.path}: changed but its image {image.sop_uid} has annotators' labels; kept as it was")
    summary: dict[str, Any] = {
        "images": len(images), "patients": len({i.info["patient_id"] for i in images}),
        "studies": len({i.info["study_uid"] for i in images}), "skipped": len(skipped), "problems": skipped,
        "stored": dict(outcomes), "datastore": str(datastore_dir),
    }
    if findings is not None:
        summary["findings"] = join_findings(store, findings, findings_csv)
    return summary
