"""DICOM MG reading (Modality LUT, VOI LUT or window, MONOCHROME1) and writing."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammolabel.data.view import dicom_laterality, dicom_view
from mammolabel.errors import InputError
from mammolabel.io.dicom_checks import check_header
from mammolabel.io.image import Mammogram, normalise

#: Digital Mammography X-Ray Image Storage - For Presentation.
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MAX_PIXELS = 64_000_000
MIN_SIDE = 16


def find_instance(path: Path) -> Path:
    """Return the DICOM file of ``path``: the file itself, or the single instance inside a folder."""
    if not path.is_dir():
        return path
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) != 1:
        raise InputError(f"{path}: a DICOM study folder must hold exactly one instance, found {len(files)}")
    return files[0]


def check_bits_stored(path: Path, raw: np.ndarray, ds: Dataset) -> None:
    """Refuse unsigned stored values above the range of BitsStored (e.g. 65535 in a 12-bit image).

    Signed data is not checked: pydicom returns it without sign extension of the unused high bits.
    """
    bits = int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if signed or not np.issubdtype(raw.dtype, np.integer) or not 0 < bits < raw.dtype.itemsize * 8:
        return
    highest, found = (1 << bits) - 1, int(raw.max())
    if found > highest:
        raise InputError(f"{path}: pixel value {found} exceeds the {bits} bits stored (at most {highest}); "
                         "the file is inconsistent")


def read_dicom(path: Path) -> Mammogram:
    """Read a single-frame greyscale DICOM image, display-ready (LUTs applied, bright = dense)."""
    path = find_instance(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises many types for a damaged file
        raise InputError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM object has no pixel data (modality {ds.get('Modality', '?')})")
    check_header(path, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"{path}: multi-frame DICOM ({frames} frames, e.g. tomosynthesis) is not supported")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: colour DICOM image (SamplesPerPixel={ds.SamplesPerPixel}) is not a mammogram")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if min(rows, cols) < MIN_SIDE or rows * cols > MAX_PIXELS:
        raise InputError(f"{path}: image size {rows}x{cols} is outside the supported range")
    try:
        raw = ds.pixel_array
    except Exception as e:
        raise InputError(f"{path}: cannot decode DICOM pixel data ({e})") from e
    if raw.ndim != 2:
        raise InputError(f"{path}: expected a 2D image, got pixel array of shape {raw.shape}")
    check_bits_stored(path, raw, ds)
    values = apply_modality_lut(raw, ds)
    if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.round(values)):
        values = values.astype(np.int32)  # a LUT indexes integers; an identity rescale made them float
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = apply_voi_lut(values, ds, index=0)
    pixels = normalise(np.asarray(values, dtype=np.float32))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    laterality, laterality_source = dicom_laterality(ds)
    view, view_source = dicom_view(ds)
    meta = {
        "path": str(path),
        "format": "dicom",
        "bits": int(ds.get("BitsStored", 16)),
        "spacing": (float(spacing[0]), float(spacing[1])) if spacing else None,
        "laterality": laterality,
        "laterality_source": laterality_source,
        "view": view,
        "view_source": view_source,
        "patient_orientation": [str(v) for v in ds.get("PatientOrientation") or []],
        "photometric": photometric,
        "modality": ds.get("Modality"),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")),
    }
    return Mammogram(pixels, meta)


def write_dicom_mg(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    laterality: str,
    view: str = "MLO",
    spacing_mm: float = 0.1,
    bits: int = 12,
    monochrome1: bool = False,
    description: str = "MammoLabel phantom",
) -> Path:
    """Write ``pixels`` (float in [0, 1], bright = dense) as a DICOM MG For Presentation instance.

    Stored as ``bits``-bit unsigned integers with a window covering the full range; with
    ``monochrome1`` the stored values are inverted as MONOCHROME1 requires.
    """
    top = (1 << bits) - 1
    stored = np.round(np.clip(pixels, 0, 1) * top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    now = datetime.datetime(2024, 1, 1, 12, 0, 0)
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "MammoLabel"
    ds.SeriesDescription = description
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    ds.ViewPosition = view
    ds.PatientOrientation = ["P", "F"] if laterality == "R" else ["A", "F"]  # chest wall right for R, as hung
    ds.BodyPartExamined = "BREAST"
    ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (top + 1) / 2
    ds.WindowWidth = top + 1
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.tobytes()
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return path
