"""``mammolabel train train_cam_self_training`` then ``evaluate localization --split val`` on phantoms.

Reduced by default (64 px input, 2 epochs per stage); MAMMOLABEL_FULL_TRAINING=1 runs 40 phantoms at 128 px.
"""

from __future__ import annotations

import json

import pytest
import torch

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
        studies, n_images, size, epochs = tmp_path / "studies", 40, 128, 8
        write_phantom_study(studies, n=n_images, seed=3, dicom=False)
    else:
        studies, n_images, size, epochs = phantom_copy, 12, 64, 6  # fewer epochs: noise (e.g. 1 vs 2 threads)
    out = tmp_path / "model" / "localization.pt"
    args = ["train", "train_cam_self_training", "--studies", str(studies), "--out", str(out), "--device", "cpu",
            "--epochs", str(epochs), "--set", f"size={size}", "--set", "width=0.125", "--set", "head_channels=32",
            "--set", "first_channels=16", "--set", "shared_channels=16", "--set", f"self_training_epochs={epochs}"]
    summary = run_cli(capsys, *args)
    assert [s["stage"] for s in summary["stages"]] == ["classifier", "self_training_block8", "self_training_block3"]
    assert all(s["epochs_run"] == epochs for s in summary["stages"])
    report = summary["label_report"]
    assert report["used"] == n_images and report["skipped"] == 0 and report["labels_finding"] == n_images
    assert report["train_images"] + report["val_images"] == n_images and report["val_positive"] >= 1
    assert report["train_items"] == report["train_images"] + 4 * report["train_positive"]  # positives x 5

    ckpt = load_checkpoint(out)
    assert ckpt["options"]["t_f"] == 0.6 and ckpt["options"]["t_b"] == 0.1 and ckpt["options"]["lr"] == 1e-3
    classifier = ckpt["stages"][0]["history"]
    assert len(classifier) == epochs and classifier[-1]["loss"] < classifier[0]["loss"]
    for stage in ckpt["stages"][1:]:
        fractions = stage["trimap"]
        assert 0 < fractions["train_background"] < 1 and 0 <= fractions["train_foreground"] < 1

    # a second run resumes every finished stage: nothing is trained again and the weights stay
    summary = run_cli(capsys, *args)
    again = load_checkpoint(out)
    assert all(torch.equal(again["model"][k], ckpt["model"][k]) for k in ckpt["model"])

    # other options: the finished stages are not resumed but trained afresh
    changed = run_cli(capsys, *args[:-2], "--set", "self_training_epochs=1", "--set", "t_f=0.5")
    assert [s["epochs_run"] for s in changed["stages"]] == [epochs, 1, 1]
    assert load_checkpoint(out)["options"]["t_f"] == 0.5

    metrics = run_cli(capsys, "evaluate", "localization", "--checkpoint", str(out), "--studies", str(studies),
                      "--out", str(tmp_path / "eval"), "--split", "val")
    assert metrics["n_images"] == len(ckpt["validation_images"])
    assert metrics["n_located"] >= 1 and metrics["hit_rate"] == metrics["hit_rate_fused"]
    for key in ("hit_rate_cam", "hit_rate_self_training_block8", "hit_rate_self_training_block3", "hit_rate_any"):
        assert 0 <= metrics[key] <= 1
    assert metrics["auc"]["normal_vs_abnormal"] is not None or report["val_positive"] == report["val_images"]
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert {r["image_id"] for r in rows} == set(ckpt["validation_images"])
    assert list((tmp_path / "eval").glob("best_*.png")) and list((tmp_path / "eval").glob("worst_*.png"))


def test_fine_tuning_starts_every_stage_from_init_and_keeps_the_trained_classifier(phantom_copy, tmp_path, caplog):
    """Each stage takes ``init``'s weights for the module it trains; a round never takes back init's classifier."""
    from mammolabel.data.datastore import MammoDatastore, collect_labels
    from mammolabel.methods.liang.network import LiangNet
    from mammolabel.methods.liang.options import LiangOptions
    from mammolabel.methods.liang.training import train_liang
    from mammolabel.training.checkpoint import save_checkpoint
    from mammolabel.training.stages import stage_path

    options = LiangOptions.parse({"size": 64, "width": 0.125, "head_channels": 16, "first_channels": 8,
                                  "shared_channels": 8, "epochs": 1, "self_training_epochs": 1, "device": "cpu"})
    init = save_checkpoint(tmp_path / "init.pt", LiangNet(options.network_config()))
    out = tmp_path / "model" / "localization.pt"
    out.parent.mkdir()
    with caplog.at_level("INFO", logger="mammolabel"):
        train_liang(collect_labels(MammoDatastore(str(phantom_copy))), options, out, init)
    assert sum(f"starting from {init}" in r.getMessage() for r in caplog.records) == 3
    final, classifier = load_checkpoint(out)["model"], load_checkpoint(stage_path(out, "classifier"))["model"]
    assert all(torch.equal(final[k], v) for k, v in classifier.items() if k.startswith("classifier."))
