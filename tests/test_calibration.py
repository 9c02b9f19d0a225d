"""Per-site calibration on phantoms, with the checkpoint the two-process training wrote (``ddp_hybrid``).

The site has fewer lesions than the training phantoms (a third of its images instead of four in
seven), as sites differ in prevalence: the network's raw lesion probability is then off, and its
calibration on some of the site's images must beat it on the site's other (held-back) images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammolabel.cli import main
from mammolabel.data.datastore import LabelInventory, MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.tasks.calibration import apply_map, calibrate, fit_map, operating_threshold
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.evaluation.evaluate import evaluate, run_task
from mammolabel.errors import InputError
from mammolabel.tasks.breast_region import BreastRegionInfer
from mammolabel.tasks.calibrate import calibration_tasks
from mammolabel.tasks import infer_tasks

HybridSegmentationInfer = infer_tasks()["hybrid_segmentation"]


def site(path, n: int, seed: int, lesions: int) -> MammoDatastore:
    """The datastore of a site: phantoms, all normal films and the first ``lesions`` lesion films kept."""
    write_phantom_study(path, n=n, seed=seed, shape=(256, 208), dicom=False)
    store = MammoDatastore(path)
    for record in [r for r in collect_labels(store).images if r.finding != "normal"][lesions:]:
        store.remove_image(record.image_id)
    return store


def test_operating_points_meet_the_asked_rates():
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.3
    raw = np.clip(rng.normal(0.4 + 0.3 * truth, 0.15), 0, 1)
    for asked in (0.8, 0.9, 0.95):
        t = operating_threshold(raw, truth, sensitivity=asked)
        assert np.mean(raw[truth] >= t) >= asked
        assert np.mean(raw[truth] > t) < asked  # the highest such threshold
        t = operating_threshold(raw, truth, specificity=asked)
        assert np.mean(raw[~truth] < t) >= asked
        assert np.mean(raw[~truth] < np.max(raw[raw < t])) < asked  # the lowest such threshold
    iso = fit_map(raw, truth, "isotonic")
    assert np.all(np.diff(apply_map(iso, np.linspace(0, 1, 50))) >= 0)


def test_calibration_beats_the_raw_probability_on_held_back_images(ddp_hybrid, tmp_path):
    task = HybridSegmentationInfer(path=str(ddp_hybrid["out"]))
    served = calibration_tasks({"hybrid_segmentation": task, "breast_region": BreastRegionInfer()})
    assert list(served) == ["calibrate_hybrid_segmentation"]  # the server's train task
    result = served["calibrate_hybrid_segmentation"]({"sensitivity": "0.9"}, site(tmp_path / "calibration", 47, 21, 11))
    stored = json.loads((ddp_hybrid["out"].parent / "hybrid_segmentation.calibration.json").read_text())
    assert stored["checkpoint_sha256"] == result["checkpoint_sha256"] and stored["positives"] == 11

    # The threshold meets the asked sensitivity on the calibration images (truth from the phantoms' own record).
    truth = json.loads((tmp_path / "calibration" / "phantoms.json").read_text())["images"]
    threshold = stored["operating_point"]["raw_threshold"]
    lesion_scores = [p for i, p in stored["raw_probabilities"].items() if truth[i]["finding"] != "normal"]
    assert len(lesion_scores) == 11 and np.mean(np.array(lesion_scores) >= threshold) >= 0.9

    held_back = collect_labels(site(tmp_path / "held_back", n=28, seed=22, lesions=7))
    metrics = evaluate(task, held_back, tmp_path / "eval", n_pictures=0)
    report = metrics["calibration"]
    assert report["n_images"] == len(held_back.images) and report["positives"] == 7
    assert report["brier_calibrated"] < report["brier_raw"], report
    point = report["operating_point"]
    assert point["tp"] + point["fn"] == 7 and point["sensitivity_ci95"][0] <= point["sensitivity"]
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000

    # The infer JSON carries both probabilities and the decision at the operating point.
    row = next(r for r in metrics["rows"] if r["positive"])
    record = next(r for r in held_back.images if r.image_id == row["image_id"])
    _, answer = run_task(task, record.image_path)
    applied = answer["calibration"]
    assert applied["applied"] and applied["raw_probability"] == answer["lesion_probability"]
    assert applied["above_operating_point"] == (answer["lesion_probability"] >= threshold)
    assert applied["calibrated_probability"] == pytest.approx(  # the JSON keeps 6 decimals
        float(apply_map(stored["map"], answer["lesion_probability"])), abs=1e-6)

    # Another checkpoint at that path is not calibrated by it.
    other = tmp_path / "other" / "hybrid_segmentation.pt"
    other.parent.mkdir()
    ckpt = load_checkpoint(ddp_hybrid["out"])
    save_checkpoint(other, ckpt.pop("model"), **{**ckpt, "thresholds": {"lesion": 0.4}})
    (other.parent / "hybrid_segmentation.calibration.json").write_text(json.dumps(stored))
    _, answer = run_task(HybridSegmentationInfer(path=str(other)), record.image_path)
    assert answer["calibration"]["applied"] is False and "another checkpoint" in answer["calibration"]["reason"]


def test_fewer_than_ten_positive_images_are_refused(ddp_hybrid, phantom_dir, capsys):
    code = main(["calibrate", "hybrid_segmentation", "--studies", str(phantom_dir), "--checkpoint",
                 str(ddp_hybrid["out"]), "--model-dir", str(ddp_hybrid["out"].parent / "small")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least 10 positive images" in err[0]
    assert not (ddp_hybrid["out"].parent / "small").exists()
    with pytest.raises(InputError, match="sensitivity"):
        calibrate(HybridSegmentationInfer(path=str(ddp_hybrid["out"])), LabelInventory([]), sensitivity=1.5)
