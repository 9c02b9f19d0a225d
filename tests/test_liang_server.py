"""``localization`` and ``train_cam_self_training`` served by the real MONAI Label server.

The tests run in file order: first without a checkpoint (409), then with a small one, then the
server trains its own.
"""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from mammolabel.training import precision
from mammolabel.training.checkpoint import load_checkpoint, method_fields, save_checkpoint
from mammolabel.methods.liang.options import LiangOptions
from mammolabel.io import read_mammogram
from mammolabel.methods.liang.network import LiangNet
from helpers import labelmap_from

pytestmark = pytest.mark.server

TINY = {"size": 64, "width": 0.125, "head_channels": 16, "first_channels": 8, "shared_channels": 8}


def write_small_checkpoint(model_dir, **overrides) -> None:
    options = LiangOptions(**TINY, **overrides)
    torch.manual_seed(0)
    net = LiangNet(options.network_config())
    net.train()
    with torch.no_grad():  # a few batch-norm updates, so that the maps are not flat at initialisation
        for _ in range(3):
            net(torch.rand(2, 1, 64, 64))
    save_checkpoint(model_dir / "localization.pt", net, **method_fields(
        "liang", net.config.to_dict(), options.frame(), options.to_dict(), "self_training_block3", {}, [], {}))


def test_without_checkpoint_the_task_names_its_train_task(server):
    (server.model_dir / "localization.pt").unlink(missing_ok=True)
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"]["localization"]["labels"] == {"lesion_point": 1, "heat_low": 2, "heat_mid": 3, "heat_high": 4}
    assert "train_cam_self_training" in info["trainers"]
    r = requests.post(f"{server.url}/infer/localization?image=phantom_000&output=json", timeout=60)
    assert r.status_code == 409, r.text
    assert "train_cam_self_training" in r.json()["detail"]


def test_infer_over_http_returns_points_and_heat_levels(server, tmp_path):
    write_small_checkpoint(server.model_dir, point_threshold=0.0, max_points=3)
    image = read_mammogram(server.studies_dir / "phantom_001.png")
    r = requests.post(f"{server.url}/infer/localization?image=phantom_001&output=image", timeout=120)
    assert r.status_code == 200, r.text
    lab = labelmap_from(r.content, tmp_path)  # checks W x H x 1 uint8
    assert lab.shape == image.shape
    assert set(np.unique(lab)) <= {0, 1, 2, 3, 4} and (lab == 1).any() and (lab >= 2).any()

    result = requests.post(f"{server.url}/infer/localization?image=phantom_001&output=json", timeout=120).json()
    assert result["image_shape"] == list(image.shape) and 0 < result["probability"] < 1
    assert 1 <= len(result["points"]) <= 3
    rows, cols = image.shape
    for p in result["points"]:
        assert 0 <= p["x"] < cols and 0 <= p["y"] < rows and 0 <= p["score"] <= 1
        assert lab[int(round(p["y"])), int(round(p["x"]))] == 1  # a disk where each point is
    scores = [p["score"] for p in result["points"]]
    assert scores == sorted(scores, reverse=True)
    assert set(result["peaks"]) == {"cam", "self_training_block8", "self_training_block3", "fused"}
    assert result["peaks"]["fused"]["score"] == pytest.approx(scores[0])
    assert result["peaks"]["cam"]["score"] == pytest.approx(1.0)  # the CAM is min-max normalised


def test_the_result_names_the_precision_that_ran_and_fp32_can_be_asked_for(server):
    write_small_checkpoint(server.model_dir)

    def infer(**params) -> requests.Response:
        return requests.post(f"{server.url}/infer/localization?image=phantom_001&output=json",
                             data={"params": json.dumps(params)}, timeout=120)

    assert infer().json()["precision"] == ("bf16" if precision.cpu_bf16() else "fp32")
    assert infer(precision="fp32").json()["precision"] == "fp32"
    r = infer(precision="fp16")
    assert r.status_code == 400 and "precision must be one of" in r.json()["detail"]


def test_infer_with_the_monailabel_client(server, tmp_path):
    write_small_checkpoint(server.model_dir, point_threshold=0.0, max_points=2)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert "localization" in client.info()["models"]
    label_file, params = client.infer("localization", "phantom_003", {})
    data, _ = nrrd.read(label_file)
    rows, cols = read_mammogram(server.studies_dir / "phantom_003.png").shape
    assert data.shape == (cols, rows, 1) and data.dtype == np.uint8
    params = params if isinstance(params, dict) else json.loads(params)
    assert params["model"] == "localization" and len(params["points"]) == 2
    with pytest.raises(MONAILabelClientException, match="not in the datastore"):
        client.infer("localization", "no_such_image", {})


def test_train_over_http_writes_the_checkpoint_the_task_serves(server):
    path = server.model_dir / "localization.pt"
    path.unlink(missing_ok=True)
    params = {**TINY, "epochs": 1, "self_training_epochs": 1, "batch_size": 4, "resume": False, "device": "cpu"}
    r = requests.post(f"{server.url}/train/train_cam_self_training?run_sync=true", json=params, timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(path)
    assert ckpt["options"]["size"] == 64 and ckpt["network"]["width"] == 0.125
    assert ckpt["label_counts"]["used"] == 8 and ckpt["label_counts"]["needs"] == "finding"
    assert [s["stage"] for s in ckpt["stages"]] == ["classifier", "self_training_block8", "self_training_block3"]
    assert set(ckpt["validation_images"]).isdisjoint(ckpt["train_images"]) and ckpt["validation_images"]
    result = requests.post(f"{server.url}/infer/localization?image=phantom_002&output=json", timeout=120).json()
    assert result["input_size"] == [64, 64] and 0 < result["probability"] < 1

    r = requests.post(f"{server.url}/train/train_cam_self_training?run_sync=true", json={"size": "big"}, timeout=60)
    assert r.status_code == 400 and "size" in r.text


def test_bad_input_is_refused_with_a_message(server, tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with open(tmp_path / "text.png", "rb") as f:
        r = requests.post(f"{server.url}/infer/localization", files={"file": ("text.png", f)}, timeout=60)
    assert r.status_code == 400 and "cannot read" in r.json()["detail"]
    r = requests.post(f"{server.url}/infer/localization?image=no_such_image", timeout=60)
    assert r.status_code == 404 and "not in the datastore" in r.json()["detail"]
