"""Active-learning strategies (with annotator locks) and uncertainty scoring."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import requests
import torch

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.io import write_labelmap
from mammolabel.tasks.activelearning import (
    FirstStrategy,
    UncertaintyScoring,
    UncertaintyStrategy,
    WeakFirstStrategy,
    heatmap_uncertainty,
)
from mammolabel.tasks.infer import Prediction
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.tasks import infer_tasks


@pytest.fixture()
def weak_store(tmp_path) -> MammoDatastore:
    write_phantom_study(tmp_path / "s", n=12, seed=0, mask_fraction=0.3, dicom=False)
    return MammoDatastore(tmp_path / "s")


def test_weak_first_prefers_boxes_then_findings_and_never_masked(weak_store, tmp_path):
    inventory = collect_labels(weak_store)
    boxed = sorted(r.image_id for r in inventory.images if "box" in r.kinds and "mask" not in r.kinds)
    assert boxed, "the study must have boxed images"
    strategy = WeakFirstStrategy()
    picked = strategy({"strategy": "weak_first", "client_id": "a"}, weak_store)
    assert picked == {"id": boxed[0], "reason": "has a box, no mask"}
    # Once it has a mask it is no longer a candidate.
    shape = weak_store.image_shape(boxed[0])
    mask = np.zeros(shape, np.uint8)
    mask[100:120, 100:120] = 1
    weak_store.save_label(boxed[0], str(write_labelmap(tmp_path / "m.nrrd", mask)), "final", {})
    again = strategy({"strategy": "weak_first", "client_id": "a"}, weak_store)
    assert again["id"] != boxed[0]
    masked = {r.image_id for r in collect_labels(weak_store).images if "mask" in r.kinds}
    for _ in range(5):
        assert FirstStrategy()({"strategy": "first", "client_id": "a"}, weak_store)["id"] not in masked


def test_locks_keep_two_annotators_apart(weak_store):
    strategy = FirstStrategy()
    a = strategy({"strategy": "first", "client_id": "alice"}, weak_store)["id"]
    b = strategy({"strategy": "first", "client_id": "bob"}, weak_store)["id"]
    assert a != b
    assert strategy({"strategy": "first", "client_id": "alice"}, weak_store)["id"] == a  # alice keeps hers
    assert weak_store.get_image_info(a)["lock"]["client_id"] == "alice"
    expired = FirstStrategy()
    expired.lock_seconds = 0
    assert expired({"strategy": "first", "client_id": "bob"}, weak_store)["id"] == a


def test_annotators_asking_at_once_get_different_images(weak_store):
    from concurrent.futures import ThreadPoolExecutor

    strategy = FirstStrategy()
    with ThreadPoolExecutor(max_workers=6) as pool:
        picks = list(pool.map(lambda i: strategy({"strategy": "first", "client_id": f"c{i}"}, weak_store)["id"],
                              range(6)))
    assert len(set(picks)) == 6, picks


def test_heatmap_uncertainty_is_highest_for_undecided_maps():
    shape = (50, 40)
    confident = Prediction(np.zeros(shape, np.uint8), heatmap=np.where(np.arange(2000).reshape(shape) < 20, 0.99, 0.01))
    undecided = Prediction(np.zeros(shape, np.uint8), heatmap=np.full(shape, 0.5))
    nothing = Prediction(np.zeros(shape, np.uint8), heatmap=np.full(shape, 0.02))
    u = {k: heatmap_uncertainty(p)[0] for k, p in
         (("confident", confident), ("undecided", undecided), ("nothing", nothing))}
    assert u["undecided"] == pytest.approx(np.log(2), rel=1e-4)
    assert u["undecided"] > u["nothing"] and u["undecided"] > u["confident"]
    assert heatmap_uncertainty(Prediction(np.zeros(shape, np.uint8))) is None


def small_hybrid_checkpoint(path):
    """An untrained, small hybrid_segmentation network: the scoring mechanism, not model quality, is tested."""
    torch.manual_seed(0)
    config = HybridConfig(depth=18, width=8)
    save_checkpoint(path, XiongHybridNet(config), network=asdict(config),
                    frame={"rows": 128, "cols": 96, "crop_breast": True}, thresholds={"lesion": 0.5})
    return path


def test_scoring_stores_uncertainty_and_the_strategy_follows_it(weak_store, tmp_path):
    HybridSegmentationInfer = infer_tasks()["hybrid_segmentation"]
    task = HybridSegmentationInfer(path=str(small_hybrid_checkpoint(tmp_path / "hybrid_segmentation.pt")))
    request = {"strategy": "uncertainty", "client_id": "c"}
    assert UncertaintyStrategy()(request, weak_store)["reason"].startswith("no uncertainty")
    summary = UncertaintyScoring({"hybrid_segmentation": task, "untrained": HybridSegmentationInfer()})(
        {}, weak_store)
    assert summary["tasks"] == ["hybrid_segmentation"]
    unmasked = [r.image_id for r in collect_labels(weak_store).images if "mask" not in r.kinds]
    scores = {i: weak_store.get_image_info(i)["uncertainty"]["score"] for i in unmasked}
    assert summary["scored"] == len(unmasked) and all(0 <= s <= np.log(2) + 0.5 for s in scores.values())
    assert len(set(np.round(list(scores.values()), 6))) > 1
    pick = UncertaintyStrategy()(request, weak_store)
    assert pick["id"] == max(scores, key=scores.get)


@pytest.mark.server
def test_strategies_through_the_server(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert {"random", "first", "weak_first", "uncertainty"} <= set(info["strategies"])
    assert "uncertainty" in info["scoring"]
    r = requests.post(f"{server.url}/activelearning/weak_first", json={"client_id": "x"}, timeout=60)
    assert r.status_code == 200 and r.json()["id"].startswith("phantom_")
    r = requests.post(f"{server.url}/activelearning/no_such_strategy", json={}, timeout=60)
    assert r.status_code == 404 and "unknown strategy" in r.json()["detail"]
    r = requests.post(f"{server.url}/scoring/uncertainty?run_sync=true", json={}, timeout=300)
    assert r.status_code == 200, r.text


@pytest.mark.training
def test_simulated_annotation_loop(tmp_path):
    """Reduced loop on phantoms, two seeds (the development runs are in docs/active_learning.md)."""
    from mammolabel.evaluation.simulate import simulate_active_learning

    write_phantom_study(tmp_path / "s", n=20, seed=5, dicom=False)
    options = {"rows": 64, "cols": 64, "width": 4, "depth": 18, "batch_size": 4, "epochs": 1}
    result = simulate_active_learning(tmp_path / "s", tmp_path / "al", initial=2, rounds=1, per_round=2,
                                      seeds=(0, 1), train_options=options)
    assert (tmp_path / "al" / "simulate_al.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "al" / "simulate_al.json").read_text())
    assert saved["curves"] == result["curves"] and set(saved["runs"]) == {"0", "1"}
    for name in ("uncertainty", "random"):
        curve = result["curves"][name]
        assert [c["masks"] for c in curve] == [2, 4]
        assert all(0 <= c["dice_min"] <= c["dice_mean"] <= c["dice_max"] <= 1 for c in curve)
        seeds = [saved["runs"][s][name] for s in ("0", "1")]
        assert curve[1]["dice_mean"] == pytest.approx((seeds[0][1]["dice_mean"] + seeds[1][1]["dice_mean"]) / 2)
        for seed in (0, 1):
            pool = collect_labels(MammoDatastore(tmp_path / "al" / "work" / f"seed{seed}" / name / "studies")).images
            assert sum(1 for r in pool if r.mask_path) == 4
            assert all(r.box_path for r in pool if not r.mask_path)  # the rest keep their weak label
