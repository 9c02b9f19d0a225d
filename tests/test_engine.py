"""The shared training loop, checkpoints and option handling."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from mammolabel.training import FitOptions, fit, load_checkpoint, save_checkpoint
from mammolabel.training.loop import last_path, stats_path
from mammolabel.errors import InputError, NotFoundError
from mammolabel.training.options import coerce


def tiny_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, :1] - x[:, 1:2] > 0).float()
    torch.manual_seed(seed)
    return nn.Linear(4, 1), x, y


def run_fit(out, epochs: int, resume: bool = True):
    model, x, y = tiny_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.BCEWithLogitsLoss()

    def validate(m):
        return {"acc": ((m(x) > 0).float() == y).float().mean().item(), "val_loss": loss_fn(m(x), y).item()}

    result = fit(model, opt, lambda epoch: [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)], 4,
                 lambda m, b: loss_fn(m(b[0]), b[1]), validate, "acc", out,
                 FitOptions(epochs=epochs, resume=resume, log_every_s=0), meta={"network": {"in": 4}})
    return model, result


def test_fit_reduces_loss_keeps_best_and_writes_stats(tmp_path):
    out = tmp_path / "m.pt"
    _, result = run_fit(out, epochs=5)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_metric == max(h["acc"] for h in result.history)
    ckpt = load_checkpoint(out)
    assert ckpt["network"] == {"in": 4} and ckpt["best_epoch"] + 1 == result.best_epoch
    assert last_path(out).exists() and "optimizer" in load_checkpoint(last_path(out))
    assert stats_path(out).exists()


def test_fit_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    run_fit(out, epochs=2)
    _, resumed = run_fit(out, epochs=4)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    _, fresh = run_fit(tmp_path / "n.pt", epochs=4)
    assert resumed.history[-1]["loss"] == pytest.approx(fresh.history[-1]["loss"], rel=1e-4)


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(InputError, match="refused"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(NotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, nn.Linear(2, 1), note="first")

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, nn.Linear(2, 1), note="second")
    assert load_checkpoint(path)["note"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


@pytest.mark.parametrize(
    "value, default, expected",
    [("3", 1, 3), ("0.5", 0.1, 0.5), ("true", False, True), ("no", True, False), (2, 1.0, 2.0), ("x", "y", "x")],
)
def test_options_from_strings(value, default, expected):
    assert coerce("k", value, default) == expected


@pytest.mark.parametrize("value, default", [("ten", 1), ("maybe", True), ("1e", 0.1)])
def test_bad_option_values_are_clear_errors(value, default):
    with pytest.raises(InputError, match="option 'k'"):
        coerce("k", value, default)


def test_atomic_writes_get_the_usual_permissions_and_keep_an_existing_files(tmp_path):
    from mammolabel.io import write_bytes_atomic

    umask = os.umask(0)
    os.umask(umask)
    write_bytes_atomic(tmp_path / "new.json", b"{}")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (tmp_path / "shared.json").write_bytes(b"")
    os.chmod(tmp_path / "shared.json", 0o640)
    write_bytes_atomic(tmp_path / "shared.json", b"{}")
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("requested,expected", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_runs_under_the_requested_precision(tmp_path, requested, expected):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 2, 8, 8), torch.rand(8, 1)
    seen = []

    def step(m, batch):
        out = m[0](batch[0])
        seen.append((out.dtype, m[0].weight.is_contiguous(memory_format=torch.channels_last)))
        return nn.functional.binary_cross_entropy_with_logits(m[2](m[1](out)).float(), batch[1])

    fit(model, opt, lambda epoch: [(x, y)], 1, step, lambda m: {"m": 0.0}, "m", tmp_path / "p.pt",
        FitOptions(epochs=1, precision=requested, log_every_s=0))
    assert seen == [(expected, requested == "bf16")]  # channels_last comes with bf16 on a CPU
    assert load_checkpoint(tmp_path / "p.pt")["model"]["0.weight"].dtype == torch.float32  # weights stay fp32


def test_an_unknown_training_precision_is_refused():
    from mammolabel.training.options import TrainOptions

    with pytest.raises(InputError, match="precision must be one of auto, bf16, fp32"):
        TrainOptions.parse({"precision": "fp8"}, "train_x")


def test_select_start_keeps_the_starting_weights_when_no_epoch_validates_better(tmp_path):
    model, x, y = tiny_problem()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def validate(m):  # every later validation is worse than the first
        calls.append(1)
        return {"m": -float(len(calls))}

    result = fit(model, torch.optim.SGD(model.parameters(), lr=0.5), lambda epoch: [(x, y)], 1,
                 lambda m, b: nn.functional.binary_cross_entropy_with_logits(m(b[0]), b[1]), validate, "m",
                 tmp_path / "s.pt", FitOptions(epochs=3, select_start=True, log_every_s=0))
    assert result.best_epoch == 0 and [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    best = load_checkpoint(tmp_path / "s.pt")["model"]
    assert all(torch.equal(best[k], start[k]) for k in start)
    assert not torch.equal(model.state_dict()["weight"], start["weight"])  # it did train
