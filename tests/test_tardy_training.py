"""Tardy & Mateus training for real on phantoms (exact masks): stage 1 restores, stage 2 segments.

Reduced by default (small phantoms, few epochs); ``MAMMOLABEL_FULL_TRAINING=1`` runs the size of
the phantom check reported in docs/results/tardy.md.
"""

from __future__ import annotations

import pytest
import torch

from conftest import full_training
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.tasks import train_tasks

pytestmark = pytest.mark.training


def test_pretraining_restores_and_the_discriminative_model_segments(tmp_path):
    torch.set_num_threads(1)
    full = full_training()
    n, (rows, cols), (width, levels), batch_size, lr, pre_epochs, epochs, min_dice = (
        (120, (128, 96), (8, 4), 4, 1e-3, 10, 20, 0.5) if full else (40, (64, 48), (4, 3), 2, 3e-3, 4, 12, 0.25)
    )
    studies = tmp_path / "studies"
    write_phantom_study(studies, n=n, seed=0, dicom=False)
    inventory = collect_labels(MammoDatastore(studies, read_only=True))
    common = {"device": "cpu", "rows": rows, "cols": cols, "width": width, "levels": levels, "batch_size": batch_size,
              "lr": lr, "seed": 0, "val_fraction": 0.3}

    stage1 = train_tasks()["pretrain_reconstruction"](tmp_path / "models")
    summary = stage1.run(inventory, stage1.options({**common, "epochs": pre_epochs}), stage1.path)
    psnr = [h["psnr"] for h in summary["history"]]
    assert psnr[-1] > psnr[0] + 1.0, psnr  # restoring corrupted images is learnt (validation, fixed corruptions)

    stage2 = train_tasks()["train_discriminative"](tmp_path / "models")
    summary = stage2.run(inventory, stage2.options({**common, "epochs": epochs}), stage2.path)
    dice = [h["dice"] for h in summary["history"]]
    assert summary["initialised_from"] == str(stage1.path)  # "auto" picked up stage 1
    assert max(dice) > min_dice and max(dice) > dice[0] + 0.1, dice
    ckpt = load_checkpoint(stage2.path)
    assert ckpt["pretrained_from"] == str(stage1.path)
    assert ckpt["best_epoch"] == summary["best_epoch"] - 1 and ckpt["thresholds"]["lesion"] == summary["threshold"]
