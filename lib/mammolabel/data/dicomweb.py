"""MONAI Label datastore over a DICOMweb server (a PACS, Orthanc): mammograms in, DICOM results out.

MONAI Label's own ``DICOMWebDatastore`` is built for CT/MR series: it searches ``Modality=CT`` by
default, stacks every instance of a series into one volume, converts it to NIfTI and turns labels
into DICOM SEG with a converter that fails on MG. :class:`DICOMwebMammoDatastore` keeps its idea (a
local cache under MONAI Label's cache path, credentials from ``MONAI_LABEL_DICOMWEB_USERNAME`` /
``MONAI_LABEL_DICOMWEB_PASSWORD``, the same DICOMweb client) and changes the rest:

- the image list is a QIDO-RS search for ``Modality=MG`` instances, one image per instance (its
  SOPInstanceUID is the image id), so a series holding several views gives several images;
  multi-frame objects (tomosynthesis) are left out and refused with a message, and so is any id
  whose object is not MG. A series UID (what OHIF sends) stands for its single mammogram.
- an image is fetched over WADO-RS once, checked by the Foundation's DICOM MG reader, and cached
  as ``<cache path>/<hash of the URL>/<SOPInstanceUID>.dcm``: tasks read that file (LUTs,
  MONOCHROME1, laterality, view, spacing) and ``/datastore/image`` serves it.
- labels are stored in the cache with the validation of :class:`~mammolabel.data.datastore.MammoDatastore`
  (findings, boxes, masks); a ``final`` mask also goes to the server as a DICOM SEG built with
  highdicom, whose segment numbers are the mask values, so nothing is lost either way.
- an image added through MONAI Label (``PUT /datastore/image``) must be DICOM MG and is stored on
  the server over STOW-RS.
- :meth:`store_results` is the infer tasks' DICOM sink: SEG, heatmap Secondary Capture and TID1500
  SR (:mod:`mammolabel.io.dicom_outputs`) of each result, stored over STOW-RS next to the image.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.utils.others.generic import md5_digest
from pydicom.dataset import Dataset

from mammolabel.data.datastore import MammoDatastore, check_name
from mammolabel.data.labels import TAG_MASK
from mammolabel.errors import InputError, MammoLabelError, NotFoundError
from mammolabel.io import read_dicom, read_label, read_mammogram, write_labelmap
from mammolabel.io import dicom_outputs

if TYPE_CHECKING:
    from mammolabel.io.prediction import Prediction

logger = logging.getLogger(__name__)

#: SOP classes of multi-frame breast imaging (tomosynthesis, enhanced projections): refused.
MULTIFRAME_BREAST_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
_QIDO_FIELDS = ["NumberOfFrames", "ImageLaterality", "Laterality", "ViewPosition", "PatientID", "Modality",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "Rows", "Columns"]


class DICOMwebError(MammoLabelError):
    """The DICOMweb server cannot be reached, refuses the credentials or refuses an object."""

    status_code = 502


def _http_reason(e: requests.RequestException) -> str:
    response = getattr(e, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return type(e).__name__


def connect(url: str, username: str = "", password: str = "", qido_prefix: str | None = None,
            wado_prefix: str | None = None, stow_prefix: str | None = None) -> DICOMwebClient:
    """A DICOMweb client for ``url`` after one QIDO-RS request proved it answers these credentials.

    Raises :class:`DICOMwebError` with one line saying what is wrong: unreachable, credentials
    refused (401/403), or not a DICOMweb service.
    """
    session = create_session_from_user_pass(username, password) if username or password else requests.Session()
    client = DICOMwebClientX(url=url, session=session, qido_url_prefix=qido_prefix,
                             wado_url_prefix=wado_prefix, stow_url_prefix=stow_prefix)
    client.set_http_retry_params(retry=False)  # the probe fails at once (retries take 30 s)
    try:
        client.search_for_studies(limit=1)
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            who = f"user '{username}'" if username else "anonymous access"
            raise DICOMwebError(
                f"DICOMweb server {url} refused {who} ({_http_reason(e)}): check MONAI_LABEL_DICOMWEB_USERNAME "
                "and MONAI_LABEL_DICOMWEB_PASSWORD"
            ) from None
        raise DICOMwebError(
            f"{url} is not a DICOMweb service: a QIDO-RS study search answered {_http_reason(e)}"
        ) from None
    except requests.RequestException as e:
        raise DICOMwebError(f"DICOMweb server {url} cannot be reached ({_http_reason(e)}: {e})") from None
    client.set_http_retry_params()  # from now on, busy-server answers (429, 503...) are retried with back-off
    return client


class DICOMwebMammoDatastore(MammoDatastore):
    """Mammograms (DICOM MG) of a DICOMweb server, cached locally; labels and results go back as DICOM.

    Args:
        client: a connected DICOMweb client (see :func:`connect`).
        cache_path: folder for the cache; a sub-folder named after the server's URL is used.
        search_filter: extra QIDO-RS filters (e.g. ``{"StudyDate": "2024"}``); ``Modality`` is always MG.
        list_ttl_s: seconds a server listing is reused before the server is asked again.
    """

    def __init__(
        self,
        client: DICOMwebClient,
        cache_path: str | os.PathLike,
        search_filter: dict[str, Any] | None = None,
        list_ttl_s: float = 10.0,
    ):
        self._client = client
        self._search_filter = {k: v for k, v in (search_filter or {}).items() if k != "Modality"}
        self._search_filter["Modality"] = "MG"
        self._list_ttl_s = list_ttl_s
        self._listing: tuple[float, dict[str, dict[str, Any]], dict[str, str]] | None = None
        self._lock = threading.Lock()
        path = Path(cache_path) / md5_digest(client.base_url)
        logger.info(f"DICOMweb {client.base_url}: filter {self._search_filter}, cache {path}")
        super().__init__(path, auto_reload=False)

    def name(self) -> str:
        return self._client.base_url

    @property
    def url(self) -> str:
        return str(self._client.base_url)

    # --- the image list ---------------------------------------------------------------------
    def _search(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """(usable MG instances by SOPInstanceUID with their info, refused instances with the reason)."""
        with self._lock:
            if self._listing and time.monotonic() - self._listing[0] < self._list_ttl_s:
                return self._listing[1], self._listing[2]
            try:
                found = self._client.search_for_instances(search_filters=self._search_filter, fields=_QIDO_FIELDS,
                                                          get_remaining=True)
            except requests.RequestException as e:
                raise DICOMwebError(f"DICOMweb search on {self.url} failed ({_http_reason(e)})") from None
            usable: dict[str, dict[str, Any]] = {}
            refused: dict[str, str] = {}
            for item in found:
                ds = Dataset.from_json(item)
                uid = str(ds.get("SOPInstanceUID", ""))
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                sop_class = str(ds.get("SOPClassUID", ""))
                if sop_class in MULTIFRAME_BREAST_CLASSES or frames > 1:
                    kind = MULTIFRAME_BREAST_CLASSES.get(sop_class, "multi-frame MG")
                    refused[uid] = (f"image {uid} is a {kind} object ({frames} frames, e.g. tomosynthesis): "
                                    "MammoLabel reads single-frame 2D mammograms only")
                    continue
                laterality = ds.get("ImageLaterality") or ds.get("Laterality") or None
                usable[uid] = {
                    "study_uid": str(ds.get("StudyInstanceUID", "")),
                    "series_uid": str(ds.get("SeriesInstanceUID", "")),
                    "sop_class_uid": sop_class,
                    "patient_id": str(ds.get("PatientID", "")),
                    "laterality": laterality,
                    "view": ds.get("ViewPosition") or None,
                    "modality": "MG",
                }
            for uid, reason in refused.items():
                logger.info(f"DICOMweb: not listed: {reason}")
            self._listing = (time.monotonic(), usable, refused)
            return usable, refused

    def list_images(self) -> list[str]:
        return sorted(self._search()[0])

    def resolve(self, image_id: str) -> str:
        """The SOPInstanceUID that ``image_id`` names (an instance, or a series holding one mammogram).

        Raises :class:`InputError` for ids that are not single-frame MG images (with the reason) and
        :class:`NotFoundError` for ids the server does not have.
        """
        check_name(image_id, "image id")
        usable, refused = self._search()
        if image_id in usable:
            return image_id
        if image_id in refused:
            raise InputError(refused[image_id])
        in_series = sorted(uid for uid, info in usable.items() if info["series_uid"] == image_id)
        if len(in_series) == 1:
            return in_series[0]
        if in_series:
            raise InputError(f"series {image_id} holds {len(in_series)} mammograms and MammoLabel reads one image per "
                             f"instance: use one of the image ids {', '.join(in_series)}")
        raise self._explain_missing(image_id)

    def _explain_missing(self, image_id: str) -> MammoLabelError:
        """Why the server's object ``image_id`` (instance or series) is not a listed mammogram."""
        try:
            hits = self._client.search_for_instances(search_filters={"SOPInstanceUID": image_id}, fields=_QIDO_FIELDS)
            hits = hits or self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
        except requests.RequestException as e:
            return DICOMwebError(f"DICOMweb search on {self.url} failed ({_http_reason(e)})")
        if not hits:
            return NotFoundError(f"image '{image_id}' is neither an instance nor a series on the DICOMweb server "
                                 f"{self.url}")
        ds = Dataset.from_json(hits[0])
        modality = ds.get("Modality", "?")
        if modality != "MG":
            return InputError(f"image {image_id} is a Modality {modality} object: MammoLabel reads mammograms "
                              "(Modality MG) only")
        return InputError(f"image {image_id} is not a listed mammogram of {self.url} "
                          f"(search filter {self._search_filter})")

    def _fetch(self, uid: str) -> str:
        """Fetch a listed instance over WADO-RS into the cache (once) and return the cached file."""
        cached = super().get_image_uri(uid)
        if cached and os.path.exists(cached):
            return cached
        info = self._search()[0][uid]
        try:
            ds = self._client.retrieve_instance(info["study_uid"], info["series_uid"], uid)
        except requests.RequestException as e:
            raise DICOMwebError(f"cannot retrieve image {uid} from {self.url} ({_http_reason(e)})") from None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{uid}.dcm"
            ds.save_as(str(path), write_like_original=False)
            meta = read_dicom(path).meta  # refuses what the Foundation's reader cannot read, with the reason
            image_info = dict(info)
            laterality = meta["laterality"] if meta["laterality"] in ("L", "R") else None  # not U or B
            image_info.update(laterality=laterality, view=meta["view"], spacing=meta["spacing"],
                              overwrite=True)  # a cached copy whose file has gone is fetched again
            super().add_image(uid, str(path), image_info)
        return super().get_image_uri(uid)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """``PUT /datastore/image``: a DICOM MG image goes to the server (STOW-RS); its id is its SOPInstanceUID.

        Other images are refused: the server is where this datastore's images live.
        """
        meta = read_mammogram(image_filename).meta  # refuses unreadable or multi-frame files with the reason
        if meta["format"] != "dicom" or meta.get("modality") != "MG":
            kind = f"Modality {meta.get('modality')}" if meta["format"] == "dicom" else f"a {meta['format']} file"
            raise InputError(f"the DICOMweb datastore takes DICOM MG images only (stored on {self.url}), not {kind}")
        self.store([pydicom.dcmread(image_filename)])
        with self._lock:
            self._listing = None  # list it now
        return meta["sop_instance_uid"]

    def get_image_uri(self, image_id: str) -> str:
        return self._fetch(self.resolve(image_id))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        uid = self.resolve(image_id)
        info = super().get_image_info(uid)
        return info or dict(self._search()[0][uid])

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        listed = set(self.list_images())
        return [uid for uid in super().get_labeled_images(label_tag, labels) if uid in listed]

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [uid for uid in self.list_images() if uid not in labelled]

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        for uid in self.get_labeled_images():
            self._fetch(uid)
        return super().datalist(full_path)

    # --- labels -----------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label in the cache (validated); a ``final`` mask also goes to the server as DICOM SEG.

        Accepts what MONAI Label's clients send: a mask file (NRRD, NIfTI, PNG), OHIF's raw ``.bin``
        labelmap, or a DICOM SEG of the image.
        """
        uid = self.resolve(image_id)
        image_path = self._fetch(uid)
        source = pydicom.dcmread(image_path, stop_before_pixels=True)
        shape = (int(source.Rows), int(source.Columns))
        info = dict(label_info or {})
        with tempfile.TemporaryDirectory() as tmp:
            label_path = self._as_mask_file(label_filename, source, Path(tmp)) if label_filename else label_filename
            label_id = super().save_label(uid, label_path, label_tag, info)
        if label_tag == TAG_MASK:
            mask = read_label(super().get_label_uri(uid, label_tag), shape)
            seg = dicom_outputs.segmentation(source, mask, _label_names(info), task=None,
                                             description="MammoLabel label (final)")
            stored = self.store([seg])[0]
            self.update_label_info(uid, label_tag, {"dicom_seg": stored})
        return label_id

    def _as_mask_file(self, label_filename: str, source: Dataset, tmp: Path) -> str:
        """A raw ``.bin`` labelmap or a DICOM SEG written as an NRRD mask; other files as they are."""
        shape = (int(source.Rows), int(source.Columns))
        if label_filename.endswith(".bin"):
            raw = np.fromfile(label_filename, dtype=np.uint8)
            if raw.size != shape[0] * shape[1]:
                raise InputError(f"a .bin label must hold {shape[1]}x{shape[0]} bytes (one per pixel), got {raw.size}")
            return str(write_labelmap(tmp / "label.nrrd", raw.reshape(shape)))
        try:
            ds = pydicom.dcmread(label_filename)
        except Exception:  # not DICOM: the mask readers judge it
            return label_filename
        if ds.get("Modality") != "SEG":
            raise InputError(f"a DICOM label must be a SEG, not Modality {ds.get('Modality', '?')}")
        try:
            mask = dicom_outputs.labelmap_from_segmentation(ds, str(source.SOPInstanceUID))
        except (ValueError, KeyError, AttributeError) as e:
            raise InputError(f"the DICOM SEG does not segment image {source.SOPInstanceUID}: {e}") from e
        return str(write_labelmap(tmp / "label.nrrd", mask))

    # --- results ----------------------------------------------------------------------------
    def store(self, datasets: list[Dataset]) -> list[dict[str, str]]:
        """Store DICOM objects over STOW-RS; returns their study, series and SOP instance UIDs."""
        try:
            answer = self._client.store_instances(datasets)
        except requests.RequestException as e:
            raise DICOMwebError(f"the DICOMweb server {self.url} refused to store {len(datasets)} object(s) "
                                f"({_http_reason(e)})") from None
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            uids = [str(f.get("ReferencedSOPInstanceUID", "?")) for f in failed]
            raise DICOMwebError(f"the DICOMweb server {self.url} refused object(s) {uids}")
        return [{"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
                 "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID)} for ds in datasets]

    def store_results(
        self, task: str, labels: dict[str, int], prediction: Prediction, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """The infer tasks' DICOM sink: SEG, heatmap SC (when there is a heatmap) and SR of one result.

        ``prediction`` is in the stored image's orientation; ``meta`` is the reader's metadata of the
        input. Results of a file that is not a mammogram of this server (an upload) are not stored.
        """
        uid = str(meta.get("sop_instance_uid") or "")
        path = meta.get("path")
        if uid not in self._search()[0] or not path or Path(path).resolve() != Path(self._fetch(uid)).resolve():
            return {"stored": False, "reason": "the input is not an image of the DICOMweb datastore"}
        source = pydicom.dcmread(path)
        objects = dicom_outputs.results(source, read_dicom(Path(path)).pixels, task, labels, prediction.labelmap,
                                        prediction.values, prediction.points, prediction.boxes, prediction.heatmap)
        stored = self.store(list(objects.values()))
        logger.info(f"DICOMweb: stored {', '.join(objects)} of '{task}' for image {uid}")
        return {"stored": True, "study_uid": str(source.StudyInstanceUID), **dict(zip(objects, stored))}

    def json(self) -> dict[str, Any]:
        """The cache's index plus every listed image not fetched yet (image info only, no labels)."""
        doc = super().json()
        for uid, info in self._search()[0].items():
            doc["objects"].setdefault(uid, {"image": {"info": dict(info), "ext": ".dcm"}, "labels": {}})
        return doc

    def status(self) -> dict[str, Any]:
        status = super().status()
        status.update(total=len(self.list_images()), completed=len(self.get_labeled_images()), url=self.url,
                      refused=len(self._search()[1]))
        return status


