"""The house rules: layers, file sizes, one options parser, one resume and seeding rule, one checkpoint schema."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mammolabel.errors import InputError
from mammolabel.methods import methods
from mammolabel.training.checkpoint import SCHEMA_VERSION, load_checkpoint, save_checkpoint, upgrade
from mammolabel.training.options import TrainOptions
from mammolabel.training.stages import last_path, prepare_resume, run_identity, seed_for, stage_path
from mammolabel.zoo import MODELS_DIR

LIB = Path(__file__).resolve().parents[1] / "lib" / "mammolabel"
#: Layers that run without MONAI Label's tasks: they may not import the adapters or what is built on them.
BELOW_TASKS = ("io", "data", "transforms", "metrics", "networks", "training", "methods")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_layer_below_the_tasks_imports_a_task_or_the_evaluation():
    offenders = []
    for layer in BELOW_TASKS:
        for path in (LIB / layer).rglob("*.py"):
            bad = [m for m in imported_modules(path)
                   if m.startswith(("mammolabel.tasks", "mammolabel.evaluation", "mammolabel.cli"))]
            offenders += [f"{path.relative_to(LIB)} imports {m}" for m in bad]
    assert not offenders, offenders


def test_the_library_never_imports_an_app_and_no_file_is_over_400_lines():
    for path in LIB.rglob("*.py"):
        assert not any(m == "lib" or m.startswith(("lib.", "main")) for m in imported_modules(path)), path
        assert len(path.read_text().splitlines()) <= 400, f"{path.relative_to(LIB)} is over 400 lines"


@dataclass
class _Options(TrainOptions):
    lr: float = 1e-3
    rows: int = 64
    flips: bool = True

    def problems(self) -> list[str]:
        return ["lr must be positive"] if self.lr <= 0 else []


def test_one_parser_converts_strings_ignores_other_keys_and_refuses_every_problem_at_once():
    options = _Options.parse({"lr": "0.01", "rows": "32", "flips": "off", "epochs": "3", "preset": "cpu"})
    assert (options.lr, options.rows, options.flips, options.epochs) == (0.01, 32, False, 3)
    with pytest.raises(InputError) as e:
        _Options.parse({"lr": "-1", "epochs": 0}, "train_x")
    assert str(e.value) == "train_x: epochs must be at least 1; lr must be positive"
    with pytest.raises(InputError, match="option 'rows': cannot use 'big' as int"):
        _Options.parse({"rows": "big"})


def _saved_run(tmp_path: Path, identity: dict) -> Path:
    best = stage_path(tmp_path / "task.pt", "first")
    save_checkpoint(last_path(best), torch.nn.Linear(2, 1), run=identity)
    return best


def test_the_resume_rule_keeps_a_run_with_more_epochs_and_restarts_one_with_other_options(tmp_path):
    options = {"lr": 0.1, "epochs": 5, "device": "cpu"}
    identity = run_identity("m", "first", {"width": 8}, {"rows": 64}, options, ["a", "b"], ["c"])
    best = _saved_run(tmp_path, identity)
    assert best.name == "task.first.pt"
    longer = run_identity("m", "first", {"width": 8}, {"rows": 64}, {**options, "epochs": 9}, ["b", "a"], ["c"])
    assert prepare_resume(best, longer, resume=True) and last_path(best).exists()
    other = run_identity("m", "first", {"width": 8}, {"rows": 64}, {**options, "lr": 0.2}, ["a", "b"], ["c"])
    assert not prepare_resume(best, other, resume=True) and not last_path(best).exists()
    _saved_run(tmp_path, identity)
    assert not prepare_resume(best, identity, resume=False) and not last_path(best).exists()


def test_the_run_identity_follows_the_starting_weights(tmp_path):
    start = tmp_path / "previous.pt"
    start.write_bytes(b"one")
    first = run_identity("m", "s", {}, None, {}, [], [], started_from=start)
    start.write_bytes(b"two")
    assert run_identity("m", "s", {}, None, {}, [], [], started_from=start) != first


def test_one_seeding_rule():
    assert seed_for(0, "order", 3) == seed_for(0, "order", 3)
    assert len({seed_for(0, "order", 3), seed_for(0, "order", 4), seed_for(1, "order", 3), seed_for(0, "split")}) == 4


def test_older_checkpoints_are_upgraded_and_foreign_or_newer_ones_refused(tmp_path):
    old = {"model": {}, "schema_version": 2, "train_task": "train_hybrid", "config": {"width": 8},
           "input": {"rows": 64, "cols": 32, "crop_breast": True}, "val_images": ["a"], "threshold": 0.4,
           "label_report": {"used": 3}}
    new = upgrade(old, "x.pt", "xiong")
    assert new["schema_version"] == SCHEMA_VERSION and new["method"] == "xiong" and new["upgraded_from"] == 2
    assert new["network"] == {"width": 8} and new["frame"]["cols"] == 32 and new["validation_images"] == ["a"]
    assert new["thresholds"] == {"lesion": 0.4} and new["label_counts"] == {"used": 3}
    tardy = upgrade({"model": {}, "train_task": "train_discriminative", "size": [256, 160], "crop_breast": False})
    assert tardy["frame"] == {"rows": 256, "cols": 160, "crop_breast": False} and tardy["method"] == "tardy"
    with pytest.raises(InputError, match="not 'dahl'; retrain it"):
        upgrade(old, "x.pt", "dahl")
    with pytest.raises(InputError, match="newer MammoLabel"):
        upgrade({"model": {}, "schema_version": SCHEMA_VERSION + 1}, "x.pt")


def test_every_method_implements_the_contract_and_reads_its_shipped_checkpoints():
    assert set(methods()) == {"classification", "discriminative_segmentation", "glam_segmentation",
                              "hybrid_segmentation", "localization"}
    for task, method in methods().items():
        assert method.name and method.labels and method.trainers, task
        for trainer in method.trainers:
            defaults = trainer.options()
            assert isinstance(defaults, TrainOptions) and set(trainer.cpu_preset) <= set(defaults.to_dict()), trainer.name
        for kind in ("demo", "mias"):
            ckpt = load_checkpoint(MODELS_DIR / f"{task}.{kind}.pt", method.name)
            network = method.build_network(ckpt)
            network.load_state_dict(ckpt["model"])
