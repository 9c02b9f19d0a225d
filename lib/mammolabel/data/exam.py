"""A patient's examination as the served datastore holds it: the other views of an image's patient.

Works on any MONAI Label datastore whose image info carries ``patient_id`` (the local
:class:`~mammolabel.data.datastore.MammoDatastore` and the DICOMweb datastore both do): the other
views are listed from the datastore the task is served with, and each is read through it (a
DICOMweb datastore fetches the instance) only when a method asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from mammolabel.io import canonicalise, read_mammogram


@dataclass(frozen=True)
class ExamView:
    """One image of the patient: its id, its datastore info and how to read it (canonical Mammogram)."""

    image_id: str
    info: dict[str, Any]
    read: Callable[[], Any]


class ExamViews(Protocol):
    """The patient's images, as the served datastore (local or DICOMweb) lists them."""

    patient: str

    def __iter__(self) -> Iterator[ExamView]: ...


@dataclass
class DatastoreExam:
    """Every image of ``patient`` in ``datastore``, the image being predicted included."""

    datastore: Any
    patient: str
    image_ids: list[str]

    def __iter__(self) -> Iterator[ExamView]:
        for image_id in self.image_ids:
            info = self.datastore.get_image_info(image_id)
            yield ExamView(image_id, info, lambda i=image_id, info=info: canonicalise(
                read_mammogram(self.datastore.get_image_uri(i)), info.get("laterality")))


def exam_of(datastore: Any, image_id: str | None) -> DatastoreExam | None:
    """The examination of ``image_id`` in ``datastore``; None without a datastore, an id or a patient id."""
    if datastore is None or not image_id or image_id not in datastore.list_images():
        return None
    patient = datastore.get_image_info(image_id).get("patient_id")
    if not patient:
        return None
    same = sorted(i for i in datastore.list_images() if datastore.get_image_info(i).get("patient_id") == patient)
    return DatastoreExam(datastore, str(patient), same)
