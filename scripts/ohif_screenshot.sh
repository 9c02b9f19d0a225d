#!/usr/bin/env bash
# OHIF check: Orthanc + MammoLabel over DICOMweb, one task run on a phantom, the bundled OHIF in
# headless Chromium showing the task's Structured Report over the mammogram, saved as a PNG.
#
#   scripts/ohif_screenshot.sh [OUT.png]           # default docs/ohif.png
#
# Environment:
#   TASK       infer task to run (default hybrid_segmentation; it must return boxes for a box to show)
#   MODEL_DIR  folder with the task's trained checkpoint (default apps/mammography/model)
#   PHANTOM    phantom film to run the task on and open (default phantom_006, a benign mass)
#   N          number of phantom films written and stored in Orthanc (default 8, seed 0)
#   KEEP=1     keep the temporary Orthanc storage, cache and logs (their folder is printed)
# Needs Debian's orthanc, orthanc-dicomweb (installed when missing, as root) and chromium.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
OUT="$(realpath -m "${1:-$ROOT/docs/ohif.png}")"
TASK="${TASK:-hybrid_segmentation}"
MODEL_DIR="$(realpath -m "${MODEL_DIR:-$ROOT/apps/mammography/model}")"
PHANTOM="${PHANTOM:-phantom_006}"
command -v chromium >/dev/null || { echo "ohif_screenshot: chromium is missing (apt-get install chromium)" >&2; exit 2; }

WORK="$(mktemp -d /tmp/mammolabel-ohif.XXXXXX)"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill -- -"$SERVER_PID" 2>/dev/null || true
  bash "$ROOT/scripts/orthanc.sh" stop "$WORK/orthanc"
  if [ "${KEEP:-0}" = 1 ]; then echo "[ohif] kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

bash "$ROOT/scripts/orthanc.sh" start "$WORK/orthanc" > /dev/null
set -a; . "$WORK/orthanc/orthanc.env"; set +a
mammolabel make-phantoms "$WORK/studies" --n "${N:-8}" > /dev/null
bash "$ROOT/scripts/orthanc.sh" upload "$WORK/orthanc" "$WORK"/studies/dicom/*.dcm
read -r STUDY IMAGE < <(python -c 'import sys, pydicom; d = pydicom.dcmread(sys.argv[1]); print(d.StudyInstanceUID, d.SOPInstanceUID)' \
  "$WORK/studies/dicom/$PHANTOM.dcm")

PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
export MONAI_LABEL_DICOMWEB_CACHE_PATH="$WORK/cache"
setsid monailabel start_server --app "$ROOT/apps/mammography" --studies "$DICOMWEB_URL" --host 127.0.0.1 \
  --port "$PORT" --conf models "$TASK" --conf model_dir "$MODEL_DIR" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 180); do
  curl -sf "$URL/info/" -o /dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 5 "$WORK/server.log" >&2; exit 2; }
  sleep 1
done
echo "[ohif] MammoLabel at $URL over $DICOMWEB_URL; running $TASK on $PHANTOM" >&2
curl -sf -X POST "$URL/infer/$TASK?image=$IMAGE&output=json" -o "$WORK/result.json" \
  || { echo "ohif_screenshot: $(curl -s -X POST "$URL/infer/$TASK?image=$IMAGE&output=json")" >&2; exit 2; }
python - "$WORK/result.json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
stored = result.get("dicom", {})
if not stored.get("stored"):
    sys.exit(f"ohif_screenshot: the results were not stored in the PACS: {stored}")
print(f"[ohif] stored {', '.join(k for k in ('seg', 'heatmap', 'report') if k in stored)}; "
      f"{len(result['boxes'])} box(es), {len(result['points'])} point(s)", file=sys.stderr)
EOF
python "$ROOT/scripts/ohif_screenshot.py" --server "$URL" --study "$STUDY" --report "$TASK" --out "$OUT"
