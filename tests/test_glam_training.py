"""``mammolabel train train_glam`` (all stages, resume, a second local stage), then ``evaluate --split val``.

Reduced by default (12 phantoms, 128 px input, 2 epochs per stage); MAMMOLABEL_FULL_TRAINING=1 runs
48 phantoms at 256 x 192 with 12 / 8 / 4 epochs.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import full_training
from mammolabel.cli import main
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.stages import stage_path

pytestmark = pytest.mark.training


def run_cli(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_train_resume_restage_and_evaluate_from_the_command_line(phantom_copy, tmp_path, capsys):
    if full_training():
        studies, n_images, (rows, cols), patch, epochs = tmp_path / "studies", 48, (256, 192), 64, (12, 8, 4)
        write_phantom_study(studies, n=n_images, seed=3, dicom=False)
    else:
        studies, n_images, (rows, cols), patch, epochs = phantom_copy, 12, (128, 128), 32, (2, 2, 2)
    out = tmp_path / "model" / "glam_segmentation.pt"
    args = ["train", "train_glam", "--studies", str(studies), "--out", str(out), "--device", "cpu",
            "--epochs", str(epochs[0]), "--set", f"local_epochs={epochs[1]}", "--set", f"joint_epochs={epochs[2]}",
            "--set", f"rows={rows}", "--set", f"cols={cols}", "--set", f"patch_size={patch}", "--set", "global_width=8",
            "--set", "local_width=8", "--set", "local_depth=18", "--set", "batch_size=4",
            "--set", "init=scratch"]  # every run the same run (init=auto would fine-tune the served model)
    summary = run_cli(capsys, *args)
    assert [s["stage"] for s in summary["stages"]] == ["global", "local", "joint"]
    assert [s["epochs_run"] for s in summary["stages"]] == list(epochs)
    assert all(s["metric"] == "val_dice" for s in summary["stages"])
    report = summary["label_report"]
    assert report["used"] == n_images and report["skipped"] == 0 and report["labels_finding"] == n_images
    assert report["train_images"] + report["val_images"] == n_images and report["val_masks"] >= 1
    assert report["train_benign"] + report["train_malignant"] >= 2

    ckpt = load_checkpoint(out)
    assert ckpt["stage"] == "joint" and ckpt["options"]["t_global"] == 0.03 and ckpt["options"]["t_local"] == 0.3
    assert set(ckpt["thresholds"]) == {"global", "local", "fused"}
    if full_training():
        history = load_checkpoint(stage_path(out, "global"))["history"]
        assert history[-1]["loss"] < history[0]["loss"]

    # a second run resumes every finished stage: nothing is trained again and the weights stay
    run_cli(capsys, *args)
    again = load_checkpoint(out)
    assert all(torch.equal(again["model"][k], ckpt["model"][k]) for k in ckpt["model"])

    # a new local stage with attention leaves the global stage alone; the old joint stage no longer fits it
    global_before = load_checkpoint(stage_path(out, "global"))
    restaged = run_cli(capsys, *args, "--set", "stage=local", "--set", "aggregation=attention")
    assert [s["stage"] for s in restaged["stages"]] == ["local"] and restaged["stages"][0]["epochs_run"] == epochs[1]
    assert load_checkpoint(stage_path(out, "global"))["history"] == global_before["history"]
    served = load_checkpoint(out)
    assert served["stage"] == "local" and any(k.startswith("local_module.attention") for k in served["model"])
    assert main([*args, "--set", "stage=joint"]) != 0
    assert "needs the network of the local stage" in capsys.readouterr().err

    metrics = run_cli(capsys, "evaluate", "glam_segmentation", "--checkpoint", str(out), "--studies", str(studies),
                      "--out", str(tmp_path / "eval"), "--split", "val")
    assert metrics["n_images"] == len(served["validation_images"]) and metrics["n_all"] == report["val_masks"]
    assert metrics["n_small"] + metrics["n_large"] == metrics["n_all"]
    for name in ("global", "local", "fused"):
        assert 0 <= metrics[f"dice_{name}_all"] <= 1
    assert 0 <= metrics["dice_mean"] <= 1 and 0 <= metrics["patch_cover_mean"] <= 1
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert {r["image_id"] for r in rows} == set(served["validation_images"])
    assert list((tmp_path / "eval").glob("best_*.png")) and list((tmp_path / "eval").glob("worst_*.png"))
