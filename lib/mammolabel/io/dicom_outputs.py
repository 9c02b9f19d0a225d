"""DICOM results for a DICOM mammogram, built with highdicom: SEG, heatmap Secondary Capture, TID1500 SR.

Each object joins the source's patient and study in a series of its own and references the
source instance, so that a PACS files it next to the mammogram and a viewer (OHIF, Slicer) finds it:

- :func:`segmentation`: a labelmap as a DICOM SEG whose segment numbers are the labelmap values
  (segments 1..max, each named after the task's label), so that the labelmap comes back exactly
  (:func:`labelmap_from_segmentation`). A mammogram has no patient-based image plane, so the SEG is
  built on highdicom's single-frame path without a frame of reference; PixelSpacing is left out
  when the source has no SliceThickness (the SEG pixel measures would be incomplete).
- :func:`heatmap_capture`: the heatmap over the displayed mammogram as an RGB Secondary Capture of
  the source's size, pixel spacing and patient orientation.
- :func:`measurement_report`: a Comprehensive SR with the TID1500 Measurement Report: each
  probability in the result as a "Probability of cancer" measurement (%) of the image, each box as a
  closed POLYLINE and each point as a POINT region on the source image, with its probability.

Coordinates are stored-image pixels (x = column, y = row), as every MammoLabel result is. A DICOM
spatial coordinate puts (0, 0) at the top-left corner of the first pixel, so a point (x, y) is
(x + 0.5, y + 0.5) and an inclusive box [x0, y0, x1, y1] covers (x0, y0) to (x1 + 1, y1 + 1).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

import mammolabel
from mammolabel.errors import InputError

MANUFACTURER = "MammoLabel"
#: Series numbers of the result series (the source series keep theirs).
SERIES_NUMBERS = {"seg": 901, "heatmap": 902, "report": 903}
#: How strongly the heatmap colours the image where the heatmap is 1 (0 leaves the image grey).
HEATMAP_OPACITY = 0.6
#: Which probability of a box or point the report keeps (OHIF would show several without telling them apart).
REGION_PREFERENCE = ("max_probability", "max_score", "score", "probability")

_ANATOMY = hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure")
_MASS = hd.sr.CodedConcept("4147007", "SCT", "Mass")
_PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")
# Segment name fragments -> (category, type); anything else is a region of the image.
_SEGMENT_CODES = (
    ("pectoral", (_ANATOMY, codes.SCT.PectoralisMajorMuscle)),
    ("breast", (_ANATOMY, codes.SCT.Breast)),
    ("lesion", (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)),
    ("malignant", (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)),
    ("mass", (codes.SCT.MorphologicallyAbnormalStructure, _MASS)),
)
_REGION = (codes.SCT.SpatialAndRelationalConcept, codes.DCM.ImageRegion)



def _new_instance(kind: str) -> dict[str, Any]:
    """The identity of a new result instance of ``kind`` (seg, heatmap, report), in its own new series."""
    return {"series_instance_uid": hd.UID(), "series_number": SERIES_NUMBERS[kind], "sop_instance_uid": hd.UID(),
            "instance_number": 1, "manufacturer": MANUFACTURER}

def is_probability(key: str, value: Any) -> bool:
    """Whether a result entry is a probability reported as "Probability of cancer" (in percent).

    The result keys of the tasks: ``probability``, ``<model>_probability``, ``mean_probability``,
    ``score`` and ``max_score`` (numbers in [0, 1]); booleans and other numbers are not.
    """
    named = key in ("probability", "score", "max_score") or key.endswith("_probability")
    return named and isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0


def check_source(source: Dataset) -> None:
    """Refuse a source that is not a single-frame greyscale DICOM MG image."""
    modality = source.get("Modality", "?")
    if modality != "MG":
        raise InputError(f"DICOM results are made for mammograms (Modality MG), not for Modality {modality}")
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"DICOM results are made for single-frame mammograms, not for a {frames}-frame object")
    if "Rows" not in source or "Columns" not in source:
        raise InputError("the source DICOM object has no image size (Rows, Columns)")


def _check_shape(source: Dataset, array: np.ndarray, what: str) -> None:
    shape = (int(source.Rows), int(source.Columns))
    if tuple(array.shape[:2]) != shape:
        raise InputError(f"{what} is {array.shape[1]}x{array.shape[0]} (W x H) but the image is {shape[1]}x{shape[0]}")


def _algorithm(task: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=f"MammoLabel {task}", family=codes.cid7162.ArtificialIntelligence, version=mammolabel.__version__
    )


def _segment_codes(name: str) -> tuple[Any, Any]:
    lowered = name.lower()
    return next((pair for key, pair in _SEGMENT_CODES if key in lowered), _REGION)


def _projection_reference(source: Dataset) -> Dataset:
    """The source header as highdicom's single-frame path needs it for a projection image.

    A mammogram's frame of reference has no image plane (no ImagePositionPatient /
    ImageOrientationPatient), so it is dropped; PixelSpacing is dropped when SliceThickness is
    absent, as SEG pixel measures need both.
    """
    ref = copy.deepcopy(source)
    if "PixelData" in ref:
        del ref.PixelData
    plane = all(k in ref for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"))
    if "FrameOfReferenceUID" in ref and not plane:
        del ref.FrameOfReferenceUID
    if "SliceThickness" not in ref and "PixelSpacing" in ref:
        del ref.PixelSpacing
    return ref


def segmentation(
    source: Dataset,
    labelmap: np.ndarray,
    labels: Mapping[str, int],
    task: str | None,
    description: str | None = None,
) -> hd.seg.Segmentation:
    """A DICOM SEG of ``labelmap`` (rows, cols; values 0..255) over the single-frame MG ``source``.

    Segment ``k`` holds the pixels of value ``k`` and is named after ``labels`` (``label_k`` when
    unnamed); segments 1..max(value) are all described so that the numbering is the labelmap's.
    ``task`` names the algorithm (automatic segmentation); None marks an annotator's manual label.
    """
    check_source(source)
    _check_shape(source, labelmap, "labelmap")
    if labelmap.ndim != 2 or labelmap.min() < 0 or labelmap.max() > 255:
        raise InputError("a labelmap must be a 2D array of values 0..255")
    names = {int(v): k for k, v in labels.items()}
    top = max([int(labelmap.max()), *names])
    if top == 0:
        raise InputError("nothing to segment: the labelmap is empty and the task declares no labels")
    algorithm = _algorithm(task) if task else None
    made_by = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if task else hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = []
    for number in range(1, top + 1):
        category, kind = _segment_codes(names.get(number, ""))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names.get(number, f"label_{number}")[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=made_by,
                algorithm_identification=algorithm,
            )
        )
    return hd.seg.Segmentation(
        source_images=[_projection_reference(source)],
        pixel_array=labelmap.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **_new_instance("seg"),
        manufacturer_model_name=task or "annotation",
        software_versions=mammolabel.__version__,
        device_serial_number="1",
        series_description=(description or (f"MammoLabel {task} segmentation" if task else "MammoLabel label"))[:64],
        content_label="MAMMOLABEL",
        content_description=f"{task or 'annotator'} labelmap"[:64],
        omit_empty_frames=bool(labelmap.any()),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def labelmap_from_segmentation(seg: Dataset, source_sop_instance_uid: str) -> np.ndarray:
    """The (rows, cols) uint8 labelmap of a SEG over one single-frame source (segment number = value)."""
    if not isinstance(seg, hd.seg.Segmentation):
        with warnings.catch_warnings():  # a SEG read from memory: pydicom warns that its buffer is not copied
            warnings.filterwarnings("ignore", message="The 'filename' attribute of the dataset")
            seg = hd.seg.Segmentation.from_dataset(seg)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    if max(numbers) > 255:
        raise InputError(f"a SEG with {max(numbers)} segments does not fit a uint8 labelmap")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_sop_instance_uid],
        segment_numbers=numbers,
        combine_segments=True,
        relabel=False,
        skip_overlap_checks=False,
    )
    return np.asarray(pixels[0], dtype=np.uint8)


def overlay(display: np.ndarray, heatmap: np.ndarray, opacity: float = HEATMAP_OPACITY) -> np.ndarray:
    """RGB uint8 picture: the display image in grey, coloured by ``heatmap`` (jet) where it is above 0.

    A pixel with heatmap 0 keeps its grey value; at heatmap 1 the colour weighs ``opacity``.
    """
    grey = np.clip(display, 0, 1)[..., None].repeat(3, axis=2)
    heat = np.clip(np.nan_to_num(heatmap, nan=0.0), 0, 1)
    colour = colormaps["jet"](heat)[..., :3]
    alpha = (opacity * heat)[..., None]
    return np.round(255 * ((1 - alpha) * grey + alpha * colour)).astype(np.uint8)


def heatmap_capture(source: Dataset, display: np.ndarray, heatmap: np.ndarray, task: str) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``heatmap`` over ``display`` (both (rows, cols) in [0, 1], stored orientation).

    It has the source's size, pixel spacing, laterality and patient orientation, and references
    the source instance (Source Image Sequence).
    """
    check_source(source)
    _check_shape(source, display, "display image")
    _check_shape(source, heatmap, "heatmap")
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    laterality = source.get("ImageLaterality") or source.get("Laterality")
    orientation = [str(v) for v in source.get("PatientOrientation") or []]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay(display, heatmap),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        **_new_instance("heatmap"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        laterality=laterality if laterality in ("L", "R") else None,
        patient_orientation=("A", "F"),  # replaced below by the source's own (MG uses e.g. "A\\FR")
        series_description=f"MammoLabel {task} heatmap"[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if len(orientation) == 2:
        sc.PatientOrientation = orientation
    else:
        del sc.PatientOrientation
    if laterality in ("L", "R"):
        sc.ImageLaterality = laterality
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = f"MammoLabel {task} heatmap (jet, opacity {HEATMAP_OPACITY} x value) over the image"
    sc.BurnedInAnnotation = "NO"
    return sc


def _probability(key: str, value: float, task: str) -> hd.sr.Measurement:
    derivation = codes.SCT.Mean if "mean" in key else codes.SCT.Maximum if "max" in key else None
    return hd.sr.Measurement(
        name=codes.DCM.ProbabilityOfCancer,
        value=round(100.0 * float(value), 4),
        unit=_PERCENT,
        derivation=derivation,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=f"MammoLabel {task} {key}"[:64], version=mammolabel.__version__
        ),
    )


def _image_measurements(values: Mapping[str, Any], task: str) -> list[hd.sr.Measurement]:
    """Every probability of the result, each named by its algorithm ("MammoLabel <task> <key>")."""
    return [_probability(k, v, task) for k, v in values.items() if is_probability(k, v)]


def _region_measurements(item: Mapping[str, Any], task: str) -> list[hd.sr.Measurement]:
    """The one probability a viewer shows next to a box or point: its maximum when it has several."""
    found = {k: v for k, v in item.items() if is_probability(k, v)}
    ranked = [k for k in REGION_PREFERENCE if k in found] + sorted(found)
    return [_probability(ranked[0], found[ranked[0]], task)] if ranked else []


def _name(item: Mapping[str, Any]) -> str:
    return str(item.get("name") or item.get("label") or "")


def box_outline(box: Sequence[float]) -> np.ndarray:
    """Closed POLYLINE (column, row) around the pixels of an inclusive box [x0, y0, x1, y1]."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1], [x0, y0]], dtype=np.float64)


def measurement_report(
    source: Dataset,
    task: str,
    values: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]] = (),
    boxes: Sequence[Mapping[str, Any]] = (),
) -> hd.sr.ComprehensiveSR:
    """A TID1500 Measurement Report on ``source``: probabilities, boxes and points of one result.

    Every measurement group has its own tracking identifier (text and UID), which OHIF needs to
    list and draw it. Image-level probabilities come from ``values`` (see :func:`is_probability`);
    their group comes after the regions (boxes, then points).
    """
    check_source(source)
    rows, cols = int(source.Rows), int(source.Columns)

    def tracking(text: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=text[:64])

    groups: list[Any] = []
    def region(what: str, item: dict[str, Any], graphic_type: Any, data: np.ndarray) -> Any:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(f"{task} {what} {_name(item)}".strip()),
            referenced_region=hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=data,
                                                source_image=hd.sr.SourceImageForRegion.from_source_image(source)),
            finding_type=codes.SCT.Lesion,
            measurements=_region_measurements(item, task) or None,
        )

    for i, box in enumerate(boxes, 1):
        outline = box_outline(box["box"])
        if outline.min() < 0 or outline[:, 0].max() > cols or outline[:, 1].max() > rows:
            raise InputError(f"box {list(box['box'])} lies outside the {cols}x{rows} image")
        groups.append(region(f"box {i}", box, hd.sr.GraphicTypeValues.POLYLINE, outline))
    for i, point in enumerate(points, 1):
        x, y = float(point["x"]) + 0.5, float(point["y"]) + 0.5
        if not (0 <= x <= cols and 0 <= y <= rows):
            raise InputError(f"point ({point['x']}, {point['y']}) lies outside the {cols}x{rows} image")
        groups.append(region(f"point {i}", point, hd.sr.GraphicTypeValues.POINT, np.array([[x, y]])))
    image_level = _image_measurements(values, task)
    if image_level:  # last: OHIF opens an SR on its first group, which must have a region to show
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"{task} image"),
                finding_type=codes.SCT.Breast,
                measurements=image_level,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=f"MammoLabel {task}"[:64], manufacturer_name=MANUFACTURER,
            model_name=task[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Mammography,
        imaging_measurements=groups,  # highdicom 0.22 fails on None; an empty list gives an empty container
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        **_new_instance("report"),
        series_description=f"MammoLabel {task} report"[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
    )


def results(
    source: Dataset,
    display: np.ndarray,
    task: str,
    labels: Mapping[str, int],
    labelmap: np.ndarray,
    values: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]] = (),
    boxes: Sequence[Mapping[str, Any]] = (),
    heatmap: np.ndarray | None = None,
) -> dict[str, Dataset]:
    """Every DICOM result of one task's output on ``source``: ``seg``, ``heatmap`` (with a heatmap), ``report``.

    All arrays and coordinates are in the stored image's orientation; ``display`` is the image as
    read (windowed, [0, 1], bright = dense).
    """
    objects: dict[str, Dataset] = {"seg": segmentation(source, labelmap, labels, task)}
    if heatmap is not None:
        objects["heatmap"] = heatmap_capture(source, display, heatmap, task)
    objects["report"] = measurement_report(source, task, values, points, boxes)
    return objects
