"""bf16 inference agrees with fp32 for every network task; the precision option and its detection.

Each task runs on a phantom film twice, as the server runs it (load, ``run_inferer``), once with
``precision=fp32`` and once with ``precision=bf16``, from one checkpoint whose outputs are well
conditioned, so that the comparison can fail:

* networks with batch norm get random weights whose batch-norm statistics are those of the film
  (a few forward passes in training mode), and their map heads are scaled so that their logits
  spread as a trained model's do (std 2): random heads give logits near 0, sigmoid maps flat at 0.5
  on which any threshold or patch choice is a coin toss;
* the segmentation networks (Tardy, Xiong, Liang's self-training head) are fitted for a few steps
  to the film: to reconstruct it (Tardy's first stage) or to segment its brightest tenth. A random
  deep network is a chaotic map of its input whose outputs vary less than its rounding, which no
  trained model does: a few steps of fitting shrink the bf16 error tenfold;
* labelmap thresholds sit at a quantile of the fp32 map, so that each labelmap has a foreground to
  agree on (checked), and the bf16 run must really differ from the fp32 one (checked).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammolabel.data.phantoms import write_phantom_study
from mammolabel.training import precision
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.errors import InputError
from mammolabel.io import canonicalise, read_mammogram
from mammolabel.tasks import infer_tasks
from mammolabel.transforms import LoadMammogramd
from mammolabel.transforms.geometry import make_frame

needs_bf16 = pytest.mark.skipif(not precision.cpu_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")

ROWS, COLS = 256, 224


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("precision") / "studies"
    write_phantom_study(out, n=1, seed=3, shape=(512, 416), dicom=False)
    return next(out.glob("phantom_000.*"))


def network_input(film: Path, size: tuple[int, int]) -> torch.Tensor:
    """The film as a network sees it: breast crop resized to ``size``, (1, 1, rows, cols)."""
    pixels = canonicalise(read_mammogram(str(film))).pixels
    return torch.from_numpy(make_frame(pixels, size, True).to_input(pixels))[None, None]


def calibrate(net: torch.nn.Module, *inputs: Any) -> torch.nn.Module:
    """Batch-norm statistics of ``inputs`` (three forward passes in training mode)."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(*inputs)
    return net.eval()


def fit(net: torch.nn.Module, loss: Any, steps: int = 15) -> torch.nn.Module:
    """A few Adam steps on ``loss(net)``; the network is returned in eval mode."""
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        value = loss(net)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return net.eval()


