"""``mammolabel import-csv``: films and their findings from a spreadsheet (one or more rows per image).

A row names an image and may give its patient, study, laterality, view, finding, BI-RADS,
density, lesion type, a box (x0, y0, x1, y1 in pixels, clipped to the image), a point (x, y) and a mask file. Rows of
the same image (several lesions) are merged: the image's finding is the most severe of its rows,
its boxes, points and masks are all kept. Columns are found through a layout (``generic``,
``vindr``, ``cbis``), and ``--columns key=name`` renames any of them.

A finding is ``normal``, ``benign`` or ``malignant`` or a pathology word (``BENIGN_WITHOUT_CALLBACK``,
``cancer``...). Without one, BI-RADS gives it: 1 normal, 2 and 3 benign, 4 to 6 malignant
(suspicion, not pathology); BI-RADS 0 gives none. Density is stored as A-D (1-4 are read as A-D).

The whole file is read and checked before anything is written: a malformed file or row stops
the import with one line naming the file and line (the datastore is left as it was). Rows whose
image or mask file is missing are skipped and reported with their line numbers. Importing again
gives the same datastore.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mammolabel.data.csv_rows import ImageRecord, read_rows
from mammolabel.data.labels import TAG_BOX, TAG_FINDING, TAG_MASK, box_centres, box_mask
from mammolabel.data.view import CBIS_NAME, laterality_from_text
from mammolabel.data.reimport import store_image, store_label
from mammolabel.errors import InputError
from mammolabel.io import file_format, read_label, read_mammogram, write_labelmap


def image_file(record: ImageRecord, images: Path, layout: str) -> Path | None:
    """The image file of a record under ``images``, or None when there is none."""
    if layout == "vindr":
        stem = images / record.key
        return next((stem.with_suffix(s) for s in (".dicom", ".dcm", ".png") if stem.with_suffix(s).is_file()), None)
    name = record.get("image")
    if name is None:
        return None
    path = (images / name) if not Path(name).is_absolute() else Path(name)
    return path if path.is_file() else None


def image_id_of(record: ImageRecord, layout: str) -> str:
    """A datastore id: the image_id column, a CBIS-DDSM folder name, or the file's relative path."""
    if record.get("image_id"):
        name = record.get("image_id")
    else:
        parts = Path(record.get("image") or record.key).with_suffix("").parts
        name = next((p for p in parts if CBIS_NAME.match(p)), "_".join(p for p in parts if p not in ("/", "..")))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._-") or "image"
    if len(name) > 100 or ".." in name:
        name = f"{name[:80].strip('._-')}_{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A lesion mask (any label format, or a DICOM mask as CBIS-DDSM ships them) as 0/1 of ``shape``."""
    if file_format(path) == "dicom":
        image = read_mammogram(path)
        mask = (image.pixels > 0.5).astype(np.uint8)
        if mask.shape != shape:
            raise InputError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (W x H) but the image is "
                             f"{shape[1]}x{shape[0]}")
        return mask
    return (read_label(path, shape) > 0).astype(np.uint8)


def store_record(store, image_id: str, record: ImageRecord, shape: tuple[int, int], mask_dir: Path | None,
                 tmp: Path, counts: Counter, problems: list[str], where: str) -> None:
    """Save the finding, box and mask labels of one image (already in ``store``) from its record; a label an
    annotator saved at the same tag is kept (:mod:`mammolabel.data.reimport`)."""
    source = Path(where).name
    rows, cols = shape
    boxes = []
    for box, line in record.boxes:  # annotation tools draw a little past the edge: such boxes are clipped
        clipped = [max(0, box[0]), max(0, box[1]), min(cols - 1, box[2]), min(rows - 1, box[3])]
        if clipped[0] > clipped[2] or clipped[1] > clipped[3]:
            problems.append(f"{where}:{line}: box {box} lies outside the {cols}x{rows} image; box skipped")
            continue
        counts["boxes_clipped"] += clipped != box
        boxes.append(clipped)
    mask = np.zeros(shape, np.uint8)
    for name, line in record.masks:
        path = (mask_dir / name) if mask_dir is not None else Path(name)
        if not path.is_file():
            problems.append(f"{where}:{line}: mask file {path} not found; mask skipped")
            counts["missing_masks"] += 1
            continue
        try:
            mask |= _read_mask(path, shape)
        except InputError as e:
            problems.append(f"{where}:{line}: {e}; mask skipped")
            continue
        counts["mask_files"] += 1
    finding = record.finding
    if finding:
        info = {"finding": finding, "lesion_types": list(record.lesion_types),
                "points": [*box_centres(boxes), *record.points], "lesions": record.lesions}
        if record.birads:
            info["birads"] = max(record.birads)
        if record.get("density"):
            info["density"] = record.get("density")
        counts["findings" if store_label(store, image_id, "", TAG_FINDING, info, source) else "kept_labels"] += 1
    if boxes:
        box_file = write_labelmap(tmp / f"{image_id}_box.nrrd", box_mask(boxes, shape))
        if store_label(store, image_id, box_file, TAG_BOX, {"points": box_centres(boxes)}, source):
            counts["boxes"] += len(boxes)
        else:
            counts["kept_labels"] += 1
    if mask.any():
        mask_file = write_labelmap(tmp / f"{image_id}_final.nrrd", mask)
        counts["masks" if store_label(store, image_id, mask_file, TAG_MASK, {}, source) else "kept_labels"] += 1


