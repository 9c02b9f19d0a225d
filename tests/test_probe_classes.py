"""The seven classes of failure a probe of the served app looks for, several cases each, on one server.

Every refusal must be a 4xx with a message and leave the datastore and the model folder byte-identical;
a canary folder outside the server's folders is never read into the datastore nor written; ``/info``
answers within a second throughout (a thread polls it while the cases run).
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from helpers import archive, tree_digest
from PIL import Image
from pydicom.dataelem import DataElement

from mammolabel.data.phantoms import write_phantom_study
from mammolabel.io import write_dicom_mg
from mammolabel.server_process import ServerProcess

pytestmark = pytest.mark.server

TRAIN = {"rows": 64, "cols": 64, "width": 4, "depth": 18, "batch_size": 4, "epochs": 1}


class InfoWatch(threading.Thread):
    """Polls ``/info/`` and keeps the slowest answer time (a failed or late answer counts as 60 s)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.slowest, self.polls = url, threading.Event(), 0.0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                ok = requests.get(f"{self.url}/info/", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.slowest = max(self.slowest, time.monotonic() - start if ok else 60.0)
            self.polls += 1
            time.sleep(0.2)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    studies, models, sessions, outside = base / "studies", base / "model", base / "sessions", base / "outside"
    write_phantom_study(studies, n=6, seed=3, dicom=False)
    models.mkdir()
    outside.mkdir()
    # A usable 64 x 64 image: were it ever read, the upload naming it would be stored.
    (outside / "canary.raw").write_bytes((np.random.default_rng(7).random((64, 64)) * 255).astype(np.uint8).tobytes())
    (outside / "canary.pt").write_bytes(b"not a checkpoint")
    os.mkfifo(outside / "fifo.raw")
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "MONAI_LABEL_SESSION_PATH": str(sessions),
           "MAMMOLABEL_MAX_UPLOAD_MB": "64"}
    conf = {"models": "breast_region,hybrid_segmentation", "model_dir": str(models)}
    with ServerProcess(studies, conf=conf, env=env, log_path=base / "server.log") as srv:
        srv.studies_dir, srv.model_dir, srv.outside, srv.sessions = studies, models, outside, sessions
        watch = InfoWatch(srv.url)
        watch.start()
        srv.watch = watch
        yield srv
        watch.stop.set()
        watch.join()
    canary = {p.name for p in outside.iterdir()}
    assert canary == {"canary.raw", "canary.pt", "fifo.raw"}, canary  # nothing written outside
    assert watch.polls > 10 and watch.slowest < 1.0, (watch.polls, watch.slowest)  # /info answered throughout


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def film(seed: int = 0) -> bytes:
    return png((np.random.default_rng(seed).random((64, 48)) * 255).astype(np.uint8))


def dicom(tmp: Path, edit) -> bytes:
    path = write_dicom_mg(tmp / "x.dcm", np.random.default_rng(0).random((64, 48)), patient_id="X",
                          study_uid="1.2.3", laterality="L")
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path.read_bytes()


def detached_nrrd(data_file: str) -> bytes:
    return (f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nencoding: raw\n"
            f"data file: {data_file}\n\n").encode()


