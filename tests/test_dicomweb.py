"""The hospital path against a real Orthanc (Debian's orthanc + orthanc-dicomweb) and the real server.

A module-scoped Orthanc is started by ``scripts/orthanc.sh`` on a free port with authentication
on; phantom DICOM MG films, a series holding two views, a CT image and a multi-frame (tomosynthesis)
MG object are stored in it over STOW-RS. ``monailabel start_server --studies <DICOMweb URL>`` then
serves a copy of the app with one extra test model, ``probe``, whose result is fixed and known,
so that every DICOM object the server stores back can be checked value by value.
Without Orthanc the module is skipped with the reason (and fails under CI=true).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from conftest import ON_CI
from mammolabel.data.datastore import collect_labels
from mammolabel.data.dicomweb import DICOMwebError, DICOMwebMammoDatastore, connect
from mammolabel.data.phantoms import make_phantom, write_phantom_study
from mammolabel.errors import InputError, NotFoundError
from mammolabel.io import read_dicom, read_label, write_dicom_mg, write_grey_png, write_labelmap
from mammolabel.io import dicom_outputs as out
from mammolabel.server_process import APP_DIR, ServerProcess
from helpers import labelmap_from, require_chromium

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
ORTHANC_SH = ROOT / "scripts" / "orthanc.sh"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"

# A test-only model for the served app copy: a fixed result with every kind of output.
PROBE_CONFIG = '''"""Test model ``probe``: a fixed result (labelmap, heatmap, point, box, probability) on any image."""

import numpy as np
from monailabel.interfaces.config import TaskConfig

from mammolabel.tasks.infer import MammoInferTask, Prediction

LABELS = {"lesion": 1, "rim": 2}


class ProbeInfer(MammoInferTask):
    name = "probe"

    def __init__(self):
        super().__init__(path=None, labels=dict(LABELS), description="test probe")

    def predict(self, image, meta, data):
        pixels = image[0].numpy()  # canonical: chest wall on the left
        rows, cols = pixels.shape
        r0, r1, c0, c1 = rows // 4, rows // 2, cols // 8, cols // 3
        labelmap = np.zeros((rows, cols), np.uint8)
        labelmap[r0:r1, c0:c1] = 1
        labelmap[r1:r1 + 6, c0:c1] = 2
        points = [{"x": float(c0 + 3), "y": float(r0 + 5), "score": 0.25}]
        boxes = [{"box": [c0, r0, c1 - 1, r1 - 1], "max_probability": 0.75}]
        return Prediction(labelmap, {"probability": 0.625, "area_px": int((labelmap > 0).sum())}, points, boxes,
                          heatmap=pixels.copy())


class Probe(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)

    def infer(self):
        return ProbeInfer()

    def trainer(self):
        return None
'''


@dataclass
class Orthanc:
    home: Path
    url: str
    dicomweb: str
    user: str
    password: str

    def client(self):
        return connect(self.dicomweb, self.user, self.password)

    def server_env(self, cache: Path, password: str | None = None) -> dict[str, str]:
        return {"MONAI_LABEL_DICOMWEB_USERNAME": self.user, "MONAI_LABEL_DICOMWEB_PASSWORD": password or self.password,
                "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not (shutil.which("Orthanc") and DICOMWEB_PLUGIN.exists()):
        message = "Orthanc with its DICOMweb plugin is not installed (as root: scripts/orthanc.sh install)"
        if ON_CI:
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    home = tmp_path_factory.mktemp("orthanc")
    run = subprocess.run(["bash", str(ORTHANC_SH), "start", str(home)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    env = dict(line.split("=", 1) for line in run.stdout.split())
    try:
        yield Orthanc(home, env["ORTHANC_URL"], env["DICOMWEB_URL"], env["MONAI_LABEL_DICOMWEB_USERNAME"],
                      env["MONAI_LABEL_DICOMWEB_PASSWORD"])
    finally:
        subprocess.run(["bash", str(ORTHANC_SH), "stop", str(home)], timeout=30)


@dataclass
class Pacs:
    """What the module stored in Orthanc (UIDs), and the source files."""

    files: dict[str, Path]  # phantom name -> DICOM file
    sop: dict[str, str]  # name -> SOPInstanceUID, for the phantoms, "cc"/"mlo" (two views), "ct", "tomo"
    series: dict[str, str]
    two_view_series: str

    def source(self, name: str) -> Dataset:
        return pydicom.dcmread(self.files[name])


def _rewrite(path: Path, **changes) -> Dataset:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
    ds.save_as(path, write_like_original=False)
    return ds


@pytest.fixture(scope="module")
def pacs(orthanc, tmp_path_factory) -> Pacs:
    base = tmp_path_factory.mktemp("pacs")
    write_phantom_study(base / "studies", n=4, seed=3, dicom=True)
    files = {p.stem: p for p in sorted((base / "studies" / "dicom").glob("*.dcm"))}
    study = generate_uid()
    pixels = make_phantom(1, seed=3).pixels
    cc = write_dicom_mg(base / "cc.dcm", pixels, patient_id="P900", study_uid=study, laterality="L", view="CC")
    mlo = write_dicom_mg(base / "mlo.dcm", pixels, patient_id="P900", study_uid=study, laterality="L", view="MLO")
    two_view_series = str(pydicom.dcmread(cc).SeriesInstanceUID)
    _rewrite(mlo, SeriesInstanceUID=two_view_series, InstanceNumber=2)
    files.update(cc=cc, mlo=mlo)
    ct = write_dicom_mg(base / "ct.dcm", pixels, patient_id="P901", study_uid=generate_uid(), laterality="L")
    _rewrite(ct, Modality="CT", SOPClassUID=CT_IMAGE_STORAGE)
    tomo = write_dicom_mg(base / "tomo.dcm", pixels, patient_id="P902", study_uid=generate_uid(), laterality="L")
    frames = pydicom.dcmread(tomo).PixelData * 3
    _rewrite(tomo, SOPClassUID=BREAST_TOMOSYNTHESIS, NumberOfFrames=3, PixelData=frames)
    files.update(ct=ct, tomo=tomo)
    datasets = {name: pydicom.dcmread(path) for name, path in files.items()}
    answer = orthanc.client().store_instances(list(datasets.values()))
    assert not answer.get("FailedSOPSequence")
    return Pacs(files, {n: str(d.SOPInstanceUID) for n, d in datasets.items()},
                {n: str(d.SeriesInstanceUID) for n, d in datasets.items()}, two_view_series)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    """A copy of the app with the test model ``probe`` added to its configs."""
    app = tmp_path_factory.mktemp("app") / "mammography"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("model", "logs", "bin", "__pycache__"))
    (app / "lib" / "configs" / "probe.py").write_text(PROBE_CONFIG)
    for folder in ("model", "logs", "bin"):  # made here: two servers start from this copy at once, and
        (app / folder).mkdir()  # MONAI Label's own check-then-create of them races
    return app


@pytest.fixture(scope="module")
def refused_start(orthanc, app_dir, tmp_path_factory):
    """A server start with a wrong password, begun beside the good server's start-up (it takes as long).

    Yields (thread, outcome, log path); ``outcome["error"]`` is what ``ServerProcess.start`` raised.
    """
    base = tmp_path_factory.mktemp("refused")
    env = orthanc.server_env(base / "cache", password="not-the-password")
    server = ServerProcess(orthanc.dicomweb, conf={"models": "breast_region"}, app_dir=app_dir, env=env,
                           log_path=base / "server.log")
    outcome: dict[str, Exception | None] = {}

    def start() -> None:
        try:
            server.start()
            outcome["error"] = None
        except Exception as e:  # the expected outcome: the server exits
            outcome["error"] = e

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    yield thread, outcome, base / "server.log"
    thread.join(timeout=240)
    server.stop()


@pytest.fixture(scope="module")
def mammolabel(orthanc, pacs, app_dir, refused_start, tmp_path_factory):
    base = tmp_path_factory.mktemp("mammolabel")
    env = orthanc.server_env(base / "cache")
    conf = {"models": "breast_region,probe", "model_dir": str(base / "model")}
    with ServerProcess(orthanc.dicomweb, conf=conf, app_dir=app_dir, env=env, log_path=base / "server.log") as srv:
        srv.cache = base / "cache"
        yield srv


def retrieve(orthanc: Orthanc, ref: dict[str, str]) -> Dataset:
    ds = orthanc.client().retrieve_instance(ref["study_uid"], ref["series_uid"], ref["sop_instance_uid"])
    assert ds.SOPClassUID == ref["sop_class_uid"]
    ds.filename = None  # read from memory (highdicom's copies would warn about the buffer)
    return ds


def referenced_instance(seg: Dataset) -> str:
    return str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)


def assert_same_patient_and_study(ds: Dataset, source: Dataset) -> None:
    assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID


# --- Orthanc as the script configures it -------------------------------------------------------


def test_orthanc_requires_the_registered_user(orthanc):
    config = json.loads((orthanc.home / "orthanc.json").read_text())
    assert config["AuthenticationEnabled"] and not config["RemoteAccessAllowed"] and not config["DicomServerEnabled"]
    assert list(config["RegisteredUsers"]) == [orthanc.user]
    assert config["IngestTranscoding"] == "1.2.840.10008.1.2.1"
    assert requests.get(f"{orthanc.dicomweb}/studies", timeout=10).status_code == 401
    assert requests.get(f"{orthanc.dicomweb}/studies", auth=(orthanc.user, "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{orthanc.dicomweb}/studies", auth=(orthanc.user, orthanc.password), timeout=10).ok
    with pytest.raises(DICOMwebError, match=f"refused user '{orthanc.user}' \\(HTTP 401"):
        connect(orthanc.dicomweb, orthanc.user, "wrong")
    with pytest.raises(DICOMwebError, match="refused anonymous access"):
        connect(orthanc.dicomweb)
    with pytest.raises(DICOMwebError, match="is not a DICOMweb service"):
        connect(f"{orthanc.url}/no-such-root", orthanc.user, orthanc.password)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(DICOMwebError, match="cannot be reached"):
        connect(f"http://127.0.0.1:{closed}/dicom-web", orthanc.user, orthanc.password)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_orthanc_refuses_clients_that_are_not_on_loopback(orthanc):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    port = orthanc.url.rsplit(":", 1)[1]
    r = requests.get(f"http://{address}:{port}/dicom-web/studies", auth=(orthanc.user, orthanc.password), timeout=10)
    assert r.status_code in (401, 403)  # Orthanc 1.10 answers 401 to a remote client, right credentials or not


# --- the datastore, in process -----------------------------------------------------------------


def test_datastore_lists_one_image_per_mg_instance_and_explains_refusals(orthanc, pacs, tmp_path):
    store = DICOMwebMammoDatastore(orthanc.client(), tmp_path / "cache")
    mg = [pacs.sop[n] for n in ("phantom_000", "phantom_001", "phantom_002", "phantom_003", "cc", "mlo")]
    assert store.list_images() == sorted(mg)
    assert store.status()["total"] == 6 and store.status()["refused"] == 1
    assert set(store.json()["objects"]) == set(mg)

    assert store.resolve(pacs.series["phantom_002"]) == pacs.sop["phantom_002"]  # OHIF sends the series
    with pytest.raises(InputError, match="holds 2 mammograms and MammoLabel reads one image per instance"):
        store.resolve(pacs.two_view_series)
    with pytest.raises(InputError, match="Modality CT object: MammoLabel reads mammograms"):
        store.resolve(pacs.sop["ct"])
    with pytest.raises(InputError, match="Modality CT"):
        store.resolve(pacs.series["ct"])
    with pytest.raises(InputError, match="Breast Tomosynthesis Image Storage object \\(3 frames"):
        store.get_image_uri(pacs.sop["tomo"])
    with pytest.raises(NotFoundError, match="neither an instance nor a series"):
        store.resolve("1.2.3.4.5.999")
    with pytest.raises(InputError, match="invalid image id"):
        store.resolve("../etc")

    for name in ("phantom_001", "mlo"):
        path = Path(store.get_image_uri(pacs.sop[name]))
        assert path.name == f"{pacs.sop[name]}.dcm" and path.is_relative_to(tmp_path / "cache")
        cached, uploaded = pydicom.dcmread(path), pacs.source(name)
        assert cached.SOPInstanceUID == uploaded.SOPInstanceUID
        np.testing.assert_array_equal(cached.pixel_array, uploaded.pixel_array)
        meta = read_dicom(path).meta
        assert (meta["laterality"], meta["view"], meta["spacing"]) == (uploaded.ImageLaterality, uploaded.ViewPosition,
                                                                       (0.1, 0.1))
        info = store.get_image_info(pacs.sop[name])
        assert (info["patient_id"], info["laterality"], info["study_uid"]) == (uploaded.PatientID, "L",
                                                                               uploaded.StudyInstanceUID)


def test_next_sample_fetches_only_the_image_it_picks(orthanc, pacs, tmp_path):
    from mammolabel.tasks.activelearning import FirstStrategy

    store = DICOMwebMammoDatastore(orthanc.client(), tmp_path / "cache")
    picked = FirstStrategy()({"strategy": "first", "client_id": "a"}, store)
    assert picked["id"] == min(store.list_images())
    assert [p.stem for p in (tmp_path / "cache").rglob("*.dcm")] == [picked["id"]]
    assert store.get_image_info(picked["id"])["lock"]["client_id"] == "a"
    second = FirstStrategy()({"strategy": "first", "client_id": "b"}, store)["id"]
    assert second != picked["id"] and len(list((tmp_path / "cache").rglob("*.dcm"))) == 2


def test_a_final_label_goes_back_as_seg_and_loses_nothing(orthanc, pacs, tmp_path):
    store = DICOMwebMammoDatastore(orthanc.client(), tmp_path / "cache")
    source = pacs.source("phantom_000")
    rows, cols = source.Rows, source.Columns
    mask = np.zeros((rows, cols), np.uint8)
    mask[50:120, 300:380] = 1
    mask[200:230, 250:270] = 4
    label = write_labelmap(tmp_path / "mask.nrrd", mask)
    info = {"label_info": [{"name": "mass", "idx": 1}, {"name": "calcification", "idx": 4}], "user": "dr_a"}
    assert store.save_label(pacs.series["phantom_000"], str(label), "final", info) == pacs.sop["phantom_000"]

    np.testing.assert_array_equal(read_label(store.get_label_uri(pacs.sop["phantom_000"], "final")), mask)
    saved = store.get_label_info(pacs.sop["phantom_000"], "final")
    assert saved["user"] == "dr_a" and sorted(saved["boxes"]) == [[250, 200, 269, 229], [300, 50, 379, 119]]
    seg = retrieve(orthanc, saved["dicom_seg"])
    assert_same_patient_and_study(seg, source)
    assert referenced_instance(seg) == source.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["mass", "label_2", "label_3", "calcification"]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, source.SOPInstanceUID), mask)

    # OHIF's raw labelmap and a DICOM SEG are accepted as labels too, and stored exactly
    raw = tmp_path / "label.bin"
    (mask[::-1] > 0).astype(np.uint8).tofile(raw)
    store.save_label(pacs.sop["phantom_000"], str(raw), "final", {})
    np.testing.assert_array_equal(read_label(store.get_label_uri(pacs.sop["phantom_000"], "final")), mask[::-1] > 0)
    seg_file = tmp_path / "seg.dcm"
    seg.save_as(seg_file)
    store.save_label(pacs.sop["phantom_000"], str(seg_file), "final", {})
    np.testing.assert_array_equal(read_label(store.get_label_uri(pacs.sop["phantom_000"], "final")), mask)

    inventory = collect_labels(store)  # what every train task reads: the DICOMweb images and their labels
    assert len(inventory.images) == 6 and inventory.counts["mask"] == 1
    record, = inventory.select("mask")[0]
    assert record.image_id == pacs.sop["phantom_000"] and Path(record.image_path).suffix == ".dcm"
    assert record.patient_id == source.PatientID and record.laterality == "R"

    bad = tmp_path / "bad.bin"
    np.zeros(rows * cols - 1, np.uint8).tofile(bad)
    with pytest.raises(InputError, match=f"must hold {cols}x{rows} bytes"):
        store.save_label(pacs.sop["phantom_000"], str(bad), "final", {})
    with pytest.raises(InputError, match="a DICOM label must be a SEG, not Modality MG"):
        store.save_label(pacs.sop["phantom_000"], str(pacs.files["phantom_000"]), "final", {})
    with pytest.raises(InputError, match="Modality CT"):
        store.save_label(pacs.sop["ct"], str(label), "final", {})


# --- the real server ---------------------------------------------------------------------------


def test_server_lists_the_mammograms_and_serves_the_cached_instance(mammolabel, pacs):
    info = requests.get(f"{mammolabel.url}/info/", timeout=30).json()
    assert info["datastore"]["total"] == 6 and info["datastore"]["refused"] == 1
    assert {"breast_region", "probe"} <= set(info["models"])
    objects = requests.get(f"{mammolabel.url}/datastore/?output=all", timeout=30).json()["objects"]
    assert pacs.sop["cc"] in objects and pacs.sop["ct"] not in objects and pacs.sop["tomo"] not in objects
    r = requests.get(f"{mammolabel.url}/datastore/image?image={pacs.sop['phantom_003']}", timeout=30)
    assert r.status_code == 200
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.SOPInstanceUID == pacs.sop["phantom_003"] and ds.Modality == "MG"
    sample = requests.post(f"{mammolabel.url}/activelearning/first", json={}, timeout=30).json()
    assert sample["id"] == min(objects) and sample["path"].endswith(f"{sample['id']}.dcm")


def test_every_result_is_stored_back_as_seg_heatmap_and_report(mammolabel, orthanc, pacs, tmp_path):
    """The probe's known result, on a right breast asked for by its series UID (as OHIF does)."""
    source = pacs.source("phantom_000")
    assert source.ImageLaterality == "R"
    client = MONAILabelClient(mammolabel.url, tmpdir=str(tmp_path))
    label_file, result = client.infer("probe", pacs.series["phantom_000"], {})
    data, _ = nrrd.read(label_file)
    assert data.shape == (source.Columns, source.Rows, 1) and data.dtype == np.uint8
    labelmap = data[..., 0].T
    rows, cols = labelmap.shape
    assert labelmap[:, cols // 2:].any() and not labelmap[:, : cols // 2].any()  # canonical left -> stored right
    stored = result["dicom"]
    assert stored["stored"] and set(stored) == {"stored", "study_uid", "seg", "heatmap", "report"}
    assert stored["study_uid"] == source.StudyInstanceUID

    seg = retrieve(orthanc, stored["seg"])
    assert_same_patient_and_study(seg, source)
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns) and "FrameOfReferenceUID" not in seg
    assert referenced_instance(seg) == source.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "rim"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MammoLabel probe"
    np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, source.SOPInstanceUID), labelmap)

    sc = retrieve(orthanc, stored["heatmap"])
    assert_same_patient_and_study(sc, source)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert (sc.Rows, sc.Columns, sc.ImageLaterality) == (source.Rows, source.Columns, "R")
    assert list(sc.PixelSpacing) == list(source.PixelSpacing)
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    display = read_dicom(pacs.files["phantom_000"]).pixels  # the probe's heatmap is the image itself
    np.testing.assert_array_equal(sc.pixel_array, out.overlay(display, display))

    sr = retrieve(orthanc, stored["report"])
    assert_same_patient_and_study(sr, source)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    box_group, point_group = report.content.get_planar_roi_measurement_groups()
    np.testing.assert_allclose(box_group.roi.value, out.box_outline(result["boxes"][0]["box"]))
    assert [m.value for m in box_group.get_measurements()] == [75.0]
    point = result["points"][0]
    np.testing.assert_allclose(point_group.roi.value, [[point["x"] + 0.5, point["y"] + 0.5]])
    x0, y0, x1, y1 = result["boxes"][0]["box"]
    assert (labelmap[y0:y1 + 1, x0:x1 + 1] == 1).all()  # the box is the lesion label's, mapped back alike
    image_group, = report.content.get_image_measurement_groups()
    assert [m.value for m in image_group.get_measurements(name=codes.DCM.ProbabilityOfCancer)] == [62.5]


