"""``pretrain_patches`` (Shen et al.): a lesion-versus-tissue patch classifier that starts the Dahl models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.labels import ImageLabels
from mammolabel.errors import InputError
from mammolabel.methods.dahl.network import DahlClassifier
from mammolabel.methods.dahl.patches import PatchOptions, cut, lesions_of, resolve_patches
from mammolabel.tasks import train_tasks
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.stages import file_digest, last_path, stage_path

TINY = {"depth": 18, "width": 8, "patch_size": 64, "lesion_patches": 4, "tissue_patches": 3, "batch_size": 8,
        "epochs": 3, "lr": 1e-3, "device": "cpu", "init": "scratch", "val_fraction": 0.3}


def test_patches_are_cut_at_full_resolution_around_the_canonical_lesion():
    pixels = np.zeros((100, 80), np.float32)
    pixels[40:44, 10:14] = 1.0
    patch = cut(pixels, 11.5, 41.5, 8)
    assert patch.shape == (1, 8, 8) and patch.sum() == 16 and patch[0, 2:6, 2:6].all()
    assert cut(pixels, 0, 0, 8)[0, :4].sum() == 0  # outside the film: zeros
    record = ImageLabels("a", "", "p", boxes=[[60, 10, 70, 30]])
    assert lesions_of(record, 80, flipped=True) == [(80 - 1 - 65, 20, 10)]


def test_pretrain_patches_learns_and_starts_the_holistic_model(phantom_dir, tmp_path):
    inventory = collect_labels(MammoDatastore(phantom_dir, read_only=True))
    patches = train_tasks()["pretrain_patches"](tmp_path)
    summary = patches.train(inventory, patches.options(TINY), patches.path)
    counts = summary["patches"]
    assert counts["train_lesion"] > 0 and counts["train_tissue"] > 0 and counts["val_lesion"] > 0
    history = load_checkpoint(last_path(patches.path))["history"]
    assert history[-1]["loss"] < history[0]["loss"] and 0 <= summary["best_patch_auc"] <= 1
    ckpt = load_checkpoint(patches.path, "dahl")
    DahlClassifier(**ckpt["network"]).load_state_dict(ckpt["model"])
    assert resolve_patches("auto", tmp_path) == patches.path and resolve_patches("", tmp_path) is None
    with pytest.raises(InputError, match="patches: checkpoint not found"):
        resolve_patches(str(tmp_path / "missing.pt"), tmp_path)

    classifier = train_tasks()["train_classifier"](tmp_path)
    options = classifier.options({"depth": 18, "width": 8, "input_rows": 64, "input_cols": 64, "roi_size": 64,
                                  "epochs": 1, "stage": "holistic", "target": "abnormal", "patches": "auto",
                                  "device": "cpu", "init": "scratch", "batch_size": 4})
    classifier.train(inventory, options, classifier.path)
    run = load_checkpoint(stage_path(classifier.path, "holistic"))["run"]
    assert run["started_from"] == file_digest(patches.path)  # the Holistic model started from the patches


def test_the_patch_options_refuse_what_cannot_train():
    with pytest.raises(InputError, match="patch_size must be at least 32"):
        PatchOptions.parse({"patch_size": 8}, "pretrain_patches")
    assert torch.equal(cut(np.ones((4, 4), np.float32), 1.5, 1.5, 4), torch.ones(1, 4, 4))
