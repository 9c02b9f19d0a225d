"""Distributed training for real on CPU: torchrun with 2 gloo processes trains ``train_hybrid`` on phantoms.

The run (the session fixture ``ddp_hybrid``) also checks MLflow tracking: its run is read back here.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from mammolabel.cli import main
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.training.checkpoint import load_checkpoint
from mammolabel.training.distributed import _share, _ShardedBatches, processes_for, weights_digest
from mammolabel.evaluation.evaluate import run_task
from mammolabel.training.loop import last_path, stats_path
from mammolabel.errors import InputError
from mammolabel.methods.xiong.network import HybridConfig, XiongHybridNet
from mammolabel.tasks import infer_tasks, train_tasks


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_takes_as_many_batches_and_together_all(world):
    for n in range(8):
        shares = [list(_share(range(n), r, world)) for r in range(world)]
        assert all(len(s) == math.ceil(n / world) for s in shares), (n, shares)
        assert set().union(*shares) == set(range(n))
        if n % world == 0:
            assert sum(len(s) for s in shares) == n  # no batch twice when the epoch divides evenly


def test_a_dataloader_is_sharded_on_its_batches_of_indices():
    batches = BatchSampler(SequentialSampler(range(10)), batch_size=3, drop_last=False)  # [0-2] [3-5] [6-8] [9]
    assert list(_ShardedBatches(batches, 0, 2)) == [[0, 1, 2], [6, 7, 8]]
    assert list(_ShardedBatches(batches, 1, 2)) == [[3, 4, 5], [9]]
    assert len(_ShardedBatches(batches, 1, 2)) == 2


def test_monai_label_multi_gpu_options_give_the_processes():
    assert processes_for(False, "all", "cpu") == (1, None)
    assert processes_for(True, "0,1", "cpu") == (2, None)  # no GPU: one gloo process per listed id
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="gpus"):
            processes_for(True, "all", "auto")


def test_several_nodes_need_a_rendezvous_endpoint(phantom_dir, tmp_path, capsys):
    code = main(["train", "train_hybrid", "--studies", str(phantom_dir), "--out", str(tmp_path / "m.pt"),
                 "--nproc-per-node", "2", "--nnodes", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--rdzv-endpoint" in err[0]


def test_two_processes_train_alike_and_the_checkpoint_serves(ddp_hybrid, tmp_path):
    out, summary = ddp_hybrid["out"], ddp_hybrid["summary"]
    assert summary["checkpoint"] == str(out) and summary["epochs_run"] == 10
    stats = json.loads(stats_path(out).read_text())
    losses = [h["loss"] for h in stats["history"]]
    assert min(losses[-3:]) < losses[0], losses
    parallel = stats["distributed"]
    assert parallel["world_size"] == 2 and parallel["backend"] == "gloo"
    # Both ranks' weights after the last step, and the weights rank 0 wrote.
    digests = parallel["weights_sha256"]
    last = load_checkpoint(last_path(out))
    net = XiongHybridNet(HybridConfig(**last["network"]))
    net.load_state_dict(last["model"])
    assert len(digests) == 2 and digests[0] == digests[1] == weights_digest(net)
    assert ddp_hybrid["stderr"].count("train_hybrid epoch 10/10:") == 1  # rank 0 alone logs

    # The same checkpoint schema as a single process writes.
    single = train_tasks()["train_hybrid"](tmp_path)
    options = single.options({**ddp_hybrid["options"], "device": "cpu", "epochs": 1, "steps_per_epoch": 1})
    single.train(collect_labels(MammoDatastore(ddp_hybrid["studies"], read_only=True)), options, single.path)
    alone, ddp = load_checkpoint(single.path), load_checkpoint(out)
    assert set(alone) == set(ddp)
    assert {k: v.shape for k, v in alone["model"].items()} == {k: v.shape for k, v in ddp["model"].items()}

    image = next(iter(sorted((ddp_hybrid["studies"]).glob("*.png"))))
    labelmap, result = run_task(infer_tasks()["hybrid_segmentation"](path=str(out)), str(image))
    assert labelmap.shape == tuple(result["image_shape"]) and 0 <= result["lesion_probability"] <= 1


def test_the_mlflow_run_reads_back(ddp_hybrid):
    from mlflow.tracking import MlflowClient

    model_dir = ddp_hybrid["out"].parent
    client = MlflowClient(tracking_uri=f"sqlite:///{model_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train_hybrid")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["epochs"] == "10" and params["rows"] == "64" and params["world_size"] == "2"
    assert params["labels.finding"] == "24" and int(params["labels.mask"]) > 0
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 11))
    assert {"dice", "uncertain_recall"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"hybrid_segmentation.pt", "hybrid_segmentation.stats.json", "summary.json"} <= artifacts
    stored = load_checkpoint(os.path.join(experiment.artifact_location.removeprefix("file://"), run.info.run_id,
                                          "artifacts", "hybrid_segmentation.pt"))
    best = load_checkpoint(ddp_hybrid["out"])
    assert all(torch.equal(stored["model"][k], v) for k, v in best["model"].items())
