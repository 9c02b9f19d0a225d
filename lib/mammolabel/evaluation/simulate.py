"""``mammolabel simulate-al``: a simulated annotation loop comparing active-learning strategies.

The studies' lesion masks play the annotator. The images with a mask are split by patient into a
pool and a held-out validation set. For each strategy, every pool image starts with its weak labels
(finding, and a box: the mask's boxes where the studies have none) and ``initial`` of them with
their mask (the same seeded start for every strategy); each round trains the task
from scratch, measures held-out Dice, lets the strategy pick ``per_round`` images (after the
``uncertainty`` scoring when needed) and reveals their true masks. The loop is repeated for each
seed (its own split and start). The result is the held-out metric against the number of masks, per
seed and averaged over the seeds, as JSON and as a plot.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.labels import TAG_BOX, TAG_MASK, box_mask
from mammolabel.data.split import split_by_patient
from mammolabel.evaluation.evaluate import evaluate
from mammolabel.errors import InputError
from mammolabel.io import atomic_path, write_labelmap
from mammolabel.tasks import infer_tasks, lookup, train_tasks
from mammolabel.tasks.activelearning import (
    RandomStrategy,
    UncertaintyScoring,
    UncertaintyStrategy,
    WeakFirstStrategy,
)

logger = logging.getLogger("mammolabel")

STRATEGIES = {"uncertainty": UncertaintyStrategy, "random": RandomStrategy, "weak_first": WeakFirstStrategy}


def _pool_datastore(source: Path, dest: Path, keep: set[str], keep_masks: set[str]) -> MammoDatastore:
    """Copy of ``source`` with only the images in ``keep``; a mask outside ``keep_masks`` becomes its box."""
    shutil.copytree(source, dest)
    store = MammoDatastore(dest)
    with tempfile.TemporaryDirectory() as tmp:
        for rec in collect_labels(store).images:
            if rec.image_id not in keep:
                store.remove_image(rec.image_id)
            elif rec.mask_path and rec.image_id not in keep_masks:
                if not rec.box_path:
                    boxes = box_mask(rec.boxes, store.image_shape(rec.image_id))
                    store.save_label(rec.image_id, str(write_labelmap(Path(tmp) / "box.nrrd", boxes)), TAG_BOX, {})
                store.remove_label(rec.image_id, TAG_MASK)
    return store


def simulate_active_learning(
    studies: str | Path,
    out_dir: str | Path,
    train_task: str = "train_hybrid",
    infer_task: str = "hybrid_segmentation",
    strategies: tuple[str, ...] = ("uncertainty", "random"),
    initial: int = 4,
    rounds: int = 4,
    per_round: int = 4,
    val_fraction: float = 0.3,
    seeds: tuple[int, ...] = (0,),
    train_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the loop for each seed and strategy; write ``simulate_al.json`` and ``simulate_al.png`` in ``out_dir``.

    Each seed draws its own pool / held-out split and start. ``curves`` holds each strategy's mean over
    the seeds, ``runs`` every seed's curves; the plot shows both.
    """
    studies, out_dir = Path(studies), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_cls, infer_cls = lookup(train_tasks(), train_task, "train task"), lookup(infer_tasks(), infer_task, "infer task")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InputError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    if not seeds:
        raise InputError("simulate-al needs at least one seed")
    masked = [r for r in collect_labels(MammoDatastore(studies, read_only=True)).images if r.mask_path]
    runs, sizes = {}, {}
    for seed in seeds:
        pool, held_out = split_by_patient(masked, val_fraction, seed)
        if len(pool) < initial + per_round or not held_out:
            raise InputError(f"simulate-al needs more masked images: {len(pool)} in the pool, {len(held_out)} held out")
        options = {**(train_options or {}), "val_fraction": 0.0, "resume": False, "seed": seed}
        runs[str(seed)] = {name: _one_loop(studies, out_dir / "work" / f"seed{seed}" / name, train_cls, infer_cls,
                                           infer_task, name, pool, held_out, initial, rounds, per_round, seed, options)
                           for name in strategies}
        sizes[str(seed)] = {"pool": len(pool), "held_out": len(held_out)}
    curves = {name: _mean_curve([run[name] for run in runs.values()]) for name in strategies}
    result = {"studies": str(studies), "train_task": train_task, "infer_task": infer_task, "initial": initial,
              "rounds": rounds, "per_round": per_round, "seeds": list(seeds), "sizes": sizes,
              "train_options": dict(train_options or {}), "curves": curves, "runs": runs}
    with atomic_path(out_dir / "simulate_al.json", suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2))
    held = sorted({v["held_out"] for v in sizes.values()})
    held_text = str(held[0]) if len(held) == 1 else f"{held[0]}-{held[-1]}"
    title = f"{infer_task}: held-out Dice vs masks\n({len(seeds)} seed(s), {held_text} images held out each)"
    _plot(out_dir / "simulate_al.png", curves, runs, title)
    return result


