"""The real ``monailabel start_server`` serving the app: info, breast_region, labels, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from PIL import Image

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.io import read_mammogram, write_labelmap
from helpers import labelmap_from, tree_digest

pytestmark = pytest.mark.server


def test_info_lists_tasks_strategies_and_datastore(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"]["breast_region"]["labels"] == {"breast": 1, "pectoral_muscle": 2}
    assert info["models"]["breast_region"]["dimension"] == 2
    assert {"random", "first"} <= set(info["strategies"])
    assert info["datastore"]["total"] == 8


def test_breast_region_over_http_overlays_the_breast(server, tmp_path):
    r = requests.post(f"{server.url}/infer/breast_region?image=phantom_000&output=image", timeout=120)
    assert r.status_code == 200, r.text
    lab = labelmap_from(r.content, tmp_path)
    image = read_mammogram(server.studies_dir / "phantom_000.png")
    assert lab.shape == image.shape
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).sum() > 0.2 * lab.size
    assert image.pixels[lab > 0].mean() > 5 * image.pixels[lab == 0].mean()
    truth = json.loads((server.studies_dir / "phantoms.json").read_text())["images"]
    for x0, y0, x1, y1 in truth["phantom_000"]["boxes"]:
        assert (lab[y0 : y1 + 1, x0 : x1 + 1] > 0).mean() > 0.95
    r = requests.post(f"{server.url}/infer/breast_region?image=phantom_000&output=json", timeout=120)
    result = r.json()
    assert result["breast_area_px"] == int((lab > 0).sum()) and result["image_shape"] == list(image.shape)


def test_breast_region_with_the_monailabel_client(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert "breast_region" in client.info()["models"]
    label_file, params = client.infer("breast_region", "phantom_003", {})
    data, _ = nrrd.read(label_file)
    assert data.shape == (416, 512, 1) and params["model"] == "breast_region"
    assert params["side"] in ("L", "R") and params["breast_fraction"] > 0.2
    with pytest.raises(MONAILabelClientException, match="not in the datastore"):
        client.infer("breast_region", "no_such_image", {})


def test_orientation_end_to_end_with_a_mirrored_upload(server, tmp_path):
    """The same film stored mirrored gives the mirrored labelmap, pixel for pixel."""
    original = np.asarray(Image.open(server.studies_dir / "phantom_002.png"))
    results = []
    for name, pixels in (("orig.png", original), ("mirror.png", original[:, ::-1].copy())):
        Image.fromarray(pixels).save(tmp_path / name)
        with open(tmp_path / name, "rb") as f:
            r = requests.post(f"{server.url}/infer/breast_region?output=image", files={"file": (name, f)}, timeout=120)
        assert r.status_code == 200, r.text
        results.append(labelmap_from(r.content, tmp_path))
    np.testing.assert_array_equal(results[1], results[0][:, ::-1])
    assert not np.array_equal(results[0], results[1])


def test_labels_saved_through_the_server_are_read_back(server, tmp_path):
    store_dir = server.studies_dir
    shape = read_mammogram(store_dir / "phantom_006.png").shape
    (tmp_path / "finding.json").write_text(json.dumps({"lesion_types": ["calcification"]}))
    with open(tmp_path / "finding.json", "rb") as f:
        r = requests.put(f"{server.url}/datastore/label?image=phantom_006&tag=finding",
                         data={"params": json.dumps({"finding": "malignant"})}, files={"label": f}, timeout=60)
    assert r.status_code == 200, r.text
    stroke = np.zeros(shape, np.uint8)
    stroke[200:240, 100:104] = 1
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.save_label("phantom_006", str(write_labelmap(tmp_path / "box.nrrd", stroke)), tag="box")
    mask = np.zeros(shape, np.uint8)
    mask[210:230, 90:120] = 1
    client.save_label("phantom_006", str(write_labelmap(tmp_path / "final.nrrd", mask)), tag="final")
    all_ = requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()
    tags = all_["objects"]["phantom_006"]["labels"]
    assert tags["finding"]["info"]["finding"] == "malignant"
    assert tags["box"]["info"]["boxes"] == [[100, 200, 103, 239]]
    rec = next(r for r in collect_labels(MammoDatastore(store_dir, read_only=True)).images if r.image_id == "phantom_006")
    assert rec.finding == "malignant" and rec.lesion_types == ["calcification"]
    assert rec.boxes == [[100, 200, 103, 239]] and {"finding", "box", "mask"} <= rec.kinds


def _bad_requests(tmp_path: Path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "bad.json").write_text("{nope")
    post, put = "post", "put"
    return [
        (post, "/infer/no_such_model?image=phantom_000", {}, None, "no_such_model"),
        (post, "/infer/breast_region?image=no_such_image", {}, None, "not in the datastore"),
        (post, "/infer/breast_region?image=..%2F..%2Fetc%2Fpasswd", {}, None, "invalid image id"),
        (post, "/infer/breast_region?image=%2Fetc%2Fpasswd", {}, None, "invalid image id"),
        (post, "/infer/breast_region", {}, ("file", "zero.png"), "empty"),
        (post, "/infer/breast_region", {}, ("file", "text.png"), "cannot read"),
        (post, "/infer/breast_region?image=phantom_000", {"params": "{not json"}, None, "JSON"),
        (put, "/datastore/label?image=phantom_001&tag=final", {}, ("label", "empty.nrrd"), "empty"),
        (put, "/datastore/label?image=phantom_001&tag=final", {}, ("label", "text.png"), "cannot read"),
        (put, "/datastore/label?image=phantom_001&tag=finding", {"params": '{"finding": "maybe"}'}, ("label", "bad.json"), "JSON"),
        (put, "/datastore/label?image=phantom_001&tag=finding", {"params": '{"finding": "maybe"}'}, None, "finding must be"),
        (put, "/datastore/label?image=nope&tag=final", {}, ("label", "text.png"), "not in the datastore"),
        (put, "/datastore/label?image=phantom_001&tag=..%2Fx", {}, ("label", "text.png"), "invalid label tag"),
        (put, "/datastore/image?image=new_one", {}, ("file", "text.png"), "cannot read"),
        (put, "/datastore/image?image=new_one", {}, ("file", "zero.png"), "empty"),
    ]


def test_bad_input_gets_4xx_with_a_message_and_changes_nothing(server, tmp_path):
    for method, path, data, upload, message in _bad_requests(tmp_path):
        before = tree_digest(server.studies_dir)
        files = None
        if upload:
            field, name = upload
            files = {field: (name, io.BytesIO((tmp_path / name).read_bytes()))}
        elif method == "put":
            files = {"label": ("none.json", io.BytesIO(b""))}
        r = requests.request(method, f"{server.url}{path}", data=data, files=files, timeout=60)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert message in r.json()["detail"], (path, r.text)
        assert tree_digest(server.studies_dir) == before, path
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200


@pytest.mark.mias
def test_serving_the_imported_mias_datastore(mias_datastore, tmp_path):
    """`mammolabel import-mias` then serving the datastore: a film's labels and breast_region."""
    from mammolabel.server_process import ServerProcess

    with ServerProcess(mias_datastore, conf={"models": "breast_region"}, log_path=tmp_path / "server.log") as srv:
        info = requests.get(f"{srv.url}/info/", timeout=30).json()
        assert info["datastore"]["total"] == 216 and info["datastore"]["label_tags"]["finding"] == 216
        r = requests.post(f"{srv.url}/infer/breast_region?image=mdb001&output=image", timeout=120)
        assert r.status_code == 200, r.text
        lab = labelmap_from(r.content, tmp_path)
        assert lab.shape == (1024, 1024)
        assert lab[598, 535] > 0  # the lesion centre of mdb001 (Info.txt x=535, y=425 from the bottom)
        result = requests.post(f"{srv.url}/infer/breast_region?image=mdb001&output=json", timeout=120).json()
        assert result["side"] == "R" and result["flipped"] is True
