"""Presets, fine-tuning starts, checkpoint stamps and the shipped-checkpoint choice (no server)."""

from __future__ import annotations

import json

import pytest
import torch

from mammolabel.training.checkpoint import load_checkpoint, save_checkpoint
from mammolabel.training.loop import load_matching
from mammolabel.errors import InputError
from mammolabel.evaluation.intervals import bootstrap, interval_summary
from mammolabel.evaluation.model_card import recipe_report
from mammolabel.evaluation.train_zoo import RUN_OPTIONS
from mammolabel.tasks import infer_tasks, train_tasks
from mammolabel.tasks.train import PRESETS
from mammolabel.zoo import MODELS_DIR, checkpoint_paths, choose_kind, data_kind, describe

NETWORK_TASKS = ("classification", "discriminative_segmentation", "glam_segmentation", "hybrid_segmentation",
                 "localization")


@pytest.mark.parametrize("name", sorted(train_tasks()))
def test_every_train_task_has_a_cpu_preset_that_fills_the_options_a_request_leaves_out(name, tmp_path):
    task = train_tasks()[name](model_dir=tmp_path)
    cpu = task.presets()["cpu"]
    assert cpu and set(cpu) <= set(task.config()), "the cpu preset names only known options"
    opts = task.options({"preset": "cpu"})
    assert opts["preset"] == "cpu" and all(opts[k] == v for k, v in cpu.items())
    paper = task.options({"preset": "paper"})
    assert all(paper[k] == task.config()[k] for k in cpu), "paper = the task's defaults (the paper's setting)"
    assert any(paper[k] != cpu[k] for k in cpu)
    key = next(iter(cpu))
    explicit = task.options({"preset": "cpu", key: str(paper[key])})
    assert explicit[key] == paper[key], "a value the request gives wins over the preset"
    assert task.info()["presets"] == task.presets() and task.info()["auto_preset"] in PRESETS


def test_auto_preset_is_cpu_without_a_gpu_and_unknown_presets_are_refused(tmp_path):
    task = train_tasks()["train_hybrid"](model_dir=tmp_path)
    if not torch.cuda.is_available():
        assert task.options({})["preset"] == "cpu" and task.options({})["rows"] == task.presets()["cpu"]["rows"]
    with pytest.raises(InputError, match="unknown preset"):
        task.options({"preset": "gpu"})
    with pytest.raises(InputError, match="init"):
        task.initial_weights("somewhere/else.pt", tmp_path / "x.pt")


def test_load_matching_copies_only_a_network_that_fits_and_keeps_frozen_modules(tmp_path):
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    save_checkpoint(tmp_path / "a.pt", source)
    target = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    frozen = target[0].weight.detach().clone()
    target[0].requires_grad_(False)
    assert load_matching(target, tmp_path / "a.pt") == 5 + 2  # BN weight, bias, mean, var, count; conv 2 w, b
    assert torch.equal(target[0].weight, frozen), "a frozen module keeps its weights"
    assert torch.equal(target[2].weight, source[2].weight) and torch.equal(target[1].running_var, source[1].running_var)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert load_matching(other, tmp_path / "a.pt") == 0, "another width: nothing is copied"
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_the_shipped_kind_follows_the_data_and_the_site_checkpoint_wins(tmp_path):
    (tmp_path / "ph").mkdir()
    (tmp_path / "ph" / "phantoms.json").write_text("{}")
    assert data_kind(tmp_path / "ph") == "demo" and data_kind(tmp_path) == "mias"
    assert data_kind("http://127.0.0.1:8042/dicom-web") == "mias"
    assert choose_kind("auto", tmp_path / "ph") == "demo" and choose_kind("MIAS", tmp_path / "ph") == "mias"
    with pytest.raises(InputError, match="checkpoints must be"):
        choose_kind("latest", tmp_path)
    paths = checkpoint_paths("hybrid_segmentation", tmp_path / "model", {"checkpoints": "demo"})
    assert paths[0] == str(MODELS_DIR / "hybrid_segmentation.demo.pt")
    assert paths[1].endswith("model/hybrid_segmentation.pt")
    task = infer_tasks()["hybrid_segmentation"](path=paths)
    assert task.checkpoint() == paths[0] and task.checkpoint_info()["source"] == "shipped demo"
    (tmp_path / "model").mkdir()
    ckpt = load_checkpoint(paths[0])
    save_checkpoint(paths[1], ckpt.pop("model"), **{**ckpt, "preset": "paper", "created": "2026-01-02T00:00:00+00:00"})
    assert task.checkpoint() == paths[1]
    assert task.checkpoint_info() == {**describe(paths[1], load_checkpoint(paths[1])), "source": "site-trained"}
    assert task.checkpoint_info()["preset"] == "paper" and task.checkpoint_info()["created"].startswith("2026-01-02")
    assert checkpoint_paths("hybrid_segmentation", tmp_path, {"checkpoints": "none"})[0] == ""


