"""A server that survives bad input, load and crashes (real server, loopback only)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import psutil
import pydicom
import pytest
import requests
from helpers import tree_digest
from PIL import Image

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.io import read_label, write_dicom_mg, write_labelmap
from mammolabel.server_process import ServerProcess

pytestmark = pytest.mark.server


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def dicom_bytes(tmp: Path, edit=None) -> bytes:
    path = write_dicom_mg(tmp / "x.dcm", np.random.default_rng(0).random((64, 48)), patient_id="X",
                          study_uid="1.2.3", laterality="L")
    if edit:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return path.read_bytes()


def nifti_bytes(tmp: Path, array: np.ndarray) -> bytes:
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp / "x.nii")
    return (tmp / "x.nii").read_bytes()


def nrrd_bytes(tmp: Path, array: np.ndarray) -> bytes:
    nrrd.write(str(tmp / "x.nrrd"), array)
    return (tmp / "x.nrrd").read_bytes()


def bad_images(tmp: Path) -> dict[str, tuple[str, bytes]]:
    """Name -> (file name, content) of image uploads that must be refused."""
    ok = png_bytes((np.random.default_rng(1).random((64, 48)) * 255).astype(np.uint8))

    def no_pixels(ds):
        del ds.PixelData

    def frames(ds):
        ds.NumberOfFrames = 4

    def huge(ds):
        ds.Rows = ds.Columns = 40000

    def short_data(ds):
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]

    def colour(ds):
        ds.SamplesPerPixel = 3

    def not_mg_text(ds):
        ds.Rows = 2

    def beyond_bits_stored(ds):
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = 0xFFFF  # a 16-bit value in a 12-bit image
        ds.PixelData = pixels.tobytes()

    def fewer_bits_stored(ds):
        ds.BitsStored, ds.HighBit = 8, 7  # the stored 12-bit values no longer fit

    return {
        "zero-png": ("a.png", b""),
        "zero-dcm": ("a.dcm", b""),
        "zero-nii": ("a.nii", b""),
        "zero-nrrd": ("a.nrrd", b""),
        "truncated-png": ("a.png", ok[: len(ok) // 2]),
        "truncated-png-header": ("a.png", ok[:30]),
        "truncated-dicom": ("a.dcm", dicom_bytes(tmp)[:500]),
        "text-png": ("a.png", b"hello, not an image"),
        "text-dcm": ("a.dcm", b"hello, not an image" * 20),
        "html-png": ("a.png", b"<html><body>hi</body></html>"),
        "random-nrrd": ("a.nrrd", os.urandom(300)),
        "random-nii": ("a.nii", os.urandom(400)),
        "pdf-as-png": ("a.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),
        "unknown-extension": ("a.xyz", ok),
        "text-extension": ("a.txt", b"12 34\n56 78\n"),
        "dicom-no-pixels": ("a.dcm", dicom_bytes(tmp, no_pixels)),
        "dicom-multiframe": ("a.dcm", dicom_bytes(tmp, frames)),
        "dicom-40000x40000": ("a.dcm", dicom_bytes(tmp, huge)),
        "dicom-short-pixel-data": ("a.dcm", dicom_bytes(tmp, short_data)),
        "dicom-colour": ("a.dcm", dicom_bytes(tmp, colour)),
        "dicom-2-rows": ("a.dcm", dicom_bytes(tmp, not_mg_text)),
        "dicom-16-bit-value-in-12-bits": ("a.dcm", dicom_bytes(tmp, beyond_bits_stored)),
        "dicom-values-beyond-bits-stored": ("a.dcm", dicom_bytes(tmp, fewer_bits_stored)),
        "png-40000x40000-claim": ("a.png", png_header_claiming(40000, 40000)),
        "png-1x1": ("a.png", png_bytes(np.zeros((1, 1), np.uint8))),
        "png-3-pixels-wide": ("a.png", png_bytes(np.zeros((100, 3), np.uint8))),
        "png-colour": ("a.png", png_bytes(np.dstack([np.zeros((40, 40)), np.full((40, 40), 255), np.zeros((40, 40))]).astype(np.uint8))),
        "png-rgba-colour": ("a.png", png_bytes(np.dstack([np.full((40, 40), c) for c in (0, 255, 9, 255)]).astype(np.uint8))),
        "nifti-nan": ("a.nii", nifti_bytes(tmp, np.full((40, 40, 1), np.nan, np.float32))),
        "nifti-inf": ("a.nii", nifti_bytes(tmp, np.full((40, 40, 1), np.inf, np.float32))),
        "nifti-3d-volume": ("a.nii", nifti_bytes(tmp, np.zeros((40, 40, 5), np.float32))),
        "nifti-4d": ("a.nii", nifti_bytes(tmp, np.zeros((40, 40, 1, 3), np.float32))),
        "nrrd-3-channels": ("a.nrrd", nrrd_bytes(tmp, np.zeros((40, 40, 3), np.float32))),
        "nrrd-nan": ("a.nrrd", nrrd_bytes(tmp, np.full((40, 40), np.nan, np.float32))),
    }


def bad_labels(tmp: Path, shape: tuple[int, int]) -> dict[str, tuple[str, str, bytes, dict]]:
    """Name -> (tag, file name, content, params) of label saves for phantom_001 that must be refused."""
    rows, cols = shape

    def lab(array: np.ndarray) -> bytes:
        return nrrd_bytes(tmp, np.ascontiguousarray(array.T[..., None]))

    good = np.zeros(shape, np.uint8)
    good[10:20, 10:20] = 1
    return {
        "label-zero-bytes": ("final", "l.nrrd", b"", {}),
        "label-text": ("final", "l.nrrd", b"not a label", {}),
        "label-wrong-size": ("final", "l.nrrd", lab(np.zeros((rows + 3, cols), np.uint8)), {}),
        "label-transposed": ("final", "l.nrrd", nrrd_bytes(tmp, good[..., None]), {}),
        "label-value-300": ("final", "l.nrrd", lab(np.full(shape, 300, np.uint16)), {}),
        "label-negative": ("final", "l.nrrd", lab(np.full(shape, -1, np.int16)), {}),
        "label-fractional": ("final", "l.nrrd", lab(np.full(shape, 0.5, np.float32)), {}),
        "label-nan": ("final", "l.nrrd", lab(np.full(shape, np.nan, np.float32)), {}),
        "label-3d": ("final", "l.nrrd", nrrd_bytes(tmp, np.zeros((cols, rows, 4), np.uint8)), {}),
        "label-colour-png": ("final", "l.png", png_bytes(np.dstack([good * 255, good * 0, good * 9])), {}),
        "box-empty": ("box", "l.nrrd", lab(np.zeros(shape, np.uint8)), {}),
        "box-text": ("box", "l.png", b"text", {}),
        "finding-unknown": ("finding", "f.json", b"{}", {"finding": "suspicious"}),
        "finding-missing": ("finding", "f.json", b"{}", {}),
        "finding-not-json": ("finding", "f.json", b"{oops", {}),
        "finding-array": ("finding", "f.json", b"[1, 2]", {}),
        "finding-number": ("finding", "f.json", b"{\"finding\": 3}", {}),
        "finding-binary": ("finding", "f.json", os.urandom(64), {}),
        "tag-traversal": ("..%2F..%2Fetc", "l.nrrd", lab(good), {}),
        "tag-slash": ("a%2Fb", "l.nrrd", lab(good), {}),
        "tag-hidden": (".hidden", "l.nrrd", lab(good), {}),
    }


def test_fifty_bad_inputs_get_4xx_messages_and_change_nothing(server, tmp_path):
    cases = []
    for name, (filename, content) in bad_images(tmp_path).items():
        cases.append((name, "post", "/infer/breast_region", {}, {"file": (filename, content)}))
        if name in ("zero-png", "text-png", "dicom-no-pixels", "png-colour", "nifti-nan", "png-1x1"):
            cases.append((f"add-image-{name}", "put", "/datastore/image?image=new_image", {}, {"file": (filename, content)}))
    shape = (512, 416)
    for name, (tag, filename, content, params) in bad_labels(tmp_path, shape).items():
        cases.append((name, "put", f"/datastore/label?image=phantom_001&tag={tag}", {"params": json.dumps(params)},
                      {"label": (filename, content)}))
    ok_label = {"label": ("l.nrrd", nrrd_bytes(tmp_path, np.ones((416, 512, 1), np.uint8)))}
    cases += [
        ("label-unknown-image", "put", "/datastore/label?image=nosuch&tag=final", {}, ok_label),
        ("label-image-traversal", "put", "/datastore/label?image=..%2Fphantom_001&tag=final", {}, ok_label),
        ("image-id-traversal", "put", "/datastore/image?image=..%2F..%2Fevil", {},
         {"file": ("a.png", png_bytes(np.zeros((64, 64), np.uint8)))}),
        ("image-id-space", "put", "/datastore/image?image=a%20b", {},
         {"file": ("a.png", png_bytes(np.zeros((64, 64), np.uint8)))}),
        ("infer-unknown-model", "post", "/infer/nosuch?image=phantom_000", {}, None),
        ("infer-unknown-image", "post", "/infer/breast_region?image=nosuch", {}, None),
        ("infer-absolute-path", "post", "/infer/breast_region?image=%2Fetc%2Fhostname", {}, None),
        ("infer-traversal", "post", "/infer/breast_region?image=..%2F..%2Fetc%2Fpasswd", {}, None),
        ("infer-params-not-json", "post", "/infer/breast_region?image=phantom_000", {"params": "{nope"}, None),
        ("infer-params-array", "post", "/infer/breast_region?image=phantom_000", {"params": "[1, 2]"}, None),
        ("infer-params-string", "post", "/infer/breast_region?image=phantom_000", {"params": "\"x\""}, None),
        ("label-params-array", "put", "/datastore/label?image=phantom_001&tag=final", {"params": "[]"}, ok_label),
        ("image-info-not-json", "put", "/datastore/image/info?image=phantom_001", {"info": "{x"}, None),
        ("strategy-unknown", "post", "/activelearning/nosuch", {}, None),
        ("scoring-unknown", "post", "/scoring/nosuch", {}, None),
        ("train-unknown", "post", "/train/nosuch", {}, None),
        ("model-upload-anonymous", "put", "/model/hybrid_segmentation", {}, {"file": ("m.pt", b"weights?")}),
        ("model-delete-anonymous", "delete", "/model/hybrid_segmentation", {}, None),
    ]
    assert len(cases) >= 50
    failures = []

    def digest() -> str:  # the datastore and the model folder: no bad request writes anywhere
        return tree_digest(server.studies_dir) + tree_digest(server.model_dir)

    for name, method, path, data, files in cases:
        before = digest()
        r = requests.request(method, f"{server.url}{path}", data=data, files=files, timeout=120)
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = None
        if not (400 <= r.status_code < 500 and detail):
            failures.append(f"{name}: {r.status_code} {r.text[:200]}")
        if digest() != before:
            failures.append(f"{name}: the datastore or the model folder changed")
    assert not failures, "\n".join(failures)
    assert requests.post(f"{server.url}/infer/breast_region?image=phantom_000&output=json", timeout=120).ok


def test_hundred_concurrent_inferences_succeed_or_are_told_busy(server):
    proc = psutil.Process(server.proc.pid)
    rss_before = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    def call(i: int) -> int:
        r = requests.post(f"{server.url}/infer/breast_region?image=phantom_00{i % 8}&output=json", timeout=600)
        if r.status_code == 429:
            assert "busy" in r.json()["detail"] and r.headers.get("Retry-After")
        return r.status_code

    with ThreadPoolExecutor(max_workers=100) as pool:
        codes = list(pool.map(call, range(100)))
    assert all(c in (200, 429) for c in codes), codes
    assert codes.count(200) >= 50
    rss_after = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    assert rss_after - rss_before < 1.5e9


def test_busy_answer_when_the_queue_is_full(tmp_path):
    write_phantom_study(tmp_path / "s", n=2, dicom=False)
    env = {"MAMMOLABEL_MAX_CONCURRENT_INFER": "1", "MAMMOLABEL_MAX_QUEUED_INFER": "2",
           "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    with ServerProcess(tmp_path / "s", conf={"models": "breast_region"}, env=env,
                       log_path=tmp_path / "server.log") as srv:
        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(lambda i: requests.post(
                f"{srv.url}/infer/breast_region?image=phantom_000&output=json", timeout=300).status_code, range(30)))
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes


def _kill_group(srv: ServerProcess) -> None:
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()


def test_kill_during_label_saves_loses_nothing_saved(tmp_path):
    studies = tmp_path / "s"
    write_phantom_study(studies, n=6, dicom=False)
    before = {p: p.read_bytes() for p in (studies / "labels").rglob("*") if p.is_file()}
    mask = np.zeros((512, 416), np.uint8)
    mask[50:90, 60:100] = 1
    content = nrrd_bytes(tmp_path, np.ascontiguousarray(mask.T[..., None]))
    srv = ServerProcess(studies, conf={"models": "breast_region"}, log_path=tmp_path / "server.log",
                        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}).start()
    stop = threading.Event()

    def save_loop(image: str) -> None:
        while not stop.is_set():
            try:
                requests.put(f"{srv.url}/datastore/label?image={image}&tag=box",
                             files={"label": ("b.nrrd", content)}, timeout=10)
            except requests.RequestException:
                return

    threads = [threading.Thread(target=save_loop, args=(f"phantom_00{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(3)
    _kill_group(srv)
    stop.set()
    for t in threads:
        t.join()
    srv.stop()
    # Every label that existed before is byte-identical; every file the index names reads back.
    for path, data in before.items():
        assert path.read_bytes() == data, path
    store = MammoDatastore(studies)
    inventory = collect_labels(store)
    for rec in inventory.images:
        for path in (rec.mask_path, rec.box_path):
            if path:
                read_label(path, (512, 416))
    boxed = [r for r in inventory.images if r.box_path]
    assert boxed and all(r.boxes == [[60, 50, 99, 89]] for r in boxed if "phantom_00" in r.image_id and r.box_path)
    assert not list(studies.rglob("*.tmp*"))


@pytest.mark.training
def test_kill_during_training_keeps_the_last_checkpoint_and_resumes(tmp_path):
    studies, models = tmp_path / "s", tmp_path / "model"
    write_phantom_study(studies, n=8, dicom=False)
    options = {"rows": 64, "cols": 64, "width": 4, "depth": 18, "batch_size": 4, "epochs": 200}
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    srv = ServerProcess(studies, conf={"models": "hybrid_segmentation", "model_dir": str(models)},
                        log_path=tmp_path / "server.log", env=env).start()
    r = requests.post(f"{srv.url}/train/train_hybrid", json=options, timeout=60)
    assert r.status_code == 200, r.text
    last = models / "hybrid_segmentation.last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert last.exists(), (tmp_path / "server.log").read_text()[-3000:]
    time.sleep(2)
    _kill_group(srv)
    srv.stop()
    ckpt = load_checkpoint(last)
    done = int(ckpt["epoch"]) + 1
    assert done >= 1 and load_checkpoint(models / "hybrid_segmentation.pt")["model"]
    with ServerProcess(studies, conf={"models": "hybrid_segmentation", "model_dir": str(models)},
                       log_path=tmp_path / "server2.log", env=env) as srv2:
        r = requests.post(f"{srv2.url}/train/train_hybrid?run_sync=true",
                          json={**options, "epochs": done + 1}, timeout=600)
        assert r.status_code == 200, r.text
    history = load_checkpoint(last)["history"]
    assert [h["epoch"] for h in history] == list(range(1, done + 2))
    assert not list(models.glob("*.tmp*"))  # a write the kill interrupted was cleaned up by the resumed run
