"""Importing into a datastore that already holds the images: annotators' work is never lost.

Every importer (``import-mias``, ``import-csv``, ``import-dicom``) stores images with
:func:`store_image` and labels with :func:`store_label`. A label an importer writes carries
``imported_from`` in its info; a label without it was saved by an annotator (3D Slicer, OHIF, the
HTTP API). Running an import again

- refreshes the importer's own labels (the same source gives the same labels: idempotent);
- keeps every annotator's label: an imported label never replaces one at the same tag;
- keeps an image whose file is unchanged (only its info is refreshed), replaces a changed image
  that has no annotator label, and leaves a changed image that has one as it is (reported, since
  its annotations belong to the old pixels).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

#: Label-info key of the labels an importer wrote (the import's source, e.g. ``MIAS Info.txt``).
IMPORTED_FROM = "imported_from"


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def annotator_tags(store: Any, image_id: str) -> list[str]:
    """Tags of ``image_id``'s labels that an annotator saved (no ``imported_from``)."""
    tags = store.get_labels_by_image_id(image_id)
    return sorted(t for t, label in tags.items() if IMPORTED_FROM not in store.get_label_info(label, t))


def store_image(store: Any, image_id: str, path: str | Path, info: dict[str, Any]) -> str:
    """Add or refresh an imported image; returns ``added``, ``unchanged``, ``replaced`` or ``kept``
    (a changed file whose stored image has annotator labels: nothing written)."""
    if image_id not in store.list_images():
        store.add_image(image_id, str(path), info)
        return "added"
    if _digest(store.get_image_uri(image_id)) == _digest(path):
        store.update_image_info(image_id, info)
        return "unchanged"
    if annotator_tags(store, image_id):
        return "kept"
    store.add_image(image_id, str(path), {**info, "overwrite": True})
    return "replaced"


def store_label(store: Any, image_id: str, path: str | Path, tag: str, info: dict[str, Any], source: str) -> bool:
    """Save an importer's label, unless an annotator's label holds ``tag`` (then it is kept: False)."""
    existing = store.get_labels_by_image_id(image_id).get(tag)
    if existing is not None and IMPORTED_FROM not in store.get_label_info(existing, tag):
        return False
    store.save_label(image_id, str(path), tag, {**info, IMPORTED_FROM: source})
    return True
