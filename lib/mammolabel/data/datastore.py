"""MONAI Label datastore with validated, atomic label saves, and the one reader trainers use.

:class:`MammoDatastore` is MONAI Label's ``LocalDatastore`` with three changes: every image and
label is checked before it is stored (bad input raises :class:`InputError`, the datastore is left
unchanged); files and the datastore index are written atomically (temporary files that a crash left
behind are removed on open); and the weak-label tags of
:mod:`mammolabel.data.labels` are understood (``finding`` JSON, ``box`` masks turned into boxes).

:func:`collect_labels` reads every label an image has, from any MONAI Label datastore.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import Datastore

from mammolabel.data.labels import (
    TAG_BOX,
    TAG_FINDING,
    TAG_MASK,
    ImageLabels,
    box_centres,
    boxes_from_mask,
    check_finding,
)
from mammolabel.data.schema import check_info, read_field
from mammolabel.errors import ConflictError, InputError, NotFoundError
from mammolabel.io import atomic_path, read_label, read_mammogram, remove_stale_temps

logger = logging.getLogger(__name__)

EXTENSIONS = ["*.png", "*.pgm", "*.dcm", "*.nii.gz", "*.nii", "*.nrrd"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """Refuse ids and tags that could leave the datastore folder (``..``, ``/``) or are empty."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise InputError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' only")
    return value


