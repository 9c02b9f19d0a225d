"""Tardy & Mateus end to end: the real server (infer, 409, train), the CLI (both stages, resume, evaluate), errors."""

from __future__ import annotations

import json
from pathlib import Path

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from scipy import ndimage

from mammolabel.cli import main
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.labels import boxes_from_mask
from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.methods.tardy.training import THRESHOLDS, discriminative_images, pretraining_images
from mammolabel.training.stages import last_path, stage_path
from mammolabel.io import canonicalise, from_canonical, read_label, read_mammogram
from mammolabel.methods.tardy.network import DiscriminativeSegmenter, UNetConfig
from mammolabel.transforms.geometry import make_frame
from helpers import labelmap_from

TASK = "discriminative_segmentation"
SIZE = (64, 48)
TINY = ["--set", "rows=64", "--set", "cols=48", "--set", "width=4", "--set", "levels=3"]


def identity_checkpoint(path, threshold: float = 0.4) -> None:
    """A subtraction model whose U-Net outputs exactly 0, so that its output O = I: a known answer."""
    model = DiscriminativeSegmenter(UNetConfig(features=[4, 8, 16]))
    with torch.no_grad():
        model.backbone.head.weight.zero_()
        model.backbone.head.bias.zero_()
    save_checkpoint(path, model, stage="train_discriminative", network=model.config.to_dict(), subtraction=True,
                    size=list(SIZE), crop_breast=True, threshold=threshold, val_images=[])


