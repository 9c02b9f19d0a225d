"""Read mammograms and label masks from DICOM, PNG, PGM, NIfTI and NRRD files.

Every reader returns arrays indexed (row, col) as the image is displayed; volumetric formats
(NIfTI, NRRD), which index (x, y[, z]), are transposed, and a third axis of length 1 (the W x H x 1
layout 3D Slicer uses for 2D images) is dropped. Any failure raises :class:`InputError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mammolabel.errors import InputError
from mammolabel.io.dicom import MAX_PIXELS, MIN_SIDE, read_dicom
from mammolabel.io.image import Mammogram, normalise

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".pgm", ".nii", ".nii.gz", ".nrrd")


def file_format(path: Path) -> str:
    """Name the format of ``path`` from its suffix or, for DICOM, its content."""
    name = path.name.lower()
    if path.is_dir() or name.endswith((".dcm", ".dicom")):
        return "dicom"
    for suffix, fmt in ((".png", "png"), (".pgm", "pgm"), (".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd")):
        if name.endswith(suffix):
            return fmt
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    raise InputError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")


#: Decoded bytes one image may take, checked from its header before anything is expanded.
MAX_DECODED_BYTES = 256 * 1024 * 1024


def _check_size(path: Path, shape: tuple[int, ...], itemsize: int = 1) -> None:
    sides = [int(s) for s in shape[:2]]
    if len(sides) < 2 or min(sides) < MIN_SIDE or int(np.prod(shape, dtype=np.float64)) > MAX_PIXELS:
        raise InputError(f"{path}: image size {'x'.join(map(str, shape))} is outside the supported range")
    if len(shape) > 3 or (len(shape) == 3 and int(shape[2]) != 1):
        raise InputError(f"{path}: expected a 2D image (or W x H x 1), got shape {tuple(int(s) for s in shape)}")
    if int(np.prod(shape, dtype=np.float64)) * itemsize > MAX_DECODED_BYTES:
        raise InputError(f"{path}: image would take more than {MAX_DECODED_BYTES >> 20} MB once decoded")


def _read_pil(path: Path) -> tuple[np.ndarray, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, im.size)
                mode = im.mode
                if mode in ("RGB", "RGBA", "LA", "P"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                        raise InputError(f"{path}: colour image ({mode}); a mammogram must be greyscale")
                    return rgb[..., 0].copy(), 8
                arr = np.asarray(im)
    except InputError:
        raise
    except Exception as e:  # PIL raises many types for truncated or foreign files
        raise InputError(f"{path}: cannot read image ({e})") from e
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2D greyscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8 or arr.dtype == bool:
        return arr.astype(np.uint8), 8
    bits = 12 if arr.max() < 4096 else 16
    return arr, bits


def _squeeze_volume(path: Path, arr: np.ndarray) -> np.ndarray:
    """(x, y[, 1]) volume -> (row, col) array."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2D image (or W x H x 1), got shape {arr.shape}")
    return arr.T


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        _check_size(path, img.shape, np.dtype(img.get_data_dtype()).itemsize)
        arr = np.asarray(img.dataobj)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read NIfTI ({e})") from e
    zooms = img.header.get_zooms()
    return _squeeze_volume(path, arr), (float(zooms[1]), float(zooms[0]))


def _read_nrrd(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        if any(key in header for key in ("data file", "datafile")):
            raise InputError(f"{path}: NRRD with a detached data file; store the image as one attached .nrrd")
        itemsize = np.dtype(nrrd.reader._determine_datatype(header)).itemsize
        _check_size(path, tuple(int(s) for s in header.get("sizes", [0])), itemsize)
        arr, header = nrrd.read(str(path))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read NRRD ({e})") from e
    spacing = None
    directions = header.get("space directions")
    if directions is not None:
        d = np.asarray([v for v in directions if v is not None and not np.any(np.isnan(np.asarray(v, float)))], float)
        if len(d) >= 2:
            spacing = (float(np.linalg.norm(d[1])), float(np.linalg.norm(d[0])))
    return _squeeze_volume(path, arr), spacing


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path}: not a regular file")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _read_raw(path: Path) -> tuple[np.ndarray, dict]:
    """Raw stored values (row, col) of a non-DICOM file and what its header says."""
    _check_file(path)
    fmt = file_format(path)
    meta: dict = {"path": str(path), "format": fmt, "spacing": None, "laterality": None, "view": None}
    if fmt in ("png", "pgm"):
        arr, meta["bits"] = _read_pil(path)
    elif fmt == "nifti":
        arr, meta["spacing"] = _read_nifti(path)
    elif fmt == "nrrd":
        arr, meta["spacing"] = _read_nrrd(path)
    else:
        raise InputError(f"{path}: DICOM is read as an image only")
    return arr, meta


def read_mammogram(path: str | os.PathLike) -> Mammogram:
    """Read a mammogram from any supported file (or a DICOM study folder holding one instance)."""
    path = Path(path)
    _check_file(path)
    if file_format(path) == "dicom":
        return read_dicom(path)
    arr, meta = _read_raw(path)
    if np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype == object:
        raise InputError(f"{path}: unsupported pixel type {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: image contains NaN or infinite values")
    meta.setdefault("bits", 32)
    return Mammogram(normalise(arr), meta)


def read_label(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask as uint8 (row, col); ``shape`` (rows, cols) is checked when given.

    A mask given in the transposed (cols, rows) layout is refused rather than guessed.
    """
    path = Path(path)
    _check_file(path)
    if file_format(path) == "dicom":
        raise InputError(f"{path}: DICOM labels are read by the DICOM SEG path, not as a mask")
    arr, _ = _read_raw(path)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{path}: label contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{path}: label values must be integers")
    if arr.min() < 0 or arr.max() > 255:
        raise InputError(f"{path}: label values must lie in 0..255, found {arr.min()}..{arr.max()}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(f"{path}: label is {arr.shape[1]}x{arr.shape[0]} (W x H) but the image is {shape[1]}x{shape[0]}")
    return arr.astype(np.uint8)
