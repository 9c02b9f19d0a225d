#!/usr/bin/env bash
# Command 2: set up (or reuse) the environment, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k breast).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
cd "$ROOT"
# The DICOMweb tests use a real Orthanc (and Chromium for the OHIF check), from Debian's packages.
if [ "$(id -u)" -eq 0 ]; then
  bash "$ROOT/scripts/orthanc.sh" install --with-chromium
elif ! command -v Orthanc >/dev/null; then
  echo "[test] Orthanc is not installed; its tests are skipped (install: sudo scripts/orthanc.sh install --with-chromium)"
fi
exec python -m pytest "$@"