def _label_names(info: dict[str, Any]) -> dict[str, int]:
    """Label names of a saved mask from MONAI Label's ``label_info`` ([{"name", "idx"}...]) when given."""
    names: dict[str, int] = {}
    for item in info.get("label_info") or []:
        if isinstance(item, dict) and "name" in item and str(item.get("idx", "")).isdigit():
            names[str(item["name"])] = int(item["idx"])
    return names


def from_settings(url: str) -> DICOMwebMammoDatastore:
    """The datastore for ``monailabel start_server --studies URL`` from MONAI Label's settings.

    Credentials: ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD`` (or ``MONAI_LABEL_DATASTORE_*``);
    cache: ``MONAI_LABEL_DICOMWEB_CACHE_PATH`` (default ``~/.cache/monailabel/dicom``); extra filters:
    ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` (its default ``Modality=CT`` becomes ``Modality=MG``).
    """
    from monailabel.config import settings

    client = connect(
        url.rstrip("/"),
        settings.MONAI_LABEL_DICOMWEB_USERNAME or settings.MONAI_LABEL_DATASTORE_USERNAME,
        settings.MONAI_LABEL_DICOMWEB_PASSWORD or settings.MONAI_LABEL_DATASTORE_PASSWORD,
        settings.MONAI_LABEL_QIDO_PREFIX, settings.MONAI_LABEL_WADO_PREFIX, settings.MONAI_LABEL_STOW_PREFIX,
    )
    cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or settings.MONAI_LABEL_DATASTORE_CACHE_PATH or "").strip()
    cache = cache or os.path.join(Path.home(), ".cache", "monailabel", "dicom")
    return DICOMwebMammoDatastore(client, cache, dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {}))
