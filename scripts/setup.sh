#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned stack.
# Sourced by run.sh and test.sh; safe to run again (it skips work when nothing changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMMOLABEL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.mammolabel-installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the pinned stack (about 2 minutes on a fresh machine)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first: the CPU build when this machine has it on disk, otherwise PyPI's build with its libraries.
  python -m pip install -q "torch==2.13.0"
  # Everything else is pinned exactly; --no-deps keeps monailabel from pulling sam2 and torchvision.
  python -m pip install -q --no-deps -r "$ROOT/requirements.txt"
  python -m pip install -q --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi

# Training runs are tracked in MLflow (a SQLite store in the model folder; README "Tracking").
export MLFLOW_ALLOW_FILE_STORE=true
export PATH="$VENV/bin:$PATH"