def expected_mask(image_path, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """What the identity model must answer, computed here from the film: (mask, map) as stored."""
    image = canonicalise(read_mammogram(image_path))
    frame = make_frame(image.pixels, SIZE, True)
    probability = frame.to_full(np.clip(frame.to_input(image.pixels), 0, 1))
    flipped = bool(image.meta["flipped"])
    return from_canonical(probability >= threshold, flipped), from_canonical(probability, flipped)


@pytest.mark.server
def test_without_a_checkpoint_the_task_says_which_train_task_to_run(server):
    (server.model_dir / f"{TASK}.pt").unlink(missing_ok=True)
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"][TASK]["labels"] == {"malignant": 1} and info["models"][TASK]["dimension"] == 2
    assert {"pretrain_reconstruction", "train_discriminative"} <= set(info["trainers"])
    r = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000", timeout=60)
    assert r.status_code == 409, r.text
    assert "train_discriminative" in r.json()["detail"]


@pytest.mark.server
def test_infer_over_http_gives_the_known_mask_in_the_stored_orientation(server, tmp_path):
    identity_checkpoint(server.model_dir / f"{TASK}.pt", threshold=0.4)
    image_path = server.studies_dir / "phantom_000.png"  # a right breast: stored mirrored, so the flip is tested
    assert canonicalise(read_mammogram(image_path)).meta["flipped"]
    expected, probability = expected_mask(image_path, 0.4)
    assert 0 < expected.sum() < 0.8 * expected.size

    r = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000&output=image", timeout=120)
    assert r.status_code == 200, r.text
    labelmap = labelmap_from(r.content, tmp_path)  # W x H x 1 uint8, returned as (rows, cols)
    assert labelmap.shape == read_mammogram(image_path).shape
    np.testing.assert_array_equal(labelmap, expected.astype(np.uint8))

    result = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000&output=json", timeout=120).json()
    assert result["threshold"] == 0.4 and result["subtraction"] is True
    assert result["area_px"] == int(expected.sum()) and result["components"] == len(result["boxes"])
    assert result["max_score"] == pytest.approx(float(probability.max()), abs=1e-4)
    labelled, _ = ndimage.label(expected, structure=np.ones((3, 3)))
    truth = {}
    for index, sl in enumerate(ndimage.find_objects(labelled), start=1):
        component = labelled == index
        box = (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)
        truth[box] = (int(component.sum()), float(probability[component].max()))
    answered = {tuple(b["box"]): (b["area_px"], b["max_score"]) for b in result["boxes"]}
    assert answered.keys() == truth.keys() and sorted(answered) == [tuple(b) for b in boxes_from_mask(expected)]
    for box, (area, top) in truth.items():
        assert answered[box][0] == area and answered[box][1] == pytest.approx(top, abs=1e-4)

    # The threshold is a request option; a stricter one gives a smaller region.
    r = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000&output=json",
                      data={"params": json.dumps({"threshold": 0.6})}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["area_px"] == int((probability >= 0.6).sum()) < result["area_px"]
    r = requests.post(f"{server.url}/infer/{TASK}?image=phantom_000", data={"params": json.dumps({"threshold": 2})},
                      timeout=120)
    assert r.status_code == 400 and "threshold" in r.json()["detail"]


@pytest.mark.server
def test_infer_with_the_monailabel_client(server, tmp_path):
    identity_checkpoint(server.model_dir / f"{TASK}.pt", threshold=0.5)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, params = client.infer(TASK, "phantom_003", {})
    data, _ = nrrd.read(label_file)
    expected, _ = expected_mask(server.studies_dir / "phantom_003.png", 0.5)
    assert data.shape == (416, 512, 1) and data.dtype == np.uint8
    np.testing.assert_array_equal(data[..., 0].T, expected.astype(np.uint8))
    assert params["model"] == TASK and params["area_px"] == int(expected.sum()) and params["threshold"] == 0.5


@pytest.mark.server
def test_both_train_tasks_run_through_the_server(server, tmp_path):
    inventory = collect_labels(MammoDatastore(server.studies_dir, read_only=True))
    pre = server.model_dir / "tardy_test_pre.pt"  # checkpoints are named within the model folder
    r = requests.post(f"{server.url}/train/pretrain_reconstruction?run_sync=true",
                      json={"epochs": 1, "rows": 64, "cols": 48, "width": 4, "levels": 3, "checkpoint": pre.name},
                      timeout=300)
    assert r.status_code == 200, r.text
    ckpt = load_checkpoint(pre)
    assert ckpt["stage"] == "pretrain_reconstruction" and ckpt["frame"] == {"rows": 64, "cols": 48, "crop_breast": True}
    assert ckpt["label_counts"]["used"] == len(pretraining_images(inventory)[0]) > 0
    assert len(ckpt["history"]) == 1 and ckpt["history"][0]["psnr"] > 0

    malignant_masks = len(discriminative_images(inventory)[0])
    out = server.model_dir / "tardy_test_disc.pt"
    r = requests.post(f"{server.url}/train/train_discriminative?run_sync=true",
                      json={"epochs": 1, "rows": 64, "cols": 48, "pretrained": "tardy_test_pre",
                            "checkpoint": out.name},
                      timeout=300)
    if malignant_masks == 0:  # the shared server's phantoms may have no malignant mask: a clear 400
        assert r.status_code == 400 and "labels/final" in r.json()["detail"], r.text
        assert not out.exists()
    else:
        assert r.status_code == 200, r.text
        assert Path(load_checkpoint(out)["pretrained_from"]).resolve() == pre.resolve()
    for path in server.model_dir.glob("tardy_test_*"):
        path.unlink()

    r = requests.post(f"{server.url}/train/train_discriminative?run_sync=true", json={"rows": "12x"}, timeout=60)
    assert r.status_code == 400 and "rows" in r.json()["detail"]
    r = requests.post(f"{server.url}/train/pretrain_reconstruction?run_sync=true", json={"epochs": "many"}, timeout=60)
    assert r.status_code == 400 and "epochs" in r.json()["detail"]


def test_cli_trains_both_stages_resumes_evaluates_and_infers(phantom_copy, tmp_path, capsys):
    models = tmp_path / "models"
    studies = ["--studies", str(phantom_copy)]
    assert main(["train", "pretrain_reconstruction", *studies, "--out", str(models / "pretrain_reconstruction.pt"),
                 "--epochs", "1", "--device", "cpu", *TINY]) == 0
    capsys.readouterr()
    out = models / f"{TASK}.pt"
    assert main(["train", "train_discriminative", *studies, "--out", str(out), "--epochs", "2", "--device", "cpu",
                 *TINY]) == 0
    summary = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(out)
    inventory = collect_labels(MammoDatastore(phantom_copy, read_only=True))
    used = discriminative_images(inventory)[0]
    assert ckpt["pretrained_from"] == str(models / "pretrain_reconstruction.pt")  # "auto" found stage 1
    threshold = ckpt["thresholds"]["lesion"]
    assert ckpt["subtraction"] is True and threshold in THRESHOLDS and summary["threshold"] == threshold
    labels = ckpt["label_counts"]
    assert labels["used"] == len(used) > 0 and labels["skipped"] == len(inventory.images) - len(used)
    # Two malignant patients are too few to hold one out: the training images validate, and the checkpoint says so.
    assert len({r.patient_id for r in used}) == 2 and ckpt["validated_on_training_images"] is True
    assert sorted(ckpt["validation_images"]) == sorted(ckpt["run"]["train_images"]) == sorted(r.image_id for r in used)
    assert summary["epochs_run"] == 2 and summary["dice_max"] >= summary["dice_avg_last2"]

    assert main(["train", "train_discriminative", *studies, "--out", str(out), "--epochs", "3", "--device", "cpu",
                 *TINY]) == 0  # resumes from the stage's .last.pt: one more epoch
    last_file = last_path(stage_path(out, "train_discriminative"))
    assert [h["epoch"] for h in load_checkpoint(last_file)["history"]] == [1, 2, 3]
    assert main(["train", "train_discriminative", *studies, "--out", str(out), "--epochs", "3", "--device", "cpu",
                 *TINY, "--set", "no_subtraction=true"]) == 0  # another head: not resumed, trained afresh
    last = load_checkpoint(last_file)
    assert last["subtraction"] is False and [h["epoch"] for h in last["history"]] == [1, 2, 3]
    capsys.readouterr()

    plain = tmp_path / "plain" / f"{TASK}.pt"
    assert main(["train", "train_discriminative", *studies, "--out", str(plain), "--epochs", "1", "--device", "cpu",
                 *TINY, "--set", "no_subtraction=true", "--set", "pretrained=none", "--set", "threshold=0.3"]) == 0
    ckpt = load_checkpoint(plain)
    assert ckpt["subtraction"] is False and ckpt["pretrained_from"] is None and ckpt["thresholds"]["lesion"] == 0.3
    capsys.readouterr()

    evaluate = ["evaluate", TASK, *studies, "--checkpoint", str(out), "--split", "val", "--out", str(tmp_path / "ev")]
    assert main(evaluate) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_images"] == len(load_checkpoint(out)["validation_images"]) and metrics["dice_mean"] is not None
    assert 0 <= metrics["dice_mean"] <= metrics["dice_max"] <= 1
    assert list((tmp_path / "ev").glob("best_*.png")) and list((tmp_path / "ev").glob("worst_*.png"))

    image = phantom_copy / f"{used[0].image_id}.png"
    assert main(["infer", TASK, str(image), "--checkpoint", str(plain), "--out", str(tmp_path / "inf")]) == 0
    labelmap = read_label(tmp_path / "inf" / f"{used[0].image_id}.{TASK}.nrrd")
    assert labelmap.shape == read_mammogram(image).shape and set(np.unique(labelmap)) <= {0, 1}


def test_cli_refuses_bad_training_requests_with_a_message(tmp_path, phantom_copy, capsys):
    no_malignant = tmp_path / "benign_only"
    write_phantom_study(no_malignant, n=4, seed=1, dicom=False)  # findings: benign, benign, normal, normal
    pre = tmp_path / "pre" / "pretrain_reconstruction.pt"
    save_checkpoint(pre, DiscriminativeSegmenter(UNetConfig(features=[4, 8])), stage="train_discriminative")
    cases = [
        (no_malignant, [], "needs malignant images with a mask in labels/final"),
        (phantom_copy, ["--set", "rows=50"], "multiples of 4"),
        (phantom_copy, ["--set", "pretrained=" + str(tmp_path / "missing.pt")], "pretrained checkpoint not found"),
        (phantom_copy, ["--set", "pretrained=" + str(pre)], "not a pretrain_reconstruction checkpoint"),
        (phantom_copy, ["--set", "threshold=1.5"], "threshold must lie in"),
        (phantom_copy, ["--set", "no_subtraction=maybe"], "no_subtraction"),
    ]
    for studies, extra, message in cases:
        out = tmp_path / "out" / f"{TASK}.pt"
        code = main(["train", "train_discriminative", "--studies", str(studies), "--out", str(out), "--epochs", "1",
                     "--device", "cpu", *TINY, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (extra, err)
        assert not out.exists()
