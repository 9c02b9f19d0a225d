"""``mammolabel benchmark``'s forward figures: the served network, on the input a click gives it, in each variant."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mammolabel.data.phantoms import write_phantom_study
from mammolabel.errors import InputError
from mammolabel.evaluation import benchmark
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.tasks import infer_tasks
from mammolabel.training.checkpoint import save_checkpoint
from mammolabel.zoo import shipped_path


class Queue(list):
    put = list.append


def test_forward_figures_of_the_served_network(tmp_path, monkeypatch):
    write_phantom_study(tmp_path / "studies", n=1, shape=(256, 208), dicom=False)
    film = str(next((tmp_path / "studies").glob("phantom_000.*")))
    config = HybridConfig(depth=18, width=4)

    def tiny(cls, model_dir, preset) -> None:
        save_checkpoint(Path(model_dir) / f"{cls.name}.pt", XiongHybridNet(config), network=asdict(config),
                        frame={"rows": 64, "cols": 96, "crop_breast": False}, thresholds={"lesion": 0.5})

    monkeypatch.setattr(benchmark, "write_checkpoint", tiny)
    queue = Queue()
    benchmark._forward("hybrid_segmentation", film, 1, torch.get_num_threads(), "cpu", queue)  # in this process
    (figures,) = queue
    assert figures["input_shapes"] == [[1, 1, 64, 96]]  # what the task fed its network, not a fixed size
    assert figures["flops"] == benchmark.flops(XiongHybridNet(config), (1, 1, 64, 96)) > 0
    for name, *_ in benchmark.VARIANTS:
        entry = figures[name]
        assert entry["latency_s"] > 0 and entry["load_1m"] >= 0
        assert entry["gflops_per_s"] == pytest.approx(figures["flops"] / entry["latency_s"] / 1e9, abs=0.1)
    assert figures["speedup"]["fp32"] == 1.0 and figures["peak_rss_mb"] > 0


@pytest.mark.parametrize("preset,kind", [("cpu", "demo"), ("mias", "mias")])
def test_presets_serve_the_shipped_checkpoints(tmp_path, preset, kind):
    task_cls = infer_tasks()["classification"]
    benchmark.write_checkpoint(task_cls, tmp_path, preset)
    served = (tmp_path / "classification.pt").read_bytes()
    assert served == shipped_path("classification", kind).read_bytes()


def test_an_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="presets: cpu, mias, paper"):
        benchmark.write_checkpoint(infer_tasks()["classification"], tmp_path, "gpu")
