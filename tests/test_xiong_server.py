"""``hybrid_segmentation`` / ``train_hybrid`` served by the real MONAI Label server (tests run in file order)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient

from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.io import canonicalise, read_mammogram
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.transforms.geometry import make_frame

pytestmark = pytest.mark.server

TASK, TRAIN, IMAGE = "hybrid_segmentation", "train_hybrid", "phantom_000"
TINY = {"rows": 64, "cols": 64, "width": 4, "depth": 18, "batch_size": 4}


def write_constant_checkpoint(path, lesion_logit: float, background_logit: float) -> None:
    """A tiny network whose heads ignore the features: every input pixel gets the given logits."""
    config = HybridConfig(width=4, depth=18)
    net = XiongHybridNet(config)
    with torch.no_grad():
        for head, value in ((net.segmentation.head, lesion_logit), (net.background.head, background_logit)):
            head.weight.zero_()
            head.bias.fill_(value)
    save_checkpoint(path, net, network=asdict(config), frame={"rows": 64, "cols": 64, "crop_breast": True},
                    thresholds={"lesion": 0.5}, schema_version=3, method="xiong")


def read_nrrd(content: bytes) -> tuple[np.ndarray, dict]:
    fh = io.BytesIO(content)
    header = nrrd.read_header(fh)
    return nrrd.read_data(header, fh, index_order="F"), header


def breast_box(server) -> list[int]:
    """Inclusive [x0, y0, x1, y1] of the network's input crop on the stored (original orientation) image."""
    laterality = json.loads((server.studies_dir / "phantoms.json").read_text())["images"][IMAGE]["laterality"]
    image = canonicalise(read_mammogram(server.studies_dir / f"{IMAGE}.png"), laterality)
    r0, c0, r1, c1 = make_frame(image.pixels, (64, 64), True).crop
    width = image.shape[1]
    if image.meta["flipped"]:
        c0, c1 = width - c1, width - c0
    return [c0, r0, c1 - 1, r1 - 1]


def test_untrained_task_answers_409_naming_the_train_task(server):
    (server.model_dir / f"{TASK}.pt").unlink(missing_ok=True)
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert TASK in info["models"] and TRAIN in info["trainers"]
    assert info["models"][TASK]["labels"] == {"lesion": 1, "uncertain_area": 2}
    r = requests.post(f"{server.url}/infer/{TASK}?image={IMAGE}", timeout=60)
    assert r.status_code == 409 and TRAIN in r.json()["detail"]


def test_train_through_the_server(server):
    r = requests.post(f"{server.url}/train/{TRAIN}?run_sync=true",
                      json={**TINY, "epochs": 1, "strong_fraction": "0.5"}, timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(server.model_dir / f"{TASK}.pt")
    assert ckpt["network"]["width"] == 4 and ckpt["label_counts"]["strong_masks_used"] >= 1
    assert ckpt["options"]["strong_fraction"] == 0.5 and ckpt["validation_images"]

    bad = requests.post(f"{server.url}/train/{TRAIN}?run_sync=true", json={**TINY, "mode": "weak_only"}, timeout=60)
    assert bad.status_code == 400 and "mode must be one of" in bad.json()["detail"]


def test_lesion_labelmap_nrrd_and_json(server):
    write_constant_checkpoint(server.model_dir / f"{TASK}.pt", lesion_logit=8.0, background_logit=-8.0)
    shape = read_mammogram(server.studies_dir / f"{IMAGE}.png").shape
    r = requests.post(f"{server.url}/infer/{TASK}?image={IMAGE}&output=image", timeout=120)
    assert r.status_code == 200, r.text
    data, header = read_nrrd(r.content)
    assert data.dtype == np.uint8 and data.shape == (shape[1], shape[0], 1)  # W x H x 1
    labelmap = data[..., 0].T
    assert set(np.unique(labelmap)) == {0, 1}  # the lesion covers the uncertain area inside the crop
    x0, y0, x1, y1 = breast_box(server)
    expected = np.zeros(shape, np.uint8)
    expected[y0 : y1 + 1, x0 : x1 + 1] = 1
    assert (labelmap != expected).mean() < 0.002  # the input crop, placed back in the original orientation

    result = requests.post(f"{server.url}/infer/{TASK}?image={IMAGE}&output=json", timeout=120).json()
    assert result["components"] == 1 and len(result["boxes"]) == 1 and len(result["points"]) == 1
    box = result["boxes"][0]
    assert box["box"] == [x0, y0, x1, y1] and box["mean_probability"] > 0.999
    assert box["area_px"] == int((labelmap == 1).sum()) and result["lesion_probability"] > 0.999
    point = result["points"][0]
    assert x0 <= point["x"] <= x1 and y0 <= point["y"] <= y1


def test_uncertain_area_label_and_client(server, tmp_path):
    write_constant_checkpoint(server.model_dir / f"{TASK}.pt", lesion_logit=-8.0, background_logit=-8.0)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, result = client.infer(TASK, IMAGE, {})
    labelmap = nrrd.read(label_file, index_order="F")[0][..., 0].T
    assert set(np.unique(labelmap)) == {0, 2} and result["components"] == 0 and result["boxes"] == []
    assert result["uncertain_fraction"] == pytest.approx(float((labelmap == 2).mean()), abs=1e-4)

    label_file, result = client.infer(TASK, IMAGE, {"uncertain_area": False})
    assert nrrd.read(label_file)[0].max() == 0 and result["uncertain_fraction"] > 0.1


def test_bad_requests(server):
    write_constant_checkpoint(server.model_dir / f"{TASK}.pt", lesion_logit=-8.0, background_logit=8.0)
    r = requests.post(f"{server.url}/infer/{TASK}?image=no_such_image", timeout=60)
    assert r.status_code == 404
    r = requests.post(f"{server.url}/infer/{TASK}?image={IMAGE}&output=json",
                      data={"params": json.dumps({"threshold": 2})}, timeout=60)
    assert r.status_code == 400 and "threshold must lie in (0, 1)" in r.json()["detail"]
    r = requests.post(f"{server.url}/infer/{TASK}?image={IMAGE}&output=json",
                      data={"params": json.dumps({"threshold": "high"})}, timeout=60)
    assert r.status_code == 400 and "'high'" in r.json()["detail"]
