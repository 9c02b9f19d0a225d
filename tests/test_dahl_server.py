"""``classification`` and ``train_classifier`` served by the real MONAI Label server.

The tests run in file order: first without a checkpoint (409), then with a small one, then the
server trains its own.
"""

from __future__ import annotations

import json
import math

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.methods.dahl.options import DahlOptions
from mammolabel.io import read_mammogram
from mammolabel.methods.dahl.network import DahlClassifier
from helpers import labelmap_from

pytestmark = pytest.mark.server

TINY = {"depth": 10, "width": 4, "input_rows": 96, "input_cols": 80, "roi_size": 48}


def write_small_checkpoint(model_dir) -> None:
    config = DahlOptions(**TINY).network(attention=True)
    torch.manual_seed(0)
    model = DahlClassifier(**config).train()
    with torch.no_grad():  # a few batch-norm updates, so that the images do not all score alike
        for _ in range(3):
            model.holistic(torch.rand(4, 1, 96, 80))
            model.attention(torch.rand(4, 1, 48, 48))
    save_checkpoint(model_dir / "classification.pt", model, config=config, target="malignant", stage="attention",
                    val_images=[])


def test_without_checkpoint_the_task_names_its_train_task(server):
    (server.model_dir / "classification.pt").unlink(missing_ok=True)
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"]["classification"]["labels"] == {
        "saliency_low": 1, "saliency_medium": 2, "saliency_high": 3, "attention_roi": 4}
    assert "train_classifier" in info["trainers"]
    r = requests.post(f"{server.url}/infer/classification?image=phantom_000&output=json", timeout=60)
    assert r.status_code == 409, r.text
    assert "train_classifier" in r.json()["detail"]


def test_infer_over_http_returns_the_labelmap_and_the_risks(server, tmp_path):
    write_small_checkpoint(server.model_dir)
    image = read_mammogram(server.studies_dir / "phantom_001.png")
    r = requests.post(f"{server.url}/infer/classification?image=phantom_001&output=image", timeout=120)
    assert r.status_code == 200, r.text
    lab = labelmap_from(r.content, tmp_path)  # checks W x H x 1 uint8
    assert lab.shape == image.shape and set(np.unique(lab)) == {0, 1, 2, 3, 4}

    result = requests.post(f"{server.url}/infer/classification?image=phantom_001&output=json", timeout=120).json()
    assert result["image_shape"] == list(image.shape) and result["model_used"] == "ensemble"
    for model in ("holistic", "attention", "ensemble"):
        assert result[f"{model}_probability"] == pytest.approx(1 / (1 + math.exp(-result[f"{model}_risk"])))
    assert result["ensemble_risk"] == pytest.approx((result["holistic_risk"] + result["attention_risk"]) / 2)
    x0, y0, x1, y1 = result["roi"]
    assert (lab[y0, x0 : x1 + 1] == 4).all() and (lab[y0 : y1 + 1, x1] == 4).all()
    assert x0 <= result["coa"]["x"] <= x1 and y0 <= result["coa"]["y"] <= y1
    # phantom_000 (right) and phantom_001 (left) are one patient's two breasts: max of the two
    exam = result["exam"]
    assert exam["patient_id"] == "P000" and [v["image_id"] for v in exam["views"]] == ["phantom_000", "phantom_001"]
    assert {v["side"] for v in exam["views"]} == {"L", "R"}
    other = requests.post(f"{server.url}/infer/classification?image=phantom_000&output=json",
                          data={"params": json.dumps({"exam": False})}, timeout=120).json()
    assert other["exam"] is None
    assert exam["ensemble_risk"] == pytest.approx(max(other["ensemble_risk"], result["ensemble_risk"]))


def test_infer_with_the_monailabel_client(server, tmp_path):
    write_small_checkpoint(server.model_dir)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert "classification" in client.info()["models"]
    label_file, params = client.infer("classification", "phantom_003", {"exam": "false"})
    data, _ = nrrd.read(label_file)
    rows, cols = read_mammogram(server.studies_dir / "phantom_003.png").shape
    assert data.shape == (cols, rows, 1) and data.dtype == np.uint8
    params = params if isinstance(params, dict) else json.loads(params)
    assert params["model"] == "classification" and 0 < params["ensemble_probability"] < 1 and params["exam"] is None
    with pytest.raises(MONAILabelClientException, match="not in the datastore"):
        client.infer("classification", "no_such_image", {})


def test_bad_input_is_refused_with_a_message(server, tmp_path):
    write_small_checkpoint(server.model_dir)
    (tmp_path / "text.png").write_text("not an image")
    with open(tmp_path / "text.png", "rb") as f:
        r = requests.post(f"{server.url}/infer/classification", files={"file": ("text.png", f)}, timeout=60)
    assert r.status_code == 400 and "cannot read" in r.text
    r = requests.post(f"{server.url}/infer/classification?image=phantom_001&output=json",
                      data={"params": json.dumps({"exam": "perhaps"})}, timeout=60)
    assert r.status_code == 400 and "exam" in r.text


def test_train_over_http_writes_the_checkpoint_the_task_serves(server):
    path = server.model_dir / "classification.pt"
    path.unlink(missing_ok=True)
    # the server's 8 phantoms hold two benign films (one patient) and no malignant one
    params = {**TINY, "epochs": 1, "batch_size": 4, "target": "abnormal", "val_fraction": 0.5, "resume": False,
              "device": "cpu"}
    r = requests.post(f"{server.url}/train/train_classifier?run_sync=true", json=params, timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(path)
    assert ckpt["stage"] == "attention" and ckpt["target"] == "abnormal" and ckpt["network"]["input_size"] == [96, 80]
    counts = ckpt["label_counts"]
    assert counts["used"] == 8 and counts["needs"] == "finding" and ckpt["validation_images"]
    assert "neg_val_loss" in ckpt["history"][0] and "auc" not in ckpt["history"][0]  # validation holds no positive
    result = requests.post(f"{server.url}/infer/classification?image=phantom_002&output=json", timeout=120).json()
    assert result["target"] == "abnormal" and 0 < result["ensemble_probability"] < 1

    r = requests.post(f"{server.url}/train/train_classifier?run_sync=true", json={**params, "target": "malignant"},
                      timeout=120)
    assert r.status_code == 400 and "needs both malignant and other images" in r.text
    r = requests.post(f"{server.url}/train/train_classifier?run_sync=true", json={"depth": "deep"}, timeout=60)
    assert r.status_code == 400 and "depth" in r.text
