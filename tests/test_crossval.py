"""``mammolabel crossval``: every film scored once, by a model that never saw its patient (reduced: tiny network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from mammolabel.cli import main
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.data.split import patient_folds
from mammolabel.errors import InputError
from mammolabel.evaluation.crossval import crossval, fold_interval, paired_difference
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.stages import last_path

#: A tiny hybrid network: the protocol is tested, not the model.
TINY = {"epochs": 2, "rows": 64, "cols": 64, "width": 8, "depth": 18, "batch_size": 4}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "studies"
    write_phantom_study(out, n=12, seed=3, mask_fraction=0.5, dicom=False)
    return out


def test_folds_are_patient_wise_stratified_and_cover_every_film_once(studies):
    records = collect_labels(MammoDatastore(studies, read_only=True)).images
    folds = patient_folds(records, 3, seed=0)
    ids = [r.image_id for fold in folds for r in fold]
    assert sorted(ids) == sorted(r.image_id for r in records)
    patients = [{r.patient_id for r in fold} for fold in folds]
    assert all(not (a & b) for i, a in enumerate(patients) for b in patients[i + 1:])
    assert all({r.finding for r in fold} >= {"normal"} for fold in folds)  # every fold sees normal films
    with pytest.raises(ValueError, match="folds need between 2"):
        patient_folds(records, 1)


def test_fold_interval_is_the_t_interval_of_the_fold_means():
    summary = fold_interval([0.3, 0.4, 0.5])
    half = stats.t.ppf(0.975, 2) * np.std([0.3, 0.4, 0.5], ddof=1) / np.sqrt(3)
    assert summary["mean"] == pytest.approx(0.4) and summary["ci95"] == pytest.approx([0.4 - half, 0.4 + half], abs=1e-3)
    assert fold_interval([None, 0.5]) == {"mean": 0.5, "ci95": None, "folds": 1} and fold_interval([None]) is None
    assert fold_interval([0.0, 0.0, 0.3])["ci95"][0] == 0.0  # a rate's interval stays within [0, 1]


def test_crossval_scores_every_film_out_of_fold_and_draws_the_learning_curves(studies, tmp_path):
    report = crossval("hybrid_segmentation", str(studies), tmp_path / "cv", folds=3, options=TINY)
    labelled = [r for r in collect_labels(MammoDatastore(studies, read_only=True)).images if r.kinds]
    assert sorted(r["image_id"] for r in report["rows"]) == sorted(r.image_id for r in labelled)
    patient = {r.image_id: r.patient_id for r in labelled}
    for k in range(3):
        held = {patient[r["image_id"]] for r in report["rows"] if r["fold"] == k}
        ckpt_path = tmp_path / "cv" / f"fold{k}" / "model" / "hybrid_segmentation.pt"
        ckpt = load_checkpoint(ckpt_path)
        seen = set(ckpt["run"]["train_images"]) | set(ckpt["validation_images"])
        assert not held & {patient[i] for i in seen}, k  # neither training nor model selection saw the fold
        assert len(load_checkpoint(last_path(ckpt_path))["history"]) == TINY["epochs"]
    assert [f["fold"] for f in report["per_fold"]] == [0, 1, 2]
    dice = report["mean_over_folds"]["dice_mean"]
    masked_folds = {r["fold"] for r in report["rows"] if r.get("dice") is not None}
    assert dice["folds"] == len(masked_folds) >= 2 and dice["ci95"][0] <= dice["mean"] <= dice["ci95"][1]
    assert report["out_of_fold"]["films"] == len(labelled) and "ci95" in report["out_of_fold"]["dice_mean"]
    assert (tmp_path / "cv" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert saved["command"].startswith("mammolabel crossval hybrid_segmentation") and saved["load_average"]
    assert "--set epochs=2 --set rows=64" in saved["command"]  # the command reproduces the run


def test_cli_refuses_too_many_folds_in_one_line(studies, tmp_path, capsys):
    code = main(["crossval", "hybrid_segmentation", "--studies", str(studies), "--out", str(tmp_path / "cv"),
                 "--folds", "99"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "folds need between 2" in err
    code = main(["crossval", "breast_region", "--studies", str(studies), "--out", str(tmp_path / "cv")])
    assert code == 2 and "unknown infer task 'breast_region' with a training" in capsys.readouterr().err


def test_paired_difference_resamples_patients_for_both_reports():
    rng = np.random.default_rng(0)
    rows = [{"image_id": f"i{i}", "patient_id": f"p{i // 2}", "finding": "normal" if i % 3 else "benign",
             "score": float(rng.random()), "other": float(i % 3 == 0) + 0.1 * float(rng.random())}
            for i in range(60)]
    report = {"rows": rows}
    same = paired_difference(report, report, "auc_normal_vs_abnormal")
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["patients"] == 30
    better = paired_difference(report, report, "auc_normal_vs_abnormal", keys=("other", "score"))
    assert better["difference"] > 0.3 and better["ci95"][0] > 0  # a perfect score against a random one
    for i, row in enumerate(rows):
        row.update(hit=i % 2 == 0, hit_cam=False, small=i < 20)
    hits = paired_difference(report, report, "hit_rate", keys=("hit", "hit_cam"), where="small")
    assert hits["difference"] == 0.5 and hits["films"] == 20 and hits["where"] == "small"
    with pytest.raises(InputError, match="share no film"):
        paired_difference(report, {"rows": [{**rows[0], "image_id": "x"}]}, "auc_normal_vs_abnormal")


def test_malignant_vs_rest_ranks_malignant_films_against_benign_and_normal_ones():
    from mammolabel.evaluation.intervals import statistics

    rows = [{"finding": f, "score": s} for f, s in
            (("malignant", 0.9), ("malignant", 0.6), ("benign", 0.7), ("normal", 0.1), ("normal", 0.5))]
    assert statistics("hit")["auc_malignant_vs_rest"](rows) == pytest.approx(5 / 6)  # 5 of 6 pairs in order
    assert statistics("hit")["auc_malignant_vs_rest"]([r for r in rows if r["finding"] != "malignant"]) is None
