"""The ``mammolabel`` command: phantoms, imports, train (and train-zoo), calibrate, infer, evaluate, benchmark.

Errors a user can fix (bad file, unknown task, missing checkpoint) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from mammolabel.errors import MammoLabelError


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _make_phantoms(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.phantoms import write_phantom_study

    truth = write_phantom_study(args.dir, n=args.n, seed=args.seed, shape=(args.rows, args.cols),
                                mask_fraction=args.mask_fraction, dicom=not args.no_dicom)
    findings = [v["finding"] for v in truth["images"].values()]
    return {"dir": str(args.dir), "images": len(findings), **{f: findings.count(f) for f in sorted(set(findings))}}


def _import_mias(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.mias import import_mias

    summary = import_mias(args.mias_dir, args.datastore)
    for problem in summary["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    return {k: v for k, v in summary.items() if k != "problems"} | {"problems": len(summary["problems"])}


#: An import prints at most this many of its problems (the summary counts them all).
SHOWN_PROBLEMS = 20


def _report(summary: dict[str, Any]) -> dict[str, Any]:
    problems = summary.pop("problems", [])
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"warning: {problem}", file=sys.stderr)
    if len(problems) > SHOWN_PROBLEMS:
        print(f"warning: ... and {len(problems) - SHOWN_PROBLEMS} more", file=sys.stderr)
    findings = summary.get("findings")
    if isinstance(findings, dict):
        summary["findings"] = _report(findings)
    return summary | {"problems": len(problems)}


def _import_csv(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.import_csv import import_csv

    return _report(import_csv(args.csv, args.datastore, args.images, args.layout, dict(args.columns or [])))


def _import_dicom(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.import_dicom import import_dicom

    return _report(import_dicom(args.dir, args.datastore, args.findings))


def _open_studies(studies: str):
    from mammolabel.tasks.launch import open_studies

    return open_studies(str(studies))


def _infer_task(name: str, checkpoint: str | None):
    from mammolabel.tasks import infer_tasks, lookup

    cls = lookup(infer_tasks(), name, "infer task")
    return cls(path=checkpoint) if checkpoint else cls()


def _infer(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.tasks.run import run_task
    from mammolabel.io import read_mammogram, write_labelmap
    from mammolabel.metrics.pictures import save_overlay

    task = _infer_task(args.task, args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for image in args.images:
        labelmap, result = run_task(task, image, args.device)
        stem = Path(image).name.split(".")[0]
        write_labelmap(out / f"{stem}.{args.task}.nrrd", labelmap, result.get("spacing"))
        (out / f"{stem}.{args.task}.json").write_text(json.dumps(result, indent=2, default=float))
        points = [(p["x"], p["y"]) for p in result.get("points", [])]
        save_overlay(out / f"{stem}.{args.task}.png", read_mammogram(image).pixels, labelmap=labelmap, points=points)
        results[image] = str(out / f"{stem}.{args.task}.nrrd")
    return {"task": args.task, "outputs": results}


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.tasks import lookup, train_tasks

    cls = lookup(train_tasks(), args.task, "train task")
    out = Path(args.out)
    task = cls(model_dir=out.parent)
    request = dict(args.set or [])
    request.update(checkpoint=str(out), device=args.device)
    if args.epochs is not None:
        request["epochs"] = args.epochs
    if args.nproc_per_node or args.nnodes != "1":
        from mammolabel.tasks.launch import Job, launch

        task.options(request)  # bad options and studies are refused before any process starts
        _open_studies(args.studies)
        job = Job(args.task, str(out.parent), request, str(args.studies))
        return launch(job, args.nproc_per_node or 1, args.nnodes, args.rdzv_endpoint)
    return task(request, _open_studies(args.studies))


def _calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.datastore import collect_labels
    from mammolabel.tasks.calibration import calibrate

    task = _infer_task(args.task, args.checkpoint)
    inventory = collect_labels(_open_studies(args.studies))
    return calibrate(task, inventory, method=args.method, sensitivity=args.sensitivity, specificity=args.specificity,
                     split=args.split, model_dir=args.model_dir, device=args.device)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.data.datastore import collect_labels
    from mammolabel.training.checkpoint import load_checkpoint
    from mammolabel.evaluation.evaluate import evaluate

    task = _infer_task(args.task, args.checkpoint)
    ids = None
    if args.split == "val":
        if not args.checkpoint:
            raise MammoLabelError("--split val needs --checkpoint (the validation images are recorded in it)")
        ids = set(load_checkpoint(args.checkpoint).get("validation_images", []))
    inventory = collect_labels(_open_studies(args.studies))
    metrics = evaluate(task, inventory, args.out, device=args.device, image_ids=ids)
    return {k: v for k, v in metrics.items() if k != "rows"}


def _benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.evaluation.benchmark import run_benchmarks

    return run_benchmarks(args.out, device=args.device, tasks=args.task, quick=args.quick, threads=args.threads,
                          preset=args.preset)


def _crossval(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.evaluation.crossval import crossval

    report = crossval(args.task, args.studies, args.out, folds=args.folds, seed=args.seed,
                      options=dict(args.set or []), device=args.device)
    return {k: report[k] for k in ("task", "folds", "films", "mean_over_folds", "out_of_fold", "wall_s")}


def _crossval_compare(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.evaluation.crossval import paired_difference

    reports = [json.loads(Path(p).read_text()) for p in (args.first, args.second)]
    keys = tuple(args.keys.split(",")) if args.keys else None
    if keys is not None and len(keys) != 2:
        raise MammoLabelError("--keys takes two row keys, e.g. ensemble_score,holistic_score")
    return {"first": str(args.first), "second": str(args.second), **({"keys": list(keys)} if keys else {}),
            **paired_difference(*reports, args.figure, keys=keys, where=args.where or "")}


def _train_zoo(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.evaluation.train_zoo import train_zoo

    return train_zoo(args.out, kinds=tuple(args.kind or ("demo", "mias")), tasks=tuple(args.task or ()))


def _simulate_al(args: argparse.Namespace) -> dict[str, Any]:
    from mammolabel.evaluation.simulate import simulate_active_learning

    result = simulate_active_learning(
        args.studies, args.out, train_task=args.train_task, infer_task=args.infer_task,
        strategies=tuple(args.strategy or ("uncertainty", "random")), initial=args.initial, rounds=args.rounds,
        per_round=args.per_round, seeds=tuple(args.seed or [0]), train_options=dict(args.set or []))
    return {"out": str(args.out), "curves": result["curves"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammolabel", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-phantoms", help="write a synthetic study set (PNG datastore + DICOM MG)")
    s.add_argument("dir", type=Path)
    s.add_argument("--n", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rows", type=int, default=512)
    s.add_argument("--cols", type=int, default=416)
    s.add_argument("--mask-fraction", type=float, default=1.0, help="lesion images given a mask (others a box)")
    s.add_argument("--no-dicom", action="store_true", help="skip the DICOM MG copies")
    s.set_defaults(func=_make_phantoms)

    s = sub.add_parser("import-mias", help="import a MIAS folder (Info.txt + PGM/PNG) into a datastore")
    s.add_argument("mias_dir", type=Path)
    s.add_argument("datastore", type=Path)
    s.set_defaults(func=_import_mias)

    s = sub.add_parser("import-csv", help="import images and findings listed in a CSV (VinDr, CBIS-DDSM, generic)")
    s.add_argument("csv", type=Path)
    s.add_argument("datastore", type=Path)
    s.add_argument("--images", required=True, type=Path, help="folder the CSV's image and mask paths are relative to")
    s.add_argument("--layout", default="generic", choices=("generic", "vindr", "cbis"))
    s.add_argument("--columns", type=lambda t: [_key_value(p) for p in t.split(",") if p.strip()], default=[],
                   metavar="KEY=NAME,...", help="column names for keys (image, finding, birads, x0, mask...)")
    s.set_defaults(func=_import_csv)

    s = sub.add_parser("import-dicom", help="import every MG instance of a DICOM folder tree")
    s.add_argument("dir", type=Path)
    s.add_argument("datastore", type=Path)
    s.add_argument("--findings", type=Path, help="CSV (generic layout) joined by SOP Instance UID or patient+side+view")
    s.set_defaults(func=_import_dicom)

    s = sub.add_parser("train", help="run a train task on a datastore")
    s.add_argument("task")
    s.add_argument("--studies", required=True, help="datastore folder or DICOMweb URL")
    s.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", default="auto")
    s.add_argument("--set", type=_key_value, action="append", metavar="KEY=VALUE", help="task option")
    s.add_argument("--nproc-per-node", type=int, default=0, help="train in N processes per node with torchrun "
                   "(one per GPU; gloo processes on CPU)")
    s.add_argument("--nnodes", default="1", help="nodes taking part (run the same command on each)")
    s.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="rendezvous of the nodes (the first's)")
    s.set_defaults(func=_train)

    s = sub.add_parser("calibrate", help="fit a task's probability to a site's labelled images; set an operating point")
    s.add_argument("task", help="infer task, e.g. classification")
    s.add_argument("--studies", required=True, help="datastore folder or DICOMweb URL with the site's labels")
    s.add_argument("--checkpoint", help="the site checkpoint to calibrate")
    s.add_argument("--model-dir", type=Path, help="where the calibration is stored (default: beside the checkpoint)")
    s.add_argument("--method", choices=("platt", "isotonic"), default="platt")
    point = s.add_mutually_exclusive_group()
    point.add_argument("--sensitivity", type=float, help="operating point: at least this sensitivity (default 0.9)")
    point.add_argument("--specificity", type=float, help="operating point: at least this specificity")
    s.add_argument("--split", choices=("all", "val"), default="all", help="val: the checkpoint's validation images")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_calibrate)

    s = sub.add_parser("infer", help="run an infer task on image files")
    s.add_argument("task")
    s.add_argument("images", nargs="+")
    s.add_argument("--checkpoint")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_infer)

    s = sub.add_parser("evaluate", help="metrics.json, overlays and ROC plot of a task on a datastore")
    s.add_argument("task")
    s.add_argument("--studies", required=True, help="datastore folder or DICOMweb URL")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--checkpoint")
    s.add_argument("--split", choices=("all", "val"), default="all", help="val: the checkpoint's validation images")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("simulate-al", help="simulated annotation loop: held-out metric vs labels per strategy")
    s.add_argument("--studies", required=True, type=Path, help="a datastore whose masks play the annotator")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--train-task", default="train_hybrid")
    s.add_argument("--infer-task", default="hybrid_segmentation")
    s.add_argument("--strategy", action="append", help="strategies to compare (default: uncertainty and random)")
    s.add_argument("--initial", type=int, default=4, help="images with a mask at the start")
    s.add_argument("--rounds", type=int, default=4)
    s.add_argument("--per-round", type=int, default=4, help="masks revealed per round")
    s.add_argument("--seed", type=int, action="append", help="repeatable: one loop per seed, plotted with their mean")
    s.add_argument("--set", type=_key_value, action="append", metavar="KEY=VALUE", help="train task option")
    s.set_defaults(func=_simulate_al)

    s = sub.add_parser("crossval", help="patient-wise k-fold cross-validation of a task (train, score out of fold)")
    s.add_argument("task", help="infer task (its method's train tasks run in order)")
    s.add_argument("--studies", required=True, help="datastore folder or DICOMweb URL with labels")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0, help="fold assignment (training seeds are the options' seed)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--set", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="train option for every train task, or TRAIN_TASK.KEY=VALUE for one")
    s.set_defaults(func=_crossval)

    s = sub.add_parser("crossval-compare", help="paired difference of a figure between two crossval reports")
    s.add_argument("first", type=Path, help="crossval.json")
    s.add_argument("second", type=Path, help="crossval.json (the same films; the same report for two models)")
    s.add_argument("--figure", default="auc_normal_vs_abnormal",
                   choices=("auc_normal_vs_abnormal", "auc_malignant_vs_rest", "auc_benign_vs_malignant",
                            "lesions_found", "hit_rate", "dice_mean"))
    s.add_argument("--keys", "--scores", help="the row keys the figure is computed from in each report (default: "
                   "the figure's own), e.g. ensemble_score,holistic_score or hit,hit_cam")
    s.add_argument("--where", help="only the films whose row has this key true, e.g. small")
    s.set_defaults(func=_crossval_compare)

    s = sub.add_parser("train-zoo", help="retrain the shipped checkpoints (models/) from scratch, with their cards")
    s.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    s.add_argument("--kind", action="append", choices=("demo", "mias"), help="repeatable (default: both)")
    s.add_argument("--task", action="append", help="only these infer tasks (repeatable)")
    s.set_defaults(func=_train_zoo)

    s = sub.add_parser("benchmark", help="latency, memory and FLOPs of the tasks; writes benchmark.json")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--device", default="cpu")
    s.add_argument("--task", action="append", help="only these tasks (repeatable)")
    s.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    s.add_argument("--preset", choices=("cpu", "mias", "paper"), default="cpu",
                   help="cpu: the shipped demo checkpoints (cpu preset); mias: the shipped mias checkpoints; "
                        "paper: the papers' configurations, random weights")
    s.add_argument("--threads", type=int, help="torch CPU threads of the forward measurements (default: all cores)")
    s.set_defaults(func=_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("mammolabel").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        result = args.func(args)
    except MammoLabelError as e:
        print(f"mammolabel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mammolabel: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