def brightest(x: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """The film's brightest tenth as a {0, 1} target map (area-resized to ``size``)."""
    target = (x > torch.quantile(x, 0.9)).float()
    return target if size is None else F.interpolate(target, size=size, mode="area")


def spread(net: torch.nn.Module, heads: list[str], call: Any, std: float = 2.0) -> torch.nn.Module:
    """Scale the 1x1 map heads ``heads`` of ``net`` so that their outputs on ``call()`` have standard deviation
    ``std`` (and mean 0 where a head has a bias)."""
    modules = dict(net.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [modules[h].register_forward_hook(lambda m, a, out, h=h: seen.setdefault(h, out)) for h in heads]
    with torch.no_grad():
        call()
        for h in heads:
            factor = std / float(seen[h].std())
            modules[h].weight.mul_(factor)
            if modules[h].bias is not None:
                modules[h].bias.sub_(float(seen[h].mean())).mul_(factor)
    for hook in hooks:
        hook.remove()
    return net


def classification(film: Path, path: Path) -> dict[str, Any]:
    from mammolabel.methods.dahl.options import DahlOptions
    from mammolabel.methods.dahl.network import DahlClassifier

    config = DahlOptions(depth=18, width=16, input_rows=ROWS, input_cols=COLS, roi_size=128).network(attention=True)
    net = DahlClassifier(**config)
    x = network_input(film, (ROWS, COLS))
    calibrate(net.holistic, x)
    calibrate(net.attention, x[..., :128, :128])
    save_checkpoint(path, net, config=config, target="malignant", stage="attention", val_images=[])
    return {"exam": False}  # labelmap levels are quantiles of the saliency inside the breast


def localization(film: Path, path: Path) -> dict[str, Any]:
    from mammolabel.methods.liang.network import LiangNet
    from mammolabel.methods.liang.options import LiangOptions
    from mammolabel.training.checkpoint import method_fields

    options = LiangOptions(size=ROWS, width=0.25, head_channels=64, first_channels=32, shared_channels=32)
    x = network_input(film, (ROWS, ROWS))

    def loss(net: LiangNet) -> torch.Tensor:
        out = net(x)
        return sum(F.binary_cross_entropy(m, brightest(x, m.shape[-2:])) for m in out.self_training)

    net = fit(calibrate(LiangNet(options.network_config()), x), loss)
    save_checkpoint(path, net, **method_fields("liang", net.config.to_dict(), options.frame(), options.to_dict(),
                                               "self_training_block3", {}, [], {}))
    return {}  # labelmap levels 0.3, 0.5, 0.7 of the min-max normalised fused map


def glam_segmentation(film: Path, path: Path) -> dict[str, Any]:
    from mammolabel.methods.glam.network import CLASSES, GlamNet
    from mammolabel.methods.glam.options import GlamOptions
    from mammolabel.training.checkpoint import method_fields

    options = GlamOptions.parse({"rows": ROWS, "cols": 192, "patch_size": 64, "num_patches": 2, "global_width": 8,
                                 "local_width": 8, "local_depth": 18})
    x = network_input(film, (ROWS, 192))
    net = calibrate(GlamNet(options.network_config()), x, "joint")
    spread(net, [f"global_module.heads.{i}" for i in range(3)], lambda: net(x, "global"))
    spread(net, ["local_module.head"], lambda: net(x, "joint"))
    thresholds = {m: {c: {"threshold": 0.5, "dice": None, "n": 0} for c in CLASSES} for m in ("global", "local", "fused")}
    save_checkpoint(path, net, **method_fields("glam", asdict(net.config), options.frame(), options.to_dict(), "joint",
                                               thresholds, [], {}))
    return {"threshold": ("threshold_benign", "threshold_malignant")}


def discriminative_segmentation(film: Path, path: Path) -> dict[str, Any]:
    from mammolabel.methods.tardy.network import DiscriminativeSegmenter, UNetConfig

    x = network_input(film, (ROWS, COLS))
    net = fit(DiscriminativeSegmenter(UNetConfig(features=[8, 16, 32, 64])), lambda net: F.mse_loss(net.backbone(x), x))
    save_checkpoint(path, net, stage="train_discriminative", network=net.config.to_dict(), subtraction=True,
                    size=[ROWS, COLS], crop_breast=True, threshold=0.5, val_images=[])
    return {"threshold": ("threshold",)}


def hybrid_segmentation(film: Path, path: Path) -> dict[str, Any]:
    from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet

    config = HybridConfig(depth=18, width=16)
    x = network_input(film, (ROWS, COLS))

    def loss(net: XiongHybridNet) -> torch.Tensor:
        out = net(x)
        return (F.binary_cross_entropy_with_logits(out.segmentation, brightest(x))
                + F.binary_cross_entropy_with_logits(out.background, 1 - brightest(x)))

    net = fit(calibrate(XiongHybridNet(config), x), loss)
    save_checkpoint(path, net, network=asdict(config), frame={"rows": ROWS, "cols": COLS, "crop_breast": True},
                    thresholds={"lesion": 0.5})
    return {"threshold": ("threshold",), "uncertain_area": False}


CHECKPOINTS = {f.__name__: f for f in (classification, localization, glam_segmentation, discriminative_segmentation,
                                        hybrid_segmentation)}


def test_every_network_task_is_compared():
    assert set(CHECKPOINTS) == {name for name, cls in infer_tasks().items() if cls.train_task}


def run(task, film: Path, request: dict[str, Any]):
    data = LoadMammogramd(keys="image")({"image": str(film), **request})
    task.run_inferer(data)
    return data["prediction"], data["precision"]


def probabilities(values: dict[str, Any], inside: bool = False) -> dict[str, float]:
    """Every probability of a task's JSON values, flattened (``a.b`` for nested ones)."""
    found = {}
    for key, value in values.items():
        named = inside or "probabilit" in key
        if isinstance(value, dict):
            found.update({f"{key}.{k}": v for k, v in probabilities(value, named).items()})
        elif named and isinstance(value, float):
            found[key] = value
    return found


@needs_bf16
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_bf16_agrees_with_fp32(name, film, tmp_path):
    torch.manual_seed(0)
    setup = CHECKPOINTS[name](film, tmp_path / f"{name}.pt")
    task = infer_tasks()[name](path=str(tmp_path / f"{name}.pt"))
    request = {k: v for k, v in setup.items() if k != "threshold"}
    reference, _ = run(task, film, {**request, "precision": "fp32"})
    if "threshold" in setup:  # the fp32 map's 80th percentile inside its support: a fifth of it is foreground
        heat = reference.heatmap[reference.heatmap > 0]
        request.update({key: float(np.quantile(heat, 0.8)) for key in setup["threshold"]})
    fp32, ran_fp32 = run(task, film, {**request, "precision": "fp32"})
    bf16, ran_bf16 = run(task, film, {**request, "precision": "bf16"})
    assert (ran_fp32, ran_bf16) == ("fp32", "bf16")

    foreground = float((fp32.labelmap > 0).mean())
    assert 0.02 < foreground < 0.98, f"{name}: the fp32 labelmap is degenerate ({foreground:.3f} foreground)"
    agreement = float((fp32.labelmap == bf16.labelmap).mean())
    assert agreement >= 0.99, f"{name}: labelmap agreement {agreement:.4f}"
    p32, p16 = probabilities(fp32.values), probabilities(bf16.values)
    assert p32.keys() == p16.keys()
    assert p32 != p16 or not np.array_equal(fp32.heatmap, bf16.heatmap), f"{name}: bf16 gave fp32's bits; did it run?"
    worst = max((abs(p32[k] - p16[k]) for k in p32), default=0.0)
    assert worst <= 0.02, f"{name}: probabilities differ by up to {worst:.4f} ({p32} vs {p16})"
    # the heatmap is the task's probability map: 99% of its pixels within 0.02
    assert np.quantile(np.abs(fp32.heatmap - bf16.heatmap), 0.99) <= 0.02


def test_auto_follows_the_cpu_and_fp32_can_be_forced(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.resolve(None) == ("bf16" if precision.cpu_bf16() else "fp32")
    assert precision.resolve("fp32") == "fp32" and precision.resolve("BF16") == "bf16"
    monkeypatch.setenv(precision.ENV, "fp32")
    assert precision.resolve(None) == "fp32" and precision.resolve("auto") == ("bf16" if precision.cpu_bf16() else "fp32")
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": False)
    assert precision.resolve("auto") == "fp32"
    with pytest.raises(InputError, match="precision must be one of"):
        precision.resolve("fp16")


def test_cpu_bf16_reads_the_flags_torch_or_cpuinfo_report():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if flags:
        assert precision.cpu_bf16() == any(f in flags.split() for f in precision.BF16_FLAGS)


def test_the_served_network_is_channels_last(film, tmp_path):
    localization(film, tmp_path / "localization.pt")
    task = infer_tasks()["localization"](path=str(tmp_path / "localization.pt"))
    net, _ = task.load()
    seen = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1)
    conv.register_forward_hook(lambda module, args, out: seen.append(out))
    _, ran = run(task, film, {"precision": "fp32"})
    assert ran == "fp32" and seen and seen[0].shape[1] > 1
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
