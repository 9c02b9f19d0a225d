"""A fresh install: the real server answers every task with the shipped checkpoints, and fine-tunes from them.

The phantoms are the ones ``run.sh`` serves (24, seed 0); the demo checkpoints never saw them.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from helpers import labelmap_from
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.server_process import ServerProcess
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.stages import file_digest
from mammolabel.zoo import MODELS_DIR

pytestmark = pytest.mark.server

NETWORK_TASKS = ("classification", "discriminative_segmentation", "glam_segmentation", "hybrid_segmentation",
                 "localization")
#: Labels of each task's labelmap that mark where it sees a lesion: breast region (1, 2); classification: the
#: top saliency level (3); localization: the lesion points (1) and the fused heatmap's levels (2-4).
LESION_LABELS = {"breast_region": (1, 2), "classification": (3,), "discriminative_segmentation": (1,),
                 "glam_segmentation": (1, 2), "hybrid_segmentation": (1,), "localization": (1, 2, 3, 4)}
#: Share of the first 8 phantom lesion films each task's output must land on: one film below what the demo
#: checkpoints gave when they were made (8/8, 4/8, 8/8, 7/8, 8/8, 3/8; localization's points alone: 0/8).
FOUND_AT_LEAST = {"breast_region": 1.0, "classification": 3 / 8, "discriminative_segmentation": 7 / 8,
                  "glam_segmentation": 6 / 8, "hybrid_segmentation": 7 / 8, "localization": 2 / 8}
N_LESION_FILMS = 8


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    base = tmp_path_factory.mktemp("fresh")
    truth = write_phantom_study(base / "studies", n=24, seed=0, mask_fraction=0.3, dicom=False)
    model_dir = base / "model"
    conf = {"models": "all", "model_dir": str(model_dir)}
    with ServerProcess(base / "studies", conf=conf, log_path=base / "server.log",
                       env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        srv.truth, srv.model_dir = truth, model_dir
        yield srv


def lands_on(task: str, labelmap: np.ndarray, boxes: list[list[int]]) -> bool:
    """Does the task's lesion marking touch one of the lesion boxes (inclusive [x0, y0, x1, y1])?"""
    marked = np.isin(labelmap, LESION_LABELS[task])
    return any(marked[y0:y1 + 1, x0:x1 + 1].any() for x0, y0, x1, y1 in boxes)


def test_info_names_the_shipped_demo_checkpoints_and_the_presets(fresh):
    info = requests.get(f"{fresh.url}/info/", timeout=30).json()
    for task in NETWORK_TASKS:
        checkpoint = info["models"][task]["checkpoint"]
        assert checkpoint["source"] == "shipped demo" and checkpoint["preset"] == "cpu", checkpoint
    trainers = {n: t for n, t in info["trainers"].items() if not n.startswith("calibrate_")}
    assert len(trainers) == 7  # the six train tasks and pretrain_patches (an optional stage of classification)
    for name, trainer in trainers.items():
        assert set(trainer["presets"]) == {"paper", "cpu"} and trainer["config"]["preset"] == "auto", name


@pytest.mark.parametrize("task", ("breast_region", *NETWORK_TASKS))
def test_every_task_answers_the_slicer_client_and_lands_on_the_phantom_lesions(fresh, task, tmp_path):
    client = MONAILabelClient(fresh.url, tmpdir=str(tmp_path))  # not /tmp: the server removes its own copy there
    lesions = [(i, t) for i, t in sorted(fresh.truth["images"].items()) if t["boxes"]][:N_LESION_FILMS]
    found = 0
    for image_id, truth in lesions:
        label_file, params = client.infer(task, image_id, {"result_extension": ".nrrd"})  # as 3D Slicer asks
        with open(label_file, "rb") as fh:
            labelmap = labelmap_from(fh.read(), tmp_path)
        result = json.loads(params) if isinstance(params, str) else params
        assert labelmap.shape == tuple(fresh.truth["shape"]) and result["image_shape"] == fresh.truth["shape"]
        if task != "breast_region":
            assert result["checkpoint"]["source"] == "shipped demo"
        found += lands_on(task, labelmap, truth["boxes"])
    assert found / len(lesions) >= FOUND_AT_LEAST[task], f"{task}: {found} of {len(lesions)} lesions found"


def test_fine_tuning_from_the_client_leaves_the_shipped_file_and_serves_the_new_checkpoint(fresh):
    task, train = "discriminative_segmentation", "train_discriminative"
    shipped = MODELS_DIR / f"{task}.demo.pt"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    r = requests.post(f"{fresh.url}/train/{train}", json={"epochs": 1}, timeout=60)
    assert r.status_code == 200, r.text
    site = fresh.model_dir / f"{task}.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = requests.get(f"{fresh.url}/train/", params={"check_if_running": "true"}, timeout=30)
        if status.status_code != 200 and site.exists():
            break
        time.sleep(2)
    assert site.exists(), (fresh.log_path.read_text())[-3000:]
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == digest

    ckpt = load_checkpoint(site)
    assert ckpt["started_from"] == shipped.name and ckpt["preset"] == "cpu" and ckpt["train_task"] == train
    stats = requests.get(f"{fresh.url}/info/", timeout=30).json()["train_stats"][train]
    assert stats["stage"] and stats["epoch"] == 1 and "eta_s" in stats and stats["latest"]["epoch"] == 1
    r = requests.post(f"{fresh.url}/infer/{task}?image=phantom_000&output=json", timeout=120)
    assert r.status_code == 200 and r.json()["checkpoint"]["source"] == "site-trained", r.text


def test_pretrain_patches_over_http_starts_the_window_max_holistic_model(fresh):
    patches = fresh.model_dir / "pretrain_patches.pt"
    patches.unlink(missing_ok=True)
    net = {"depth": 10, "width": 4, "epochs": 1, "val_fraction": 0.5, "resume": False, "device": "cpu"}
    r = requests.post(f"{fresh.url}/train/pretrain_patches?run_sync=true",
                      json={**net, "patch_size": 64, "batch_size": 8}, timeout=300)
    assert r.status_code == 200, r.text
    assert load_checkpoint(patches)["stage"] == "pretrain_patches"
    params = {**net, "input_rows": 96, "input_cols": 80, "batch_size": 4, "target": "abnormal", "stage": "holistic",
              "patches": "auto", "pool": "window_max", "window": 64}
    r = requests.post(f"{fresh.url}/train/train_classifier?run_sync=true", json=params, timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(fresh.model_dir / "classification.pt")
    assert ckpt["run"]["started_from"] == file_digest(patches)  # the Holistic model started from the patches
    assert ckpt["network"]["pool"] == "window_max" and ckpt["history"][0]["epoch"] == 0  # the start competed
    result = requests.post(f"{fresh.url}/infer/classification?image=phantom_002&output=json", timeout=120).json()
    assert result["model_used"] == "holistic" and 0 < result["holistic_probability"] < 1
    r = requests.post(f"{fresh.url}/train/train_classifier?run_sync=true", json={**params, "window": 50}, timeout=60)
    assert r.status_code == 400 and "multiple of 32" in r.text


def test_a_mias_datastore_is_served_with_the_mias_checkpoints(mias_datastore, tmp_path):
    conf = {"models": "all", "model_dir": str(tmp_path / "model")}
    with ServerProcess(mias_datastore, conf=conf, log_path=tmp_path / "server.log",
                       env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        for task in NETWORK_TASKS:
            r = requests.post(f"{srv.url}/infer/{task}?image=mdb001&output=json", timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["checkpoint"]["source"] == "shipped mias" and r.json()["image_shape"] == [1024, 1024]