def nifti_bomb(shape: tuple[int, ...]) -> bytes:
    """A gzipped NIfTI whose header claims float64 ``shape`` but carries almost no data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * (352 - len(header.binaryblock)) + b"\0" * 4096
    return gzip.compress(raw)


Case = tuple[str, str, str, dict, dict | None, dict | None]


def image(kind: str, query: str, name: str, data: bytes, route: str = "/datastore/image") -> Case:
    method = "put" if route.startswith("/datastore") else "post"
    return kind, method, f"{route}{query}", {}, {"file": (name, data)}, None


def info(kind: str, path: str, value: dict) -> Case:
    return kind, "put", path, {"info": json.dumps(value)}, None, None


def train(kind: str, **options) -> Case:
    return kind, "post", "/train/train_hybrid", {}, None, {**TRAIN, **options}


def session(kind: str, name: str, data: bytes) -> Case:
    return kind, "put", "/session/?uncompress=true", {}, {"files": (name, data)}, None


def refusal_cases(srv, tmp: Path) -> list[Case]:
    """(class, method, path, form data, files, json) of requests that must be refused."""
    out = str(srv.outside)
    deep = "[" * 5000 + "]" * 5000
    infer0 = "/infer/breast_region?image=phantom_000"
    label_info = "/datastore/label/info?label=phantom_001&tag=finding"
    image_info = "/datastore/image/info?image=phantom_001"
    return [
        # 1. unhandled 500s
        image("500", "?image=ww0", "a.dcm", dicom(tmp, lambda d: setattr(d, "WindowWidth", 0))),
        image("500", "?image=ps", "a.dcm", dicom(tmp, lambda d: d.add(DataElement(0x00280030, "LO", "abc\\1")))),
        image("500", "?image=rs", "a.dcm", dicom(tmp, lambda d: setattr(d, "RescaleSlope", "nan"))),
        image("500", "", "a" * 250 + ".png", film()),
        ("500", "post", infer0, {"params": json.dumps({"a": json.loads(deep[:180] + deep[-180:])})}, None, None),
        ("500", "post", infer0, {"params": '{"a": ' + deep + "}"}, None, None),
        ("500", "post", "/train/train_hybrid", {}, None, {"a": json.loads("[" * 100 + "]" * 100)}),
        ("500", "post", "/infer/breast_region?image=nosuch", {}, {"label": ("l.bin", b"\0" * 64)}, None),
        train("500", mode="weak_only"),  # a background training refused before it is queued, not 200
        train("500", rows=100),
        ("500", "get", "/logs/gpu", {}, None, None),
        ("500", "get", "/logs/?lines=10", {}, None, None),
        # 2. values of the wrong type stored
        info("store", label_info, {"points": "abc"}),
        info("store", label_info, {"radii": [-3]}),
        info("store", label_info, {"lesion_types": 7}),
        info("store", image_info, {"lock": {"client_id": "x", "ts": "soon"}}),
        info("store", image_info, {"uncertainty": {"score": "high"}}),
        info("store", image_info, {"spacing_mm": -1}),
        ("store", "put", "/datastore/label?image=phantom_001&tag=finding",
         {"params": json.dumps({"finding": "benign", "points": [[1]]})}, {"label": ("f.json", b"{}")}, None),
        # 4. re-upload and deletions of nothing
        image("reupload", "?image=phantom_002", "a.png", film(2)),
        image("reupload", "", "phantom_003.png", film(3)),
        ("reupload", "delete", "/datastore/image?id=nosuch", {}, None, None),
        ("reupload", "delete", "/datastore/label?id=phantom_000&tag=nosuch", {}, None, None),
        # 5. reads outside the datastore
        image("read", "?image=detached", "a.nrrd", detached_nrrd(f"{out}/canary.raw")),
        image("read", "?image=detached2", "a.nrrd", detached_nrrd("../../outside/canary.raw")),
        ("read", "post", f"/infer/breast_region?image={out}/canary.raw", {}, None, None),
        ("read", "post", infer0, {"params": json.dumps({"image": f"{out}/canary.raw"})}, None, None),
        ("read", "post", infer0, {"params": json.dumps({"model": "hybrid_segmentation"})}, None, None),
        # 6. writes outside
        session("write", "s.tar.gz", archive("tar", {"../../outside/evil.txt": b"x"})),
        session("write", "s.tar.gz", archive("tar", {"link": b""})),
        session("write", "s.zip", archive("zip", {"/abs/evil.txt": b"x"})),
        session("write", "s.png", film()),
        train("write", checkpoint=f"{out}/x.pt"),
        train("write", checkpoint="../outside/x"),
        train("write", init_encoder=f"{out}/canary.pt"),
        train("write", init_encoder="/no/such/file.pt"),
        # 7. what used to block, and options beyond their bounds
        image("block", "?image=fifo", "a.nrrd", detached_nrrd(f"{out}/fifo.raw")),
        image("block", "?image=bomb", "a.nii.gz", nifti_bomb((7000, 7000, 1))),
        image("block", "", "a.nii.gz", nifti_bomb((9000, 7000)), route="/infer/breast_region"),
        train("block", rows=100_000),
        train("block", rows=4096, cols=4096, batch_size=64),
        train("block", batch_size="many"),
        image("block", "?image=blank", "a.png", png(np.zeros((64, 64), np.uint8))),
        image("block", "?image=ct", "a.dcm", dicom(tmp, lambda d: setattr(d, "Modality", "CT"))),
    ]


def digest(srv) -> str:
    return tree_digest(srv.studies_dir) + tree_digest(srv.model_dir) + tree_digest(srv.outside)


def test_every_class_is_refused_with_a_message_and_changes_nothing(probe, tmp_path):
    cases = refusal_cases(probe, tmp_path)
    assert {c[0] for c in cases} == {"500", "store", "reupload", "read", "write", "block"}
    failures = []
    for kind, method, path, data, files, body in cases:
        before = digest(probe)
        r = requests.request(method, f"{probe.url}{path}", data=data, files=files, json=body, timeout=120)
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = None
        if not (400 <= r.status_code < 500 and detail):
            failures.append(f"{kind} {method} {path[:70]}: {r.status_code} {r.text[:200]}")
        if digest(probe) != before:
            failures.append(f"{kind} {method} {path[:70]}: the datastore, model or outside folder changed")
    assert not failures, "\n".join(failures)
    assert not list(probe.sessions.rglob("evil*")) and not list(probe.outside.parent.rglob("evil*"))
    assert probe.watch.slowest < 1.0, probe.watch.slowest


def test_raw_ohif_paths_and_oversize_uploads_are_answered_without_a_traceback(probe):
    for raw in ("/ohif/..", "/ohif/../../../../etc/passwd", "/ohif/%2e%2e/%2e%2e/etc/passwd"):
        conn = http.client.HTTPConnection("127.0.0.1", probe.port, timeout=30)
        conn.request("GET", raw)
        r = conn.getresponse()
        body = r.read()
        assert r.status in (200, 404) and b"root:" not in body, (raw, r.status, body[:200])
    # Content-Length beyond the limit: refused before the body is sent.
    with socket.create_connection(("127.0.0.1", probe.port), timeout=10) as s:
        s.sendall(b"PUT /datastore/image?image=big HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: 100000000000\r\n\r\n")
        head = b""
        while b"}" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 413") and b"larger than 64 MB" in head, head[:300]


def test_activelearning_survives_a_bad_value_stored_by_hand(probe):
    index = probe.studies_dir / "datastore_v2.json"
    doc = json.loads(index.read_text())
    doc["objects"]["phantom_004"]["image"]["info"].update(lock={"client_id": "other", "ts": "yesterday"},
                                                          uncertainty={"score": [1]}, spacing_mm="wide")
    index.write_text(json.dumps(doc, indent=2))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the auto-reload picks the edit up
        info = requests.get(f"{probe.url}/datastore/image/info?image=phantom_004", timeout=10).json()
        if info.get("spacing_mm") == "wide":
            break
        time.sleep(0.5)
    assert info.get("spacing_mm") == "wide"
    for strategy in ("first", "uncertainty", "weak_first", "random"):
        r = requests.post(f"{probe.url}/activelearning/{strategy}", json={"client_id": "me"}, timeout=60)
        assert r.status_code == 200 and r.json().get("id"), (strategy, r.text)


def test_reupload_needs_overwrite_and_replaces_the_image_with_its_labels(probe):
    studies = probe.studies_dir
    assert (studies / "labels" / "finding" / "phantom_005.json").exists()
    r = requests.put(f"{probe.url}/datastore/image?image=phantom_005&overwrite=true",
                     files={"file": ("a.nii.gz", gzip.compress(b""))}, timeout=60)
    assert r.status_code == 400  # a refused replacement keeps the old image and its labels
    assert (studies / "phantom_005.png").exists() and (studies / "labels" / "finding" / "phantom_005.json").exists()
    nii = io.BytesIO()
    arr = np.random.default_rng(5).random((48, 64, 1)).astype(np.float32)
    nii.write(nib.Nifti1Image(arr, np.eye(4)).to_bytes())
    r = requests.put(f"{probe.url}/datastore/image?image=phantom_005&overwrite=true",
                     files={"file": ("a.nii", nii.getvalue())}, timeout=60)
    assert r.status_code == 200, r.text
    assert (studies / "phantom_005.nii").exists() and not (studies / "phantom_005.png").exists()
    assert not list(studies.glob("labels/*/phantom_005.*"))
    listed = requests.get(f"{probe.url}/datastore/?output=all", timeout=30).json()["objects"]["phantom_005"]
    assert listed["image"]["ext"] == ".nii" and listed["labels"] == {}


def test_a_burst_of_uploads_and_deletions_keeps_the_index_and_the_watcher(probe):
    def upload(i: int) -> int:
        return requests.put(f"{probe.url}/datastore/image?image=burst_{i:02d}",
                            files={"file": ("a.png", film(100 + i))}, timeout=120).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(upload, range(24)))
    assert codes == [200] * 24
    with ThreadPoolExecutor(max_workers=12) as pool:
        gone = list(pool.map(lambda i: requests.delete(f"{probe.url}/datastore/image?id=burst_{i:02d}",
                                                       timeout=60).status_code, range(0, 24, 2)))
    assert gone == [200] * 12
    # Deleted at once from the index; a file removed behind the server's back is seen by the watcher.
    (probe.studies_dir / "burst_01.png").unlink()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        objects = requests.get(f"{probe.url}/datastore/?output=all", timeout=30).json()["objects"]
        if "burst_01" not in objects:
            break
        time.sleep(0.5)
    expected = {f"burst_{i:02d}" for i in range(3, 24, 2)}
    assert {k for k in objects if k.startswith("burst_")} == expected
    for image_id, obj in objects.items():
        assert (probe.studies_dir / f"{image_id}{obj['image']['ext']}").exists(), image_id
    assert requests.delete(f"{probe.url}/datastore/image?id=burst_00", timeout=30).status_code == 404


@pytest.mark.training
def test_synchronous_training_and_a_large_image_leave_info_answering(probe):
    large = np.tile(np.linspace(0, 65535, 5000, dtype=np.uint16), (5000, 1))
    large[::7, ::5] = 1234  # not blank, not trivially compressible
    content = png(large)
    with ThreadPoolExecutor(max_workers=2) as pool:
        train = pool.submit(requests.post, f"{probe.url}/train/train_hybrid?run_sync=true", json=TRAIN, timeout=600)
        upload = pool.submit(requests.post, f"{probe.url}/infer/breast_region?output=json",
                             files={"file": ("big.png", content)}, timeout=600)
        assert upload.result().status_code == 200, upload.result().text
        assert train.result().status_code == 200, train.result().text
    assert (probe.model_dir / "hybrid_segmentation.pt").exists()
    assert probe.watch.polls > 5 and probe.watch.slowest < 1.0, probe.watch.slowest