def _image_info(record: ImageRecord, layout: str) -> dict[str, Any]:
    info: dict[str, Any] = {"source": f"csv:{layout}"}
    for key, name in (("patient", "patient_id"), ("study", "study_id"), ("laterality", "laterality"),
                      ("view", "view"), ("density", "density"), ("split", "split"),
                      ("sop_instance_uid", "sop_instance_uid")):
        if record.get(key):
            info[name] = record.get(key)
    if record.birads:
        info["birads"] = max(record.birads)
    if "patient_id" not in info:  # CBIS-DDSM and many others name the patient in the file path
        m = next((CBIS_NAME.match(p) for p in Path(record.key).parts if CBIS_NAME.match(p)), None)
        if m:
            info["patient_id"] = m.group(1).upper()
    if "laterality" not in info and laterality_from_text(record.key):
        info["laterality"] = laterality_from_text(record.key)
    return info


def import_csv(csv_path: str | os.PathLike, datastore_dir: str | os.PathLike, images: str | os.PathLike,
               layout: str = "generic", renames: dict[str, str] | None = None) -> dict[str, Any]:
    """Import the images and labels a CSV describes; return the summary (counts and problems)."""
    from mammolabel.data.datastore import MammoDatastore

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: --images is not a folder")
    records, _ = read_rows(csv_path, layout, renames)
    counts: Counter = Counter(rows=sum(len(r.lines) for r in records.values()))
    problems: list[str] = []
    found: list[tuple[ImageRecord, Path]] = []
    for record in records.values():
        path = image_file(record, images, layout)
        if path is None:
            lines = ",".join(map(str, record.lines[:5])) + ("..." if len(record.lines) > 5 else "")
            problems.append(f"{csv_path}:{lines}: image {record.key} not found under {images}; skipped")
            counts["missing_images"] += 1
            continue
        found.append((record, path))
    ids = Counter(image_id_of(r, layout) for r, _ in found)
    twice = next((i for i, n in ids.items() if n > 1), None)
    if twice:
        lines = [r.lines[0] for r, _ in found if image_id_of(r, layout) == twice]
        raise InputError(f"{csv_path}:{lines[1]}: image id {twice!r} is also the id of line {lines[0]}'s image")
    store = MammoDatastore(datastore_dir) if found else None  # nothing to import: nothing written
    with tempfile.TemporaryDirectory() as tmp:
        for record, path in tqdm(found, desc="import-csv", unit="image"):
            image_id = image_id_of(record, layout)
            try:
                shape = read_mammogram(path).shape
            except InputError as e:
                problems.append(f"{csv_path}:{record.lines[0]}: {e}; skipped")
                counts["unreadable_images"] += 1
                continue
            source = path
            if file_format(path) == "dicom" and path.suffix.lower() != ".dcm":  # the datastore lists *.dcm
                source = Path(tmp) / f"{image_id}.dcm"
                shutil.copyfile(path, source)
            if store_image(store, image_id, source, _image_info(record, layout)) == "kept":
                problems.append(f"{csv_path}:{record.lines[0]}: image {image_id} changed but has annotators' labels; "
                                "kept as it was (remove it to import the new file)")
                counts["kept_images"] += 1
                continue
            counts["images"] += 1
            store_record(store, image_id, record, shape, images, Path(tmp), counts, problems, str(csv_path))
    summary = {k: counts.get(k, 0) for k in ("rows", "images", "findings", "boxes", "boxes_clipped", "masks",
                                            "missing_images", "missing_masks", "unreadable_images", "kept_images",
                                            "kept_labels")}
    return {**summary, "problems": problems, "datastore": str(datastore_dir)}


def read_findings(csv_path: str | os.PathLike, images: list) -> dict[str, ImageRecord]:
    """Findings of ``import-dicom``: generic-layout rows joined to the DICOM images by SOP Instance UID
    or by patient + laterality + view; a row that matches no image, or several, is refused."""
    records, _ = read_rows(csv_path, "generic")
    by_uid = {i.sop_uid: i for i in images}
    joined: dict[str, ImageRecord] = {}
    for record in records.values():
        uid = record.get("sop_instance_uid")
        if uid:
            matches = [by_uid[uid]] if uid in by_uid else []
        else:
            wanted = (record.get("patient"), record.get("laterality"), record.get("view"))
            matches = [i for i in images if wanted in ((i.info["patient_id"], i.info["laterality"], i.info["view"]),
                                                       (i.info["dicom_patient_id"], i.info["laterality"],
                                                        i.info["view"]))]
        if len(matches) != 1:
            what = "no image" if not matches else f"{len(matches)} images"
            raise InputError(f"{csv_path}:{record.lines[0]}: row {record.key!r} matches {what} of the folder")
        joined[matches[0].sop_uid] = record
    return joined


def join_findings(store, findings: dict[str, ImageRecord], csv_path: str | os.PathLike) -> dict[str, Any]:
    """Save the labels of the joined CSV records on the imported DICOM images (masks relative to the CSV)."""
    counts: Counter = Counter()
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for uid, record in findings.items():
            store_record(store, uid, record, store.image_shape(uid), Path(csv_path).parent, Path(tmp), counts, problems,
                         str(csv_path))
    return {**dict(counts), "problems": problems}
