"""Xiong et al. hybrid training for real on phantoms: a few masks, boxes for the other lesions.

Reduced by default (small phantoms and network, few epochs); ``MAMMOLABEL_FULL_TRAINING=1`` runs
a larger check. What must come out of training on boxes: the background branch learns to leave
the lesions in its uncertain area, and the segmentation branch learns lesion masks.
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


def test_hybrid_training_learns_uncertain_area_and_masks(tmp_path):
    torch.set_num_threads(1)
    full = full_training()
    lr = 3e-3 if not full else 1e-3
    n, rows, cols, width, epochs, min_recall, min_lift, min_dice = (
        (96, 128, 96, 16, 30, 0.7, 4.0, 0.3) if full else (24, 64, 64, 8, 10, 0.2, 1.5, 0.05)
    )
    studies = tmp_path / "studies"
    write_phantom_study(studies, n=n, seed=5, dicom=False)
    inventory = collect_labels(MammoDatastore(studies, read_only=True))
    task = train_tasks()["train_hybrid"](tmp_path / "models")
    options = task.options({"device": "cpu", "rows": rows, "cols": cols, "width": width, "depth": 18, "lr": lr,
                            "batch_size": 4, "steps_per_epoch": 6, "epochs": epochs, "strong_fraction": 0.3,
                            "val_fraction": 0.3, "seed": 0})
    summary = task.run(inventory, options, task.path)
    history = load_checkpoint(task.path.with_name("hybrid_segmentation.last.pt"))["history"]
    loss = [h["loss"] for h in history]
    dice = [h["dice"] for h in history]
    # The uncertain area starts as the whole image; boxes teach it to shrink around the lesions.
    recall, covered = [h["uncertain_recall"] for h in history], [h["uncertain_fraction"] for h in history]
    lift = [r / max(c, 1e-3) for r, c in zip(recall, covered)]
    assert summary["labels"]["weak_boxes_replacing_masks"] > summary["labels"]["strong_masks_used"] > 0
    assert min(loss[-2:]) < loss[0], loss
    assert covered[0] > 0.9 and max(lift) > min_lift and recall[lift.index(max(lift))] > min_recall, (recall, covered)
    assert max(dice) > min_dice, dice