class MammoDatastore(LocalDatastore):
    """Local datastore for mammograms with validated and atomic saves (see module docstring)."""

    def __init__(self, path: str | os.PathLike, auto_reload: bool = False, read_only: bool = False):
        # One writer at a time in this process: requests and the auto-reload thread (which would
        # otherwise change the index while another thread iterates over it).
        self._mutex = threading.RLock()
        super().__init__(str(path), extensions=EXTENSIONS, auto_reload=auto_reload, read_only=read_only)
        if not read_only:
            self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """The index, the images and the label folders are written only under the datastore lock: a
        temporary file of theirs found while holding it is stale. Nothing else of the folder is touched."""
        index = Path(self._datastore_config_path)
        with FileLock(self._lock_file):
            remove_stale_temps(index.parent, [index.name])
            images = Path(self._datastore.image_path())  # uploads: ".<id>.<ext>.XXXXXXXX.tmp", image names only
            uploads = {t.name[1:].rsplit(".", 2)[0] for t in images.glob(".*.tmp")}
            remove_stale_temps(images, [n for n in uploads if n.lower().endswith(tuple(e[1:] for e in EXTENSIONS))])
            for label_dir in (Path(self._datastore_path) / self._datastore.labels_dir).glob("*/"):
                remove_stale_temps(label_dir)

    def _on_any_event(self, event) -> None:
        self._guarded(super()._on_any_event, event)

    def _on_modify_event(self, event) -> None:
        self._guarded(super()._on_modify_event, event)

    def _guarded(self, handler, event) -> None:
        """Run a file-watcher handler under the mutex; an error is logged, the watcher thread lives on."""
        try:
            with self._mutex:
                handler(event)
        except Exception as e:  # noqa: BLE001 - a dead watcher would stop seeing deletions for good
            logger.error(f"datastore reload after {getattr(event, 'src_path', event)} failed: {type(e).__name__}: {e}")

    def status(self) -> dict[str, Any]:
        """Counts for ``/info``, from a snapshot of the index (taken without waiting for a writer)."""
        objects = list(self._datastore.objects.values())  # one C-level copy: safe while another thread writes
        tags = Counter(tag for obj in objects for tag in list(obj.labels))
        return {"total": len(objects), "completed": sum(1 for o in objects if o.labels.get(TAG_MASK)),
                "label_tags": dict(tags)}

    def _reconcile_datastore(self) -> None:
        with self._mutex:
            super()._reconcile_datastore()

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            with atomic_path(self._datastore_config_path) as tmp, open(tmp, "w") as f:
                f.write(text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def image_shape(self, image_id: str) -> tuple[int, int]:
        """(rows, cols) of a stored image."""
        uri = self.get_image_uri(image_id)
        if not uri or not os.path.isfile(uri):
            raise NotFoundError(f"image '{image_id}' is not in the datastore")
        return read_mammogram(uri).shape

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store a new image; an existing id is replaced (with its labels) only with ``overwrite: true``."""
        info = check_info(image_info, "image info")
        overwrite = info.pop("overwrite", False) in (True, "true", "1", 1)
        image_id = check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        picture = read_mammogram(image_filename)  # InputError for anything that is not a usable mammogram
        if float(picture.pixels.max()) <= float(picture.pixels.min()):
            raise InputError(f"image '{image_id}' is blank (every pixel has the same value)")
        ext = self._to_id(os.path.basename(image_filename))[1]
        with self._mutex, FileLock(self._lock_file):
            old = self._datastore.objects.get(image_id)
            if old is not None and not overwrite:
                raise ConflictError(f"image '{image_id}' exists; send overwrite=true to replace it and its labels")
            dest = Path(self._datastore.image_path()) / f"{image_id}{ext}"
            with atomic_path(dest, suffix="") as tmp:  # no image extension: a reload never lists it
                shutil.copyfile(image_filename, tmp)
            if old is not None:
                self._remove_files(image_id, old, keep=dest)
            info.update(ts=int(time.time()), name=dest.name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info(f"{'Replaced' if old is not None else 'Added'} image '{image_id}'")
        return image_id

    def _remove_files(self, image_id: str, obj: ImageLabelModel, keep: Path | None = None) -> None:
        """Delete the image file and every label file of ``obj`` (call under the locks)."""
        for tag, label in obj.labels.items():
            (Path(self._datastore.label_path(tag)) / f"{image_id}{label.ext}").unlink(missing_ok=True)
        image = Path(self._datastore.image_path()) / f"{image_id}{obj.image.ext}"
        if keep is None or image != keep:
            image.unlink(missing_ok=True)

    def remove_image(self, image_id: str) -> None:
        check_name(image_id, "image id")
        with self._mutex, FileLock(self._lock_file):
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise NotFoundError(f"image '{image_id}' is not in the datastore")
            self._remove_files(image_id, obj)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info(f"Removed image '{image_id}' and its labels")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_name(label_id, "image id")
        check_name(label_tag, "label tag")
        with self._mutex, FileLock(self._lock_file):
            obj = self._datastore.objects.get(label_id)
            label = obj.labels.get(label_tag) if obj else None
            if label is None:
                raise NotFoundError(f"image '{label_id}' has no label '{label_tag}'")
            (Path(self._datastore.label_path(label_tag)) / f"{label_id}{label.ext}").unlink(missing_ok=True)
            del obj.labels[label_tag]
            self._update_datastore_file(lock=False)
        logger.info(f"Removed label '{label_tag}' of '{label_id}'")

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        check_name(image_id, "image id")
        with self._mutex:
            if image_id not in self._datastore.objects:
                raise NotFoundError(f"image '{image_id}' is not in the datastore")
            super().update_image_info(image_id, check_info(info, "image info"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        check_name(label_id, "image id")
        check_name(label_tag, "label tag")
        with self._mutex:
            obj = self._datastore.objects.get(label_id)
            if obj is None or label_tag not in obj.labels:
                raise NotFoundError(f"image '{label_id}' has no label '{label_tag}'")
            checked = check_info(info, "label info")
            if label_tag == TAG_FINDING and "finding" in checked and checked["finding"] is None:
                raise InputError("label info: a finding label needs a finding")
            super().update_label_info(label_id, label_tag, checked)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_name(image_id, "image id")
        check_name(label_tag, "label tag")
        if image_id not in self._datastore.objects:
            raise NotFoundError(f"image '{image_id}' is not in the datastore")
        if label_tag == TAG_FINDING:  # checked once merged with the finding document
            return self._save_finding(image_id, label_filename, dict(label_info or {}))
        info = check_info(label_info, "label info")
        mask = read_label(label_filename, self.image_shape(image_id))
        boxes = boxes_from_mask(mask)
        if label_tag == TAG_BOX and not boxes:
            raise InputError(f"box label for '{image_id}' is empty: paint or draw at least one region")
        info.update(boxes=boxes, points=info.get("points") or box_centres(boxes))
        _, ext = self._to_id(os.path.basename(label_filename))
        return self._store(image_id, label_tag, ext, info, lambda tmp: shutil.copyfile(label_filename, tmp))

    def _save_finding(self, image_id: str, label_filename: str | None, info: dict[str, Any]) -> str:
        """A finding arrives in the label info (params) or as a JSON document in the label file."""
        if label_filename and os.path.exists(label_filename) and os.path.getsize(label_filename):
            try:
                doc = json.loads(Path(label_filename).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"finding label for '{image_id}' must be a JSON document ({e})") from e
            if not isinstance(doc, dict):
                raise InputError(f"finding label for '{image_id}' must be a JSON object")
            info = check_info({**doc, **info}, "finding label")
        info["finding"] = check_finding(info.get("finding"))
        text = json.dumps({k: v for k, v in info.items() if k not in ("ts", "name")}, indent=1)
        return self._store(image_id, TAG_FINDING, ".json", info, lambda tmp: Path(tmp).write_text(text))

    def _store(self, image_id: str, tag: str, ext: str, info: dict[str, Any], write) -> str:
        label_dir = Path(self._datastore.label_path(tag))
        dest = label_dir / f"{image_id}{ext}"
        with self._mutex, FileLock(self._lock_file):
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise NotFoundError(f"image '{image_id}' is not in the datastore")
            label_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                write(tmp)
            old = obj.labels.get(tag)
            if old is not None and old.ext != ext:
                (label_dir / f"{image_id}{old.ext}").unlink(missing_ok=True)
            info.update(ts=int(time.time()), name=dest.name)
            obj.labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info(f"Saved label '{tag}' for '{image_id}'")
        return image_id


@dataclass
class LabelInventory:
    """Every image of a datastore with its labels, how many labels of each kind exist, and the datastore
    (where a method finds a patient's other views; None for a hand-made inventory)."""

    images: list[ImageLabels]
    counts: Counter = field(default_factory=Counter)
    datastore: Any = field(default=None, repr=False, compare=False)

    def subset(self, images: list[ImageLabels]) -> LabelInventory:
        """An inventory of ``images`` (of this one) with their own label counts and the same datastore."""
        return LabelInventory(images, Counter(kind for r in images for kind in r.kinds), self.datastore)

    def select(self, needs: str) -> tuple[list[ImageLabels], dict[str, int]]:
        """Images that have a label of kind ``needs`` (finding/box/mask/point), and a usage report."""
        used = [r for r in self.images if needs in r.kinds]
        report = {f"labels_{kind}": n for kind, n in sorted(self.counts.items())}
        report.update(needs=needs, used=len(used), skipped=len(self.images) - len(used))
        return used, report


def collect_labels(datastore: Datastore, image_paths: bool = True) -> LabelInventory:
    """Read every label of every image of ``datastore`` (any MONAI Label datastore).

    A finding comes from the ``finding`` label (or from the image info), boxes from the ``box``
    label (or from the mask), points from either, the mask from ``final``. With ``image_paths``
    false the records' ``image_path`` is left empty, so that a DICOMweb datastore fetches no image
    (choosing the next sample needs the labels only).
    """
    images, counts = [], Counter()
    for image_id in sorted(datastore.list_images()):
        info = datastore.get_image_info(image_id)
        tags = datastore.get_labels_by_image_id(image_id)
        rec = ImageLabels(
            image_id=image_id,
            image_path=datastore.get_image_uri(image_id) if image_paths else "",
            patient_id=str(read_field(info, "patient_id", None, counts, image_id) or image_id),
            laterality=read_field(info, "laterality", None, counts, image_id),
            spacing_mm=read_field(info, "spacing_mm", None, counts, image_id),
        )
        finding_info = datastore.get_label_info(image_id, TAG_FINDING) if TAG_FINDING in tags else {}
        finding = finding_info.get("finding") or info.get("finding")
        try:
            rec.finding = check_finding(finding) if finding else None
        except InputError as e:  # a bad stored finding: leave the image out of training
            logger.warning(f"image '{image_id}' skipped: {e}")
            counts["invalid_finding"] += 1
            continue
        rec.lesion_types = (read_field(finding_info, "lesion_types", None, counts, image_id)
                            or read_field(info, "lesion_types", [], counts, image_id))
        rec.radii = read_field(finding_info, "radii", [], counts, image_id)
        if TAG_BOX in tags:
            box_info = datastore.get_label_info(image_id, TAG_BOX)
            rec.boxes = read_field(box_info, "boxes", [], counts, image_id)
            rec.box_path = datastore.get_label_uri(image_id, TAG_BOX)
            rec.points = read_field(box_info, "points", [], counts, image_id)
        if TAG_MASK in tags:
            rec.mask_path = datastore.get_label_uri(image_id, TAG_MASK)
            mask_info = datastore.get_label_info(image_id, TAG_MASK)
            rec.boxes = rec.boxes or read_field(mask_info, "boxes", [], counts, image_id)
        rec.points = rec.points or read_field(finding_info, "points", [], counts, image_id)
        counts.update(rec.kinds or {"unlabelled"})
        images.append(rec)
    return LabelInventory(images, counts, datastore)
