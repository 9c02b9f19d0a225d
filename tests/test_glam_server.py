"""``glam_segmentation`` and ``train_glam`` served by the real MONAI Label server.

The tests run in file order: first without a checkpoint (409), then with a small one, then the
server trains its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from mammolabel.training.checkpoint import load_checkpoint, method_fields, save_checkpoint
from mammolabel.methods.glam.options import GlamOptions
from mammolabel.io import read_mammogram
from mammolabel.methods.glam.network import CLASSES, GlamNet
from helpers import labelmap_from

pytestmark = pytest.mark.server

TASK, TRAIN = "glam_segmentation", "train_glam"
TINY = {"rows": 128, "cols": 128, "patch_size": 32, "num_patches": 2, "global_width": 4, "local_width": 4,
        "local_depth": 18}


def write_small_checkpoint(model_dir, threshold: float = 0.5) -> GlamOptions:
    options = GlamOptions.parse(TINY)
    torch.manual_seed(0)
    net = GlamNet(options.network_config())
    thresholds = {m: {c: {"threshold": threshold, "dice": None, "n": 0} for c in CLASSES}
                  for m in ("global", "local", "fused")}
    save_checkpoint(model_dir / f"{TASK}.pt", net, **method_fields("glam", asdict(net.config), options.frame(),
                                                                   options.to_dict(), "joint", thresholds, [], {}))
    return options


def infer(server, image: str, output: str, **params) -> requests.Response:
    return requests.post(f"{server.url}/infer/{TASK}?image={image}&output={output}",
                         data={"params": json.dumps(params)}, timeout=120)


def test_without_checkpoint_the_task_names_its_train_task(server):
    (server.model_dir / f"{TASK}.pt").unlink(missing_ok=True)
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"][TASK]["labels"] == {"benign": 1, "malignant": 2, "patch": 3}
    assert TRAIN in info["trainers"]
    r = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000&output=json", timeout=60)
    assert r.status_code == 409, r.text
    assert TRAIN in r.json()["detail"]


def test_infer_over_http_returns_segmentation_patches_and_probabilities(server, tmp_path):
    write_small_checkpoint(server.model_dir)
    image = read_mammogram(server.studies_dir / "phantom_003.png")
    rows, cols = image.shape
    r = infer(server, "phantom_003", "image", threshold_benign=0.99, threshold_malignant=0.99)
    assert r.status_code == 200, r.text
    lab = labelmap_from(r.content, tmp_path)  # checks W x H x 1 uint8
    assert lab.shape == image.shape and set(np.unique(lab)) == {0, 3}  # nothing reaches 0.99: outlines only

    result = infer(server, "phantom_003", "json", threshold_benign=0.99, threshold_malignant=0.99).json()
    assert result["image_shape"] == [rows, cols] and result["stage"] == "joint" and result["saliency"] == "fused"
    assert set(result["probabilities"]) == set(CLASSES) and all(0 < p < 1 for p in result["probabilities"].values())
    assert result["probabilities"] == result["module_probabilities"]["fused"]
    assert result["thresholds"] == {"benign": 0.99, "malignant": 0.99} and result["components"] == 0
    assert len(result["patches"]) == 2
    for p in result["patches"]:
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 < cols and 0 <= y0 < y1 < rows
        assert (lab[y0, x0 : x1 + 1] == 3).all() and (lab[y0 : y1 + 1, x0] == 3).all()
    assert (lab == 3).sum() < 0.2 * lab.size

    result = infer(server, "phantom_003", "json", threshold_benign=0.01, threshold_malignant=0.01).json()
    assert result["components"] == len(result["boxes"]) >= 1
    assert sum(result["segmented_area_px"].values()) > 0.5 * rows * cols  # every saliency exceeds 0.01
    for b in result["boxes"]:
        assert b["label"] in CLASSES and 0 <= b["box"][0] <= b["box"][2] < cols and b["area_px"] > 0

    bad = infer(server, "phantom_003", "json", threshold_malignant=2)
    assert bad.status_code == 400 and "threshold_malignant" in bad.text


def test_infer_with_the_monailabel_client(server, tmp_path):
    write_small_checkpoint(server.model_dir, threshold=0.5)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert TASK in client.info()["models"]
    label_file, params = client.infer(TASK, "phantom_002", {"saliency": "global"})
    data, _ = nrrd.read(label_file)
    rows, cols = read_mammogram(server.studies_dir / "phantom_002.png").shape
    assert data.shape == (cols, rows, 1) and data.dtype == np.uint8
    params = params if isinstance(params, dict) else json.loads(params)
    assert params["model"] == TASK and params["saliency"] == "global" and len(params["patches"]) == 2
    with pytest.raises(MONAILabelClientException, match="not in the datastore"):
        client.infer(TASK, "no_such_image", {})


def test_train_over_http_writes_the_checkpoint_the_task_serves(server):
    path = server.model_dir / f"{TASK}.pt"
    path.unlink(missing_ok=True)
    params = {**TINY, "epochs": 1, "local_epochs": 1, "joint_epochs": 1, "batch_size": 4, "resume": False,
              "device": "cpu", "aggregation": "attention"}
    r = requests.post(f"{server.url}/train/{TRAIN}?run_sync=true", json=params, timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(path)
    assert ckpt["stage"] == "joint" and [s["stage"] for s in ckpt["stages"]] == ["global", "local", "joint"]
    assert ckpt["network"]["aggregation"] == "attention" and ckpt["options"]["rows"] == 128
    assert ckpt["label_counts"]["used"] == 8 and ckpt["label_counts"]["needs"] == "finding"
    assert set(ckpt["validation_images"]).isdisjoint(ckpt["train_images"]) and ckpt["validation_images"]
    for name in ("global", "local", "fused"):
        assert all(0 < ckpt["thresholds"][name][c]["threshold"] < 1 for c in CLASSES)
    result = infer(server, "phantom_002", "json").json()
    assert result["input_size"] == [128, 128] and all("attention" in p for p in result["patches"])
    assert sum(p["attention"] for p in result["patches"]) == pytest.approx(1.0, abs=1e-5)

    r = requests.post(f"{server.url}/train/{TRAIN}?run_sync=true", json={"stage": "everything"}, timeout=60)
    assert r.status_code == 400 and "stage" in r.text
