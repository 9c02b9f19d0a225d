"""Model cards ``models/<task>.md``, written from the records ``train-zoo`` leaves beside each checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mammolabel.training.progress import format_seconds
from mammolabel.zoo import KINDS, MODELS_DIR

PAPERS = {
    "classification": "Dahl et al., holistic + attention ResNet classification with an ensemble "
                      "(`../shared/papers/dahl-holistic-attention-classification.md`)",
    "localization": "Liang et al., CAM + recursive self-training lesion localization "
                    "(`../shared/papers/liang-cam-self-training-localization.md`)",
    "discriminative_segmentation": "Tardy & Mateus, discriminative reconstruction (subtraction U-Net) "
                                   "(`../shared/papers/tardy-discriminative-reconstruction-segmentation.md`)",
    "hybrid_segmentation": "Xiong et al., hybrid strong/weak mass segmentation "
                           "(`../shared/papers/xiong-hybrid-strong-weak-segmentation.md`)",
    "glam_segmentation": "Liu et al., GLAM weakly-supervised high-resolution segmentation "
                         "(`../shared/papers/liu-glam-weakly-supervised-segmentation.md`)",
}
FAILURE_MODES = {
    "classification": "Random initialisation and a few hundred films: the saliency often follows the skin line "
                      "or the pectoral muscle, so the ROI misses the lesion on many films.",
    "localization": "Points follow the strongest CAM response, which on films is often dense tissue or the "
                    "pectoral muscle; diffuse calcifications have no single point.",
    "discriminative_segmentation": "Trained on malignant masks only: benign lesions may be marked, and on "
                                   "normal films the threshold can still leave small regions.",
    "hybrid_segmentation": "Marks pixels on most normal films (it is trained on lesion films); boxes are "
                           "square-ish, so spiculated margins are not followed.",
    "glam_segmentation": "Trained on findings only: the masks are coarse, patches can miss the lesion, and "
                         "normal films often get segmented pixels.",
}
LICENCES = {
    "demo": "generated phantoms (`mammolabel make-phantoms`, Apache-2.0 like this project)",
    "mias": "mini-MIAS (Suckling et al., 1994): research use only, no redistribution for profit; see the "
            "database's Licence.txt",
}
NOTES = {
    "glam_segmentation": "Stored as float16 (float32 would exceed 10 MB). Rounding the weights by half a float16 "
                         "step leaves 99.9 % of the labelmap and the answered probabilities within 0.01; the "
                         "global module's own probability moves by up to 0.03 (`tests/test_zoo.py`).",
}
SHOWN = ("auc_normal_vs_abnormal", "auc_malignant_vs_rest", "auc_benign_vs_malignant", "lesions_found", "hit_rate",
         "dice_mean")
CROSSVAL_DIR = MODELS_DIR.parent / "docs" / "results" / "crossval"
#: The cross-validation report (``CROSSVAL_DIR``) of the recipe each ``mias`` checkpoint is trained with.
RECIPES = {"classification": "classification_window_both.json", "localization": "localization.json",
           "discriminative_segmentation": "discriminative_segmentation_scratch.json",
           "hybrid_segmentation": "hybrid_segmentation.json", "glam_segmentation": "glam_segmentation_patches.json"}


def recipe_report(task: str) -> dict[str, Any]:
    """The cross-validation report of the ``mias`` recipe of ``task``."""
    return json.loads((CROSSVAL_DIR / RECIPES[task]).read_text())


def _figure(metrics: dict[str, Any], name: str) -> str:
    if name not in metrics:
        return "n/a"
    value, ci = metrics[name]["value"], metrics[name]["ci95"]
    return f"{value:.3f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else f"{value:.3f}"


def _section(record: dict[str, Any]) -> list[str]:
    metrics = record["metrics"]
    options = ", ".join(f"{k}={v}" for k, v in sorted(record["options"].items()))
    load = record["load_average"]
    return [
        f"## `{record['task']}.{record['kind']}.pt`",
        "",
        f"- Preset: `{record['preset']}` ({options}); train tasks {', '.join(record['train_tasks'])}, "
        "from random weights, seed 0.",
        f"- Data: {record['data']}. Labels on the training films: {record['labels']}. Licence: {LICENCES[record['kind']]}.",
        f"- Made by `{record['command']}`: {format_seconds(record['train_wall_s'])} of training on this "
        f"2-core machine with {record['threads']} thread{'s' if record['threads'] != 1 else ''} (load average {load[0]} at the start, {load[3]} at "
        f"the end). Stored as {record['checkpoint']['storage']}, {record['checkpoint']['bytes'] / 1e6:.1f} MB.",
        "",
        f"Held-out figures ({metrics['films']} films, {metrics['lesion_films_scored']} with a located lesion; "
        "95% patient-wise bootstrap intervals):",
        "",
        "| " + " | ".join(SHOWN) + " |",
        "|" + "---|" * len(SHOWN),
        "| " + " | ".join(_figure(metrics, name) for name in SHOWN) + " |",
        "",
    ]


def _crossval(task: str) -> list[str]:
    """The cross-validated figures of the ``mias`` recipe: the estimate of what it learns from these films."""
    report = recipe_report(task)
    pooled, folds = report["out_of_fold"], report["mean_over_folds"]

    def fold_figure(name: str) -> str:
        f = folds.get(name)
        return "n/a" if not f else f"{f['mean']:.3f} ({f['ci95'][0]:.2f}-{f['ci95'][1]:.2f})" if f["ci95"] else f"{f['mean']:.3f}"

    shown = [name for name in SHOWN if name in pooled]
    return [
        "## Cross-validated figures of the `mias` recipe",
        "",
        f"The recipe of `{task}.mias.pt`, cross-validated: {report['folds']} folds of patients over the "
        f"{report['films']} mini-MIAS development films ({report['patients']} patients), each film scored by a model "
        "that neither trained nor chose its epoch on that patient (`" + report["command"] + "`, "
        f"{format_seconds(report['wall_s'])} on 2 cores, {report['threads']} thread(s)). This, not the held-out "
        "split above, is the estimate of what the recipe learns; protocol and the other recipes in "
        "[../docs/results/crossval.md](../docs/results/crossval.md).",
        "",
        "| figure | pooled out of fold (95% bootstrap) | mean over folds (95% t-interval) |",
        "|---|---|---|",
        *(f"| {name} | {_figure(pooled, name)} | {fold_figure(name)} |" for name in shown),
        "",
    ]


BENCHMARK_PRESETS = {"demo": "cpu", "mias": "mias"}  # kind -> `mammolabel benchmark --preset P --out benchmarks/P`


def _speed(task: str) -> list[str]:
    """The click latency ``mammolabel benchmark`` measured for each shipped checkpoint."""
    lines = []
    for kind, preset in BENCHMARK_PRESETS.items():
        path = MODELS_DIR.parent / "benchmarks" / preset / f"{task}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        server, forward = report[task]["server"], report[task].get("forward", {})
        line = (f"`{task}.{kind}.pt`: one click (POST /infer on a 1024 x 1024 film, median of 5 warm requests "
                f"through the real server) answers in {server['latency_s']:.2f} s in {server['precision']} on this "
                f"2-core machine (load average {server['load_1m']}; `mammolabel benchmark --preset {preset}`, "
                f"`benchmarks/{preset}/{task}.json`).")
        if forward:
            line += (f" The network's forward: {forward['fp32']['latency_s'] * 1000:.0f} ms in fp32, "
                     f"{forward['bf16_channels_last']['latency_s'] * 1000:.0f} ms in bf16 + channels_last.")
        lines += [line, ""]
    return ["## Speed", "", *lines] if lines else []


def write_card(out_dir: Path, task: str) -> Path:
    """Write ``out_dir/<task>.md`` from the ``<task>.<kind>.json`` records present."""
    records = [json.loads((out_dir / f"{task}.{kind}.json").read_text())
               for kind in KINDS if (out_dir / f"{task}.{kind}.json").is_file()]
    lines = [
        f"# Model card: `{task}`",
        "",
        f"Method: {PAPERS[task]}. Reduced to the `cpu` preset (see `mammolabel train {records[0]['train_tasks'][-1]}`"
        " and the README): no ImageNet initialisation, a few hundred films instead of the paper's data, a lower "
        "resolution.",
        "",
        "**Intended use: research and trying the method on your own films. Not for clinical decisions.** "
        "`demo` is for the sample phantoms only; `mias` is a starting point to fine-tune on a site's own labels "
        "(`POST /train/<train task>` starts from it).",
        "",
        "The held-out figures come from one split of patients that neither training nor model selection saw "
        "(`lesions_found`: share of located lesions the task's output lands on); the cross-validated figures "
        "below are the honest estimate for the `mias` recipe.",
        "",
    ]
    for record in records:
        lines += _section(record)
    lines += _crossval(task)
    lines += _speed(task)
    if task in NOTES:
        lines += ["## Storage", "", NOTES[task], ""]
    lines += ["## Known failure modes", "", FAILURE_MODES[task], ""]
    path = out_dir / f"{task}.md"
    path.write_text("\n".join(lines))
    return path