@pytest.mark.parametrize("task", NETWORK_TASKS)
@pytest.mark.parametrize("kind", ("demo", "mias"))
def test_every_shipped_checkpoint_is_small_stamped_and_carded(task, kind):
    path = MODELS_DIR / f"{task}.{kind}.pt"
    assert path.is_file() and path.stat().st_size <= 10_000_000
    ckpt = load_checkpoint(path)
    # demo checkpoints date from schema 2 (upgraded on load); the mias ones are retrained with their recipes
    assert ckpt.get("upgraded_from") == (2 if kind == "demo" else None)
    assert ckpt["preset"] == "cpu" and ckpt["created"] and ckpt["trained_on"]["labels"]
    assert "optimizer" not in ckpt
    card = (MODELS_DIR / f"{task}.md").read_text()
    assert f"{task}.{kind}.pt" in card and "Not for clinical decisions" in card and "95%" in card


@pytest.mark.parametrize("task", NETWORK_TASKS)
def test_each_mias_checkpoint_is_trained_with_the_recipe_its_card_cross_validates(task):
    record = json.loads((MODELS_DIR / f"{task}.mias.json").read_text())
    report = recipe_report(task)
    assert record["train_tasks"] == report["train_tasks"]
    recipe = report["options"][report["train_tasks"][-1]]
    differs = {k: (record["options"].get(k), v) for k, v in recipe.items()
               if k not in RUN_OPTIONS and record["options"].get(k) != v}
    assert not differs
    card = (MODELS_DIR / f"{task}.md").read_text()
    pooled = report["out_of_fold"]
    assert "Cross-validated figures of the `mias` recipe" in card and report["command"] in card
    first = next(name for name in ("auc_normal_vs_abnormal", "dice_mean") if name in pooled)
    assert f"{pooled[first]['value']:.3f}" in card


def test_bootstrap_intervals_resample_patients_and_contain_the_estimate():
    rows = [{"image_id": f"i{i}", "hit": i % 3 != 0} for i in range(30)]
    patients = [f"p{i // 2}" for i in range(30)]
    low, high = bootstrap(rows, patients, lambda r: sum(x["hit"] for x in r) / len(r))
    assert low < 20 / 30 < high and high - low < 0.5

    class Inventory:
        images = []

    summary = interval_summary(rows, Inventory(), "hit")
    assert summary["hit_rate"]["value"] == round(20 / 30, 3) and summary["films"] == 30


@pytest.mark.parametrize("task", NETWORK_TASKS)
def test_float16_storage_leaves_the_results_unchanged(task, tmp_path, phantom_dir, monkeypatch):
    """Weights stored as float16 differ from the trained float32 ones by at most half a float16 step: the same
    perturbation applied afresh must leave the labelmap (>= 99 % of pixels) and the probabilities (0.02) as they are.
    Inference runs in float32 here, so that only the stored weights differ (bf16 is tests/test_precision.py's)."""
    from mammolabel.evaluation.evaluate import run_task

    monkeypatch.setenv("MAMMOLABEL_PRECISION", "fp32")

    shipped = [MODELS_DIR / f"{task}.{kind}.pt" for kind in ("demo", "mias")]
    shipped = [p for p in shipped if load_checkpoint(p).get("storage") == "float16"]
    if not shipped:
        pytest.skip(f"{task}: its shipped checkpoints are stored as float32")
    ckpt = load_checkpoint(shipped[0])
    generator = torch.Generator().manual_seed(0)
    noisy = {k: v.float() * (1 + (torch.rand(v.shape, generator=generator) - 0.5) * 2.0 ** -10)
             if v.is_floating_point() else v for k, v in ckpt.pop("model").items()}
    save_checkpoint(tmp_path / f"{task}.pt", noisy, **ckpt)
    for image in ("phantom_000.png", "phantom_003.png"):
        labelmaps, results = zip(*(run_task(infer_tasks()[task](path=str(p)), str(phantom_dir / image))
                                   for p in (shipped[0], tmp_path / f"{task}.pt")))
        assert (labelmaps[0] == labelmaps[1]).mean() >= 0.99
        stored, perturbed = probabilities(results[0]), probabilities(results[1])
        assert stored and stored.keys() == perturbed.keys()
        # The answer within 0.02; GLAM's per-module probabilities (diagnostics) within 0.05: its global
        # module's moves by up to 0.03 under this perturbation.
        assert all(abs(stored[k] - perturbed[k]) <= (0.05 if k.startswith("module_") else 0.02) for k in stored), (
            {k: round(stored[k] - perturbed[k], 4) for k in stored})


def probabilities(result: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON result under a key that names a probability (nested dicts included)."""
    found = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(probabilities(value, f"{name}."))
        elif isinstance(value, float) and "probabilit" in name:
            found[name] = value
    return found
