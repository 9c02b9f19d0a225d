"""The single-purpose apps of ``sample-apps/``, each served by the real MONAI Label server.

Each serves only its tasks and strategies, answers the 3D Slicer client with the shipped demo checkpoints,
and its strategy picks what it promises: ``weak_first`` a film with a box but no mask, ``uncertainty`` the
film with the highest stored score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from monailabel.client import MONAILabelClient

from helpers import labelmap_from
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.server_process import ServerProcess

pytestmark = pytest.mark.server

SAMPLE_APPS = Path(__file__).resolve().parents[1] / "sample-apps"
APPS = {
    "screening": {"tasks": {"classification", "localization"}, "strategies": {"uncertainty", "random"},
                  "trainers": {"pretrain_patches", "train_classifier", "train_cam_self_training"}},
    "segmentation": {"tasks": {"hybrid_segmentation", "discriminative_segmentation"},
                     "strategies": {"weak_first", "random"},
                     "trainers": {"train_hybrid", "pretrain_reconstruction", "train_discriminative"}},
}


@pytest.fixture(scope="module", params=sorted(APPS))
def sample_app(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    truth = write_phantom_study(base / "studies", n=8, seed=0, mask_fraction=0.3, dicom=False)
    conf = {"model_dir": str(base / "model")}
    with ServerProcess(base / "studies", conf=conf, app_dir=SAMPLE_APPS / request.param,
                       log_path=base / "server.log", env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        srv.name, srv.truth, srv.studies_dir = request.param, truth, base / "studies"
        yield srv


def test_the_app_is_under_80_lines():
    for name in APPS:
        lines = (SAMPLE_APPS / name / "main.py").read_text().splitlines()
        assert len(lines) < 80, name


def test_serves_its_tasks_strategies_and_trainers_only(sample_app):
    info = requests.get(f"{sample_app.url}/info/", timeout=30).json()
    expected = APPS[sample_app.name]
    assert set(info["models"]) == expected["tasks"]
    assert set(info["strategies"]) == expected["strategies"]
    assert {n for n in info["trainers"] if not n.startswith("calibrate_")} == expected["trainers"]
    assert info["name"].startswith(f"MammoLabel {sample_app.name}")
    absent = "weak_first" if sample_app.name == "screening" else "uncertainty"
    r = requests.post(f"{sample_app.url}/activelearning/{absent}", json={}, timeout=30)
    assert r.status_code == 404 and "unknown strategy" in r.json()["detail"]


def test_every_task_answers_the_slicer_client(sample_app, tmp_path):
    client = MONAILabelClient(sample_app.url, tmpdir=str(tmp_path))
    image_id = next(i for i, t in sorted(sample_app.truth["images"].items()) if t["boxes"])
    for task in sorted(APPS[sample_app.name]["tasks"]):
        label_file, params = client.infer(task, image_id, {"result_extension": ".nrrd"})
        with open(label_file, "rb") as fh:
            labelmap = labelmap_from(fh.read(), tmp_path)
        result = json.loads(params) if isinstance(params, str) else params
        assert labelmap.shape == tuple(sample_app.truth["shape"]), task
        assert result["checkpoint"]["source"] == "shipped demo", task


def test_its_strategy_picks_what_it_promises(sample_app):
    records = {r.image_id: r for r in collect_labels(MammoDatastore(sample_app.studies_dir, read_only=True)).images}
    if sample_app.name == "segmentation":
        pick = requests.post(f"{sample_app.url}/activelearning/weak_first", json={"client_id": "a"}, timeout=60).json()
        assert "box" in records[pick["id"]].kinds and "mask" not in records[pick["id"]].kinds, pick
        return
    r = requests.post(f"{sample_app.url}/scoring/uncertainty?run_sync=true", json={}, timeout=600)
    assert r.status_code == 200, r.text
    store = MammoDatastore(sample_app.studies_dir, read_only=True)
    scores = {i: store.get_image_info(i)["uncertainty"]["score"] for i, rec in records.items()
              if "mask" not in rec.kinds}
    pick = requests.post(f"{sample_app.url}/activelearning/uncertainty", json={"client_id": "a"}, timeout=60).json()
    assert pick["id"] == max(scores, key=scores.get), (pick, scores)
