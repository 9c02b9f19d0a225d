"""Time the authors' public GLAM (nyukat/GLAM) beside ours at 2944 x 1920 on CPU, random weights.

    python benchmarks/glam_reference.py --reference /tmp/glam-ref/GLAM [--patches 1 3] [--repeats 3]
        [--merge-into benchmarks/glam_segmentation.json]

The authors' ``src/modeling/glam.py`` is imported by path from a checkout outside this repository.
Their code imports torchvision (only ``conv3x3`` and ``transforms``) and OpenCV, neither of which
this project installs; when missing, stand-ins are registered before the import: ``conv3x3``
re-expressed (a 3x3 convolution, padding 1, no bias) and empty modules for the rest, which their
inference never calls. Their window search divides integer tensors with ``/``, an integer division
in the PyTorch 0.4 it was written for and a float division since PyTorch 1.5 (wrong patch rows, and
with K > 1 a crash when a patch is pasted back); it is re-expressed with floor division. Their code
runs otherwise unchanged. Both models run interleaved in one process (theirs, ours, theirs, ...)
so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("mammolabel")


def _stand_ins() -> None:
    """Register stand-ins for the torchvision and OpenCV modules the authors' code imports, where missing."""

    def missing(name: str) -> bool:
        return name not in sys.modules and importlib.util.find_spec(name) is None

    if missing("torchvision"):
        vision = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")

        def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> torch.nn.Conv2d:
            return torch.nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)

        resnet.conv3x3 = conv3x3
        vision.models, models.resnet = models, resnet
        vision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": vision, "torchvision.models": models, "torchvision.models.resnet": resnet,
                            "torchvision.transforms": vision.transforms})
    if missing("cv2"):
        sys.modules["cv2"] = types.ModuleType("cv2")


def _max_window(image: torch.Tensor, window: tuple[int, int], pooling_logic: str = "avg") -> torch.Tensor:
    """The authors' window search with floor division of the flat index (their ``/`` is float division now)."""
    pooled = torch.nn.functional.avg_pool2d(image, window, stride=1)
    index = pooled.flatten(2).argmax(dim=-1)
    return torch.stack([index // pooled.shape[-1], index % pooled.shape[-1]], dim=-1)


def load_reference(reference_dir: str | Path, num_patches: int) -> torch.nn.Module:
    """The authors' ``MILSingleImageModel`` (random weights) with K = ``num_patches``, from ``reference_dir``."""
    root = Path(reference_dir).resolve()
    path = root / "src" / "modeling" / "glam.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a checkout of nyukat/GLAM")
    _stand_ins()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # their file imports its siblings as src.modeling.*
    spec = importlib.util.spec_from_file_location("nyukat_glam", path)
    glam = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glam)
    glam.common_functions.get_max_window = _max_window
    parameters = {"device_type": "cpu", "gpu_number": 0, "cam_size": (184, 120), "top_k_per_class": num_patches,
                  "crop_shape": (512, 512), "percent_k": 0.03, "detection_pooling_percent_k": 0.3}
    return glam.MILSingleImageModel(parameters).eval()


def side_by_side(reference_dir: str | Path, num_patches: tuple[int, ...] = (1, 3), repeats: int = 3) -> dict[str, Any]:
    """CPU forward latency at 2944 x 1920 of the authors' GLAM and of ours (same sizes, random weights).

    Medians and the ratio ours / theirs per K.
    """
    from mammolabel.evaluation.benchmark import FULL_FIELD, machine
    from mammolabel.methods.glam.network import GlamNet
    from mammolabel.methods.glam.options import GlamOptions

    x = torch.rand(1, 1, *FULL_FIELD)
    results: dict[str, Any] = {"machine": machine(), "input": list(FULL_FIELD), "repeats": repeats,
                               "reference": "nyukat/GLAM src/modeling/glam.py MILSingleImageModel (random weights)"}
    for k in num_patches:
        theirs = load_reference(reference_dir, k)
        ours = GlamNet(GlamOptions(num_patches=k).network_config()).eval()
        times: dict[str, list[float]] = {"theirs": [], "ours": []}
        with torch.inference_mode():
            theirs(x)  # warm-up
            ours(x)
            for _ in range(repeats):
                for name, model in (("theirs", theirs), ("ours", ours)):
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
        entry: dict[str, Any] = {name: {"latency_s": statistics.median(t), "runs_s": t} for name, t in times.items()}
        entry["parameters"] = {"theirs": sum(p.numel() for p in theirs.parameters()),
                               "ours": sum(p.numel() for p in ours.parameters())}
        entry["latency_ratio_ours_over_theirs"] = entry["ours"]["latency_s"] / entry["theirs"]["latency_s"]
        results[f"K={k}"] = entry
        logger.info(f"glam side-by-side K={k}: {entry}")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Time the authors' GLAM beside ours at 2944 x 1920 on CPU")
    parser.add_argument("--reference", required=True, help="a checkout of nyukat/GLAM (outside this repository)")
    parser.add_argument("--merge-into", type=Path, help="benchmark JSON to add the results to, as 'side_by_side'")
    parser.add_argument("--patches", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    found = side_by_side(args.reference, tuple(args.patches), args.repeats)
    if args.merge_into:
        report = json.loads(args.merge_into.read_text()) if args.merge_into.exists() else {}
        report["side_by_side"] = found
        args.merge_into.write_text(json.dumps(report, indent=2))
    print(json.dumps(found, indent=2))
    return found


if __name__ == "__main__":
    main()