def test_ohif_draws_the_report_over_the_mammogram(mammolabel, pacs, tmp_path):
    """The bundled OHIF, in headless Chromium, opens the study and draws the probe's SR box and point."""
    require_chromium()
    r = requests.post(f"{mammolabel.url}/infer/probe?image={pacs.sop['phantom_001']}&output=json", timeout=120)
    assert r.json()["dicom"]["stored"], r.text
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "ohif_screenshot.py"), "--server", mammolabel.url,
                          "--study", pacs.source("phantom_001").StudyInstanceUID, "--report", "probe",
                          "--out", str(tmp_path / "ohif.png"), "--timeout", "90", "--settle", "0.5", "--size", "1000x700"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "'Probability of cancer: 75.00 %'" in run.stdout and "'Probability of cancer: 25.00 %'" in run.stdout
    assert (tmp_path / "ohif.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_breast_region_results_go_to_the_pacs_over_plain_http(mammolabel, orthanc, pacs, tmp_path):
    image = pacs.sop["mlo"]  # one view of the two-view series, by its instance id
    r = requests.post(f"{mammolabel.url}/infer/breast_region?image={image}&output=image", timeout=120)
    assert r.status_code == 200, r.text
    first = labelmap_from(r.content, tmp_path)
    result = requests.post(f"{mammolabel.url}/infer/breast_region?image={image}&output=json", timeout=120).json()
    assert set(result["dicom"]) == {"stored", "study_uid", "seg", "report"}  # no heatmap: no Secondary Capture
    seg = retrieve(orthanc, result["dicom"]["seg"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["breast", "pectoral_muscle"]
    np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, image), first)
    report = hd.sr.ComprehensiveSR.from_dataset(retrieve(orthanc, result["dicom"]["report"]))
    assert report.content.get_planar_roi_measurement_groups() == []
    series = orthanc.client().search_for_series(seg.StudyInstanceUID)  # the two-view study: both runs are there
    modalities = sorted(Dataset.from_json(s).Modality for s in series)
    assert modalities == ["MG", "SEG", "SEG", "SR", "SR"]


def test_server_refuses_what_is_not_a_single_frame_mammogram(mammolabel, pacs):
    cases = {
        pacs.sop["ct"]: (400, "Modality CT object: MammoLabel reads mammograms"),
        pacs.sop["tomo"]: (400, "tomosynthesis"),
        pacs.two_view_series: (400, "holds 2 mammograms"),
        "1.2.3.4.5.999": (404, "neither an instance nor a series"),
    }
    for image, (status, message) in cases.items():
        r = requests.post(f"{mammolabel.url}/infer/probe?image={image}&output=json", timeout=60)
        assert r.status_code == status and message in r.json()["detail"], r.text


def test_server_saves_an_annotators_label_as_seg(mammolabel, orthanc, pacs, tmp_path):
    source = pacs.source("phantom_002")
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[100:160, 60:140] = 1
    label = write_labelmap(tmp_path / "mask.nrrd", mask)
    with open(label, "rb") as f:
        r = requests.put(f"{mammolabel.url}/datastore/label",
                         params={"image": pacs.series["phantom_002"], "tag": "final"},
                         files={"label": ("mask.nrrd", f)}, data={"params": json.dumps({"user": "dr_b"})}, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.get(f"{mammolabel.url}/datastore/label", params={"label": pacs.sop["phantom_002"], "tag": "final"},
                     timeout=30)
    np.testing.assert_array_equal(labelmap_from(r.content, tmp_path), mask)
    segs = orthanc.client().search_for_series(source.StudyInstanceUID, search_filters={"Modality": "SEG"},
                                              fields=["SeriesDescription"])
    labels = [s for s in segs if Dataset.from_json(s).SeriesDescription == "MammoLabel label (final)"]
    assert len(labels) == 1
    seg_series = Dataset.from_json(labels[0]).SeriesInstanceUID
    seg_instance = Dataset.from_json(orthanc.client().search_for_instances(source.StudyInstanceUID, seg_series)[0])
    seg = orthanc.client().retrieve_instance(source.StudyInstanceUID, seg_series, seg_instance.SOPInstanceUID)
    np.testing.assert_array_equal(out.labelmap_from_segmentation(seg, source.SOPInstanceUID), mask)


def test_a_wrong_password_stops_the_server_with_one_clear_line(orthanc, refused_start):
    thread, outcome, log_path = refused_start
    thread.join(timeout=240)
    assert isinstance(outcome.get("error"), RuntimeError), outcome
    assert "server exited with 2" in str(outcome["error"])
    log = log_path.read_text()
    expected = (f"MammoLabel cannot start: DICOMweb server {orthanc.dicomweb} refused user '{orthanc.user}' "
                "(HTTP 401 Unauthorized): check MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD")
    assert expected in log.splitlines()
    assert "Traceback" not in log and "not-the-password" not in log


def test_an_image_added_through_the_server_goes_to_the_pacs(mammolabel, orthanc, tmp_path):
    """Last in the module: it adds a seventh mammogram to the PACS."""
    path = write_dicom_mg(tmp_path / "new.dcm", make_phantom(5, seed=3).pixels, patient_id="P903",
                          study_uid=generate_uid(), laterality="L")
    sop = str(pydicom.dcmread(path).SOPInstanceUID)
    with open(path, "rb") as f:
        r = requests.put(f"{mammolabel.url}/datastore/image", files={"file": ("new.dcm", f)}, timeout=60)
    assert r.status_code == 200 and r.json()["image"] == sop, r.text
    assert orthanc.client().search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert requests.get(f"{mammolabel.url}/info/", timeout=30).json()["datastore"]["total"] == 7
    png = write_grey_png(tmp_path / "film.png", make_phantom(5, seed=3).pixels, bits=12)
    with open(png, "rb") as f:
        r = requests.put(f"{mammolabel.url}/datastore/image", files={"file": ("film.png", f)}, timeout=60)
    assert r.status_code == 400 and "takes DICOM MG images only" in r.json()["detail"], r.text
