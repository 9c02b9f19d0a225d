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


def train(tmp_path, seed: int, full: bool) -> tuple[dict, list[dict]]:
    """One reduced (or full) training on phantoms; its summary and its epoch history."""
    n, rows, cols, width, epochs, lr = (96, 128, 96, 16, 30, 1e-3) if full else (24, 64, 64, 8, 20, 3e-3)
    studies = tmp_path / "studies"
    if not studies.exists():
        write_phantom_study(studies, n=n, seed=5, dicom=False)
    inventory = collect_labels(MammoDatastore(studies, read_only=True))
    task = train_tasks()["train_hybrid"](tmp_path / f"models{seed}")
    options = task.options({"device": "cpu", "rows": rows, "cols": cols, "width": width, "depth": 18, "lr": lr,
                            "batch_size": 4, "steps_per_epoch": 6, "epochs": epochs, "strong_fraction": 0.3,
                            "val_fraction": 0.3, "seed": seed, "init": "scratch"})
    summary = task.run(inventory, options, task.path)
    return summary, load_checkpoint(task.path.with_name("hybrid_segmentation.last.pt"))["history"]


def test_hybrid_training_learns_uncertain_area_and_masks(tmp_path):
    """Three seeds. In every run the loss falls and, at its best, the background branch's uncertain area
    concentrates on the lesions. At this scale, where the uncertain area starts (the whole image or none
    of it after the first epoch) and whether the segmentation branch reaches a Dice above chance depend on
    the seed (measured on seeds 0-5: 3 and 1 of 6), so those two are asked of at least one of the runs."""
    torch.set_num_threads(1)
    full = full_training()
    min_recall, min_lift, min_dice = (0.7, 4.0, 0.3) if full else (0.2, 1.5, 0.05)
    starts, dices = [], []
    for seed in (0, 1, 2):
        summary, history = train(tmp_path, seed, full)
        loss = [h["loss"] for h in history]
        recall, covered = [h["uncertain_recall"] for h in history], [h["uncertain_fraction"] for h in history]
        lift = [r / max(c, 1e-3) for r, c in zip(recall, covered)]
        assert summary["labels"]["weak_boxes_replacing_masks"] > summary["labels"]["strong_masks_used"] > 0
        assert min(loss[-2:]) < loss[0], (seed, loss)
        # some epoch's uncertain area is min_lift times denser on the lesions than chance and holds min_recall of them
        assert any(l > min_lift and r > min_recall for l, r in zip(lift, recall)), (seed, recall, covered)
        starts.append(covered[0])
        dices.append(max(h["dice"] for h in history))
    # The uncertain area can start as the whole image; boxes teach it to shrink around the lesions.
    assert max(starts) > 0.9, starts
    assert max(dices) > min_dice, dices
