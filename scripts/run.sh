#!/usr/bin/env bash
# Command 1: set up (or reuse) the environment, make the sample studies, serve the app on 127.0.0.1.
#   ./scripts/run.sh                       # phantoms in ./work/studies, port 8000
#   STUDIES=/path/to/images ./scripts/run.sh   # your own folder (PNG/PGM/DICOM/NIfTI/NRRD)
#   PORT=8080 MODELS=breast_region ./scripts/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"

STUDIES="${STUDIES:-$ROOT/work/studies}"
if [ ! -f "$STUDIES/datastore_v2.json" ] && [ "$STUDIES" = "$ROOT/work/studies" ]; then
  echo "[run] writing the sample phantom studies to $STUDIES"
  mammolabel make-phantoms "$STUDIES" --n 24 --mask-fraction 0.3
fi
echo "[run] serving $STUDIES on http://${HOST:-127.0.0.1}:${PORT:-8000} (3D Slicer: MONAI Label module; OHIF: /ohif/)"
exec monailabel start_server --app "$ROOT/apps/mammography" --studies "$STUDIES" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf models "${MODELS:-all}"
