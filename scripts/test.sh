#!/usr/bin/env bash
# Command 2: set up (or reuse) the environment, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k breast).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest "$@"
