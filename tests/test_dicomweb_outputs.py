"""DICOM results built with highdicom (SEG, heatmap Secondary Capture, TID1500 SR), read back from bytes.

No server here: every object is written, read back with pydicom and highdicom, and checked against
its source mammogram (references, geometry) and against the numbers it was made from.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from mammolabel.data.phantoms import make_phantom
from mammolabel.errors import InputError
from mammolabel.io import read_dicom, write_dicom_mg
from mammolabel.io import dicom_outputs as out

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def reread(ds: Dataset) -> Dataset:
    """Write ``ds`` as a DICOM file in memory and read it back, as an archive would."""
    buf = io.BytesIO()
    ds.save_as(buf, write_like_original=False)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    ds.filename = None  # read from memory: nothing to point at (copies would warn about the buffer)
    return ds


@pytest.fixture(scope="module")
def mg_file(tmp_path_factory) -> Path:
    """A right-breast phantom with a lesion as DICOM MG (FrameOfReferenceUID, PixelSpacing, no SliceThickness)."""
    p = make_phantom(2, seed=0)
    assert p.finding != "normal" and p.laterality == "R"
    return write_dicom_mg(tmp_path_factory.mktemp("mg") / "mg.dcm", p.pixels, patient_id="P1",
                          study_uid="1.2.826.0.1.3680043.8.498.77.1", laterality="R", view="CC")


@pytest.fixture()
def source(mg_file) -> Dataset:
    return pydicom.dcmread(mg_file)


def lesion_labelmap(shape: tuple[int, int]) -> np.ndarray:
    """Values 1 and 3 (2 unused), asymmetric, so that a flip or transpose would show."""
    lab = np.zeros(shape, np.uint8)
    lab[40:90, 30:70] = 1
    lab[300:312, 200:260] = 3
    return lab


def assert_references_source(ds: Dataset, source: Dataset) -> None:
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID


# --- SEG ---------------------------------------------------------------------------------------


def _variant(source: Dataset, variant: str) -> Dataset:
    ds = source.copy()
    if variant == "no_frame_of_reference":
        del ds.FrameOfReferenceUID
    elif variant == "imager_spacing_only":
        del ds.PixelSpacing
    elif variant == "with_slice_thickness":
        ds.SliceThickness = 0.5
    return ds


@pytest.mark.parametrize(
    "variant", ["as_written", "no_frame_of_reference", "imager_spacing_only", "with_slice_thickness"]
)
def test_seg_round_trips_the_labelmap_and_references_the_source(source, variant):
    src = _variant(source, variant)
    lab = lesion_labelmap((src.Rows, src.Columns))
    seg = reread(out.segmentation(src, lab, {"lesion": 1, "uncertain_area": 2}, "probe"))

    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert_references_source(seg, src)
    assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    assert "FrameOfReferenceUID" not in seg  # a projection image has no patient plane: single-frame path
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert derived.ReferencedSOPInstanceUID == src.SOPInstanceUID
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if variant == "with_slice_thickness":
        assert [float(v) for v in measures[0].PixelSpacing] == [float(v) for v in src.PixelSpacing]
        assert float(measures[0].SliceThickness) == 0.5
    else:  # MG: PixelSpacing without SliceThickness is dropped rather than written incomplete
        assert measures is None or "PixelSpacing" not in measures[0]

    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "uncertain_area", "label_3"]
    assert [s.SegmentAlgorithmType for s in seg.SegmentSequence] == ["AUTOMATIC"] * 3
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Lesion.value
    assert int(seg.NumberOfFrames) == 2  # the empty segment 2 has no frame
    back = out.labelmap_from_segmentation(seg, src.SOPInstanceUID)
    np.testing.assert_array_equal(back, lab)
    hd_seg = hd.seg.Segmentation.from_dataset(seg)
    assert hd_seg.get_segment_numbers(segment_label="label_3") == [3]


def test_seg_of_an_empty_labelmap_and_of_a_manual_label(source):
    empty = np.zeros((source.Rows, source.Columns), np.uint8)
    seg = reread(out.segmentation(source, empty, {"breast": 1, "pectoral_muscle": 2}, "breast_region"))
    assert int(seg.NumberOfFrames) >= 1
    np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, source.SOPInstanceUID), empty)
    anatomy = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert anatomy == [codes.SCT.Breast.value, codes.SCT.PectoralisMajorMuscle.value]

    manual = reread(out.segmentation(source, lesion_labelmap(empty.shape), {}, None))
    assert {s.SegmentAlgorithmType for s in manual.SegmentSequence} == {"MANUAL"}
    assert manual.SeriesDescription == "MammoLabel label"


# --- Secondary Capture heatmap -----------------------------------------------------------------


def test_heatmap_capture_keeps_geometry_and_encodes_the_heatmap(source, mg_file):
    display = read_dicom(mg_file).pixels
    rows, cols = display.shape
    heat = np.zeros((rows, cols), np.float32)
    heat[100:140, 60:120] = np.linspace(0.2, 1.0, 60, dtype=np.float32)[None, :]
    sc = reread(out.heatmap_capture(source, display, heat, "probe"))

    assert sc.SOPClassUID == SC_STORAGE and sc.Modality == "OT"  # never listed as a mammogram
    assert_references_source(sc, source)
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (rows, cols, 3, "RGB")
    assert list(sc.PixelSpacing) == list(source.PixelSpacing)
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    assert sc.ImageLaterality == source.ImageLaterality == "R"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    rgb = sc.pixel_array.astype(int)
    grey = np.round(255 * display).astype(int)
    cold = heat == 0
    for channel in range(3):  # where the heatmap is 0 the picture is the mammogram, untouched
        np.testing.assert_array_equal(rgb[..., channel][cold], grey[cold])
    np.testing.assert_array_equal(rgb, out.overlay(display, heat).astype(int))
    hot = rgb[100:140, 115:120]  # heatmap near 1: jet's dark red dominates
    assert (hot[..., 0] > hot[..., 2] + 40).all()


# --- TID1500 Structured Report -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [("probability", 0.3, True), ("ensemble_probability", 1.0, True), ("max_score", 0.0, True), ("score", 0.5, True),
     ("probability", 1.5, False), ("probability", True, False), ("area_px", 0.5, False), ("risk", 0.2, False)],
)
def test_which_result_numbers_are_probabilities(key, value, expected):
    assert out.is_probability(key, value) is expected


def test_report_holds_probabilities_boxes_and_points_on_the_source(source):
    values = {"probability": 0.625, "holistic_probability": 0.5, "area_px": 1234, "model": "x"}
    points = [{"x": 33.0, "y": 61.25, "score": 0.25, "name": "peak"}, {"x": 0.0, "y": 0.0}]
    boxes = [{"box": [30, 40, 69, 89], "max_probability": 0.75, "mean_probability": 0.5},  # as Xiong's
             {"box": [100, 120, 110, 125], "label": "malignant", "max_saliency": 0.9, "area_px": 66}]  # as GLAM's
    sr = reread(out.measurement_report(source, "probe", values, points, boxes))

    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert_references_source(sr, source)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    image_groups = report.content.get_image_measurement_groups()
    assert len(image_groups) == 1
    found = sorted(m.value for m in image_groups[0].get_measurements(name=codes.DCM.ProbabilityOfCancer))
    assert found == [50.0, 62.5]  # in percent; area_px and the text are not probabilities
    assert image_groups[0].source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID

    regions = report.content.get_planar_roi_measurement_groups()
    assert len(regions) == 4
    groups = sr.ContentSequence[-1].ContentSequence  # Imaging Measurements: regions first (OHIF opens the first)
    assert [g.ContentSequence[0].TextValue for g in groups] == [
        "probe box 1", "probe box 2 malignant", "probe point 1 peak", "probe point 2", "probe image"]
    tracking_uids = {str(g.tracking_uid) for g in [*regions, *image_groups]}
    assert len(tracking_uids) == 5  # OHIF merges groups that share one
    box, classed, peak, corner = regions
    assert classed.get_measurements() == []  # a saliency is not a probability
    assert box.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_allclose(box.roi.value, [[30, 40], [70, 40], [70, 90], [30, 90], [30, 40]])
    assert box.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    measured, = box.get_measurements()  # one probability per region (its maximum), as a viewer shows one
    assert (measured.value, measured.unit.value, measured.derivation.meaning) == (75.0, "%", "Maximum")
    algorithm = [i for i in measured[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"]
    assert algorithm[0].TextValue == "MammoLabel probe max_probability"
    assert peak.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
    np.testing.assert_allclose(peak.roi.value, [[33.5, 61.75]])  # pixel centre, DICOM pixel-corner origin
    assert [m.value for m in peak.get_measurements()] == [25.0]
    assert "peak" in str(peak.tracking_identifier) and corner.get_measurements() == []


def test_report_without_numbers_is_still_valid(source):
    sr = reread(out.measurement_report(source, "breast_region", {"breast_fraction": 0.4}))
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    assert report.content.get_image_measurement_groups() == []
    assert report.content.get_planar_roi_measurement_groups() == []


def test_results_makes_the_heatmap_only_when_there_is_one(source, mg_file):
    display = read_dicom(mg_file).pixels
    lab = lesion_labelmap(display.shape)
    without = out.results(source, display, "probe", {"lesion": 1}, lab, {"probability": 0.2})
    assert list(without) == ["seg", "report"]
    with_heat = out.results(source, display, "probe", {"lesion": 1}, lab, {}, heatmap=display)
    assert list(with_heat) == ["seg", "heatmap", "report"]
    assert len({ds.SeriesInstanceUID for ds in with_heat.values()}) == 3


# --- refusals ----------------------------------------------------------------------------------


def test_non_mammograms_and_wrong_sizes_are_refused(source):
    lab = lesion_labelmap((source.Rows, source.Columns))
    ct = source.copy()
    ct.Modality = "CT"
    with pytest.raises(InputError, match=r"\(Modality MG\), not for Modality CT"):
        out.segmentation(ct, lab, {"lesion": 1}, "probe")
    tomo = source.copy()
    tomo.NumberOfFrames = 3
    with pytest.raises(InputError, match="single-frame mammograms, not for a 3-frame object"):
        out.measurement_report(tomo, "probe", {})
    with pytest.raises(InputError, match="labelmap is 416x511"):
        out.segmentation(source, lab[:-1], {"lesion": 1}, "probe")
    with pytest.raises(InputError, match="heatmap is"):
        out.heatmap_capture(source, np.zeros(lab.shape), np.zeros((5, 5)), "probe")
    with pytest.raises(InputError, match="outside the 416x512 image"):
        out.measurement_report(source, "probe", {}, boxes=[{"box": [400, 0, 420, 10]}])
    with pytest.raises(InputError, match="empty"):
        out.segmentation(source, np.zeros_like(lab), {}, "probe")


def test_a_pacs_that_refuses_the_results_does_not_cost_the_result(mg_file):
    from mammolabel.data.dicomweb import DICOMwebError
    from mammolabel.evaluation.evaluate import run_task
    from mammolabel.tasks.breast_region import BreastRegionInfer

    class RefusingPacs:
        def store_results(self, *args):
            raise DICOMwebError("the DICOMweb server http://pacs refused to store 3 object(s) (HTTP 503)")

    task = BreastRegionInfer()
    task.dicom_sink = RefusingPacs()
    labelmap, result = run_task(task, str(mg_file))
    assert labelmap.shape == read_dicom(mg_file).shape and (labelmap == 1).any()
    assert result["dicom"] == {"stored": False, "reason": "the DICOMweb server http://pacs refused to store 3 "
                                                          "object(s) (HTTP 503)"}