def _one_loop(studies: Path, work: Path, train_cls, infer_cls, infer_task: str, name: str, pool: list, held_out: list,
              initial: int, rounds: int, per_round: int, seed: int, options: dict[str, Any]) -> list[dict[str, float]]:
    """One strategy's loop on one seed's split: train, measure held-out Dice, reveal ``per_round`` masks."""
    start = {pool[i].image_id for i in np.random.default_rng(seed).permutation(len(pool))[:initial]}
    held_ids = {r.image_id for r in held_out}
    truth = {r.image_id: r.mask_path for r in pool}
    shutil.rmtree(work, ignore_errors=True)
    store = _pool_datastore(studies, work / "studies", set(truth), start)
    held_store = _pool_datastore(studies, work / "held_out", held_ids, held_ids)
    curve = []
    for round_index in range(rounds + 1):
        ckpt = work / f"round{round_index}.pt"
        train_cls(model_dir=work)(dict(options, checkpoint=str(ckpt)), store)
        task = infer_cls(path=str(ckpt))
        metrics = evaluate(task, collect_labels(held_store), work / f"eval{round_index}", n_pictures=0)
        n_masks = sum(1 for r in collect_labels(store).images if r.mask_path)
        curve.append({"masks": n_masks, "dice_mean": metrics["dice_mean"] or 0.0})
        logger.info(f"simulate-al seed {seed} {name} round {round_index}: {n_masks} masks, "
                    f"held-out Dice {curve[-1]['dice_mean']:.4f}")
        if round_index == rounds:
            break
        if name == "uncertainty":
            UncertaintyScoring({infer_task: task})({}, store)
        strategy = STRATEGIES[name]()
        for _ in range(per_round):
            pick = strategy({"strategy": name, "client_id": "simulator"}, store)
            if not pick or pick["id"] not in truth:
                break
            store.save_label(pick["id"], truth[pick["id"]], TAG_MASK, {"revealed_in_round": round_index + 1})
    return curve


def _mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Round by round mean (and range) of the seeds' curves, over the rounds that every seed reached."""
    n = min(len(c) for c in curves)
    out = []
    for i in range(n):
        dices = [c[i]["dice_mean"] for c in curves]
        out.append({"masks": float(np.mean([c[i]["masks"] for c in curves])), "dice_mean": float(np.mean(dices)),
                    "dice_min": float(min(dices)), "dice_max": float(max(dices))})
    return out


def _plot(path: Path, curves: dict[str, list[dict[str, float]]], runs: dict[str, dict[str, list[dict[str, float]]]],
          title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for colour, (name, curve) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], curves.items()):
        if len(runs) > 1:
            for run in runs.values():
                ax.plot([c["masks"] for c in run[name]], [c["dice_mean"] for c in run[name]], color=colour,
                        alpha=0.25, linewidth=1)
        ax.plot([c["masks"] for c in curve], [c["dice_mean"] for c in curve], marker="o", color=colour,
                label=f"{name} (mean)" if len(runs) > 1 else name)
    ax.set(xlabel="lesion masks given", ylabel="held-out mean Dice", title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
