"""Running an infer task on one image file exactly as the server runs it (CLI, evaluation, calibration)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mammolabel.io import read_label
from mammolabel.tasks.infer import MammoInferTask


def run_task(
    task: MammoInferTask, image_path: str, device: str = "cpu", laterality: str | None = None,
    image_id: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``task`` on one image as the server does; return the labelmap (original orientation) and JSON.

    ``image_id`` names the image in the task's datastore (where the patient's other views are found).
    """
    request = {"image": image_path, "device": device, "logging": "WARNING", "laterality": laterality,
               "image_id": image_id}
    label_file, result = task(request)
    try:
        return read_label(label_file), result
    finally:
        os.unlink(label_file)
