"""``mammolabel train train_classifier`` then ``evaluate classification --split val`` on phantoms.

Reduced by default (12 phantoms, 96 x 80 input, 2 epochs per stage); MAMMOLABEL_FULL_TRAINING=1
trains 40 phantoms at 192 x 160 for 8 epochs per stage and checks that the training loss falls.
"""

from __future__ import annotations

import json

import pytest

from conftest import full_training
from mammolabel.cli import main
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.training


def run_cli(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_train_resume_and_evaluate_from_the_command_line(phantom_copy, tmp_path, capsys):
    if full_training():
        studies, n_images, rows, cols, roi, width, epochs = tmp_path / "studies", 40, 192, 160, 96, 8, 8
        write_phantom_study(studies, n=n_images, seed=3, dicom=False)
    else:
        studies, n_images, rows, cols, roi, width, epochs = phantom_copy, 12, 96, 80, 48, 4, 2
    out = tmp_path / "model" / "classification.pt"
    args = ["train", "train_classifier", "--studies", str(studies), "--out", str(out), "--device", "cpu",
            "--epochs", str(epochs), "--set", "depth=10", "--set", f"width={width}", "--set", f"input_rows={rows}",
            "--set", f"input_cols={cols}", "--set", f"roi_size={roi}", "--set", "target=abnormal",
            "--set", "val_fraction=0.4", "--set", "lr=1e-3"]
    summary = run_cli(capsys, *args)
    assert summary["stage"] == "both" and summary["holistic"]["epochs"] == summary["attention"]["epochs"] == epochs
    assert summary["labels"]["used"] == n_images and summary["labels"]["labels_finding"] == n_images
    assert summary["train_images"] + summary["val_images"] == n_images
    ckpt = load_checkpoint(out)  # the attention stage's best epoch
    assert ckpt["stage"] == "attention" and ckpt["epoch"] == summary["attention"]["best_epoch"] - 1
    assert len(load_checkpoint(out.with_name("classification.attention.last.pt"))["history"]) == epochs
    if full_training():
        holistic = load_checkpoint(out.with_name("classification.holistic.last.pt"))["history"]
        assert holistic[-1]["loss"] < holistic[0]["loss"]

    # more attention epochs: the holistic stage is kept, the attention stage resumes where it stopped
    more = run_cli(capsys, *args, "--set", "stage=attention", "--set", f"attention_epochs={epochs + 1}")
    assert "holistic" not in more and more["attention"]["epochs"] == epochs + 1
    assert len(load_checkpoint(out.with_name("classification.attention.last.pt"))["history"]) == epochs + 1

    metrics = run_cli(capsys, "evaluate", "classification", "--checkpoint", str(out), "--studies", str(studies),
                      "--out", str(tmp_path / "eval"), "--split", "val")
    val = load_checkpoint(out)["validation_images"]
    assert metrics["n_images"] == len(val) and metrics["target_question"] == "normal_vs_abnormal"
    aucs = metrics["auc_by_model"]["normal_vs_abnormal"]
    assert set(aucs) == {"holistic", "attention", "ensemble"} and all(0 <= v <= 1 for v in aucs.values())
    assert metrics["auc"]["normal_vs_abnormal"] == aucs["ensemble"]  # the task's main score is the ensemble
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert {r["image_id"] for r in rows} == set(val) and all(r.get("exam_id") for r in rows)
    assert list((tmp_path / "eval").glob("best_*.png")) and (tmp_path / "eval" / "roc.png").is_file()
