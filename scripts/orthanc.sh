#!/usr/bin/env bash
# A local Orthanc DICOMweb server for development, tests and demos (Debian's orthanc + orthanc-dicomweb).
#
#   scripts/orthanc.sh install [--with-chromium]  # apt-get install orthanc orthanc-dicomweb [chromium] (as root;
#                                                 # no service is started; chromium is for the OHIF check)
#   scripts/orthanc.sh start DIR [PORT]           # write DIR/orthanc.json, start Orthanc, wait until it answers
#   scripts/orthanc.sh stop DIR                   # stop the Orthanc started in DIR
#   scripts/orthanc.sh upload DIR FILE...         # store DICOM files in it (Orthanc REST API)
#
# `start` installs Orthanc when it is missing, picks a free port on 127.0.0.1 unless PORT is given, and
# writes DIR/orthanc.env with ORTHANC_URL, DICOMWEB_URL, MONAI_LABEL_DICOMWEB_USERNAME and
# MONAI_LABEL_DICOMWEB_PASSWORD (source it before `monailabel start_server --studies "$DICOMWEB_URL"`).
# The server answers loopback clients only (Orthanc 1.10 has no bind address; other clients get 401),
# refuses anonymous requests (HTTP basic authentication with one registered user: ORTHANC_USER,
# default "mammolabel"; ORTHANC_PASSWORD, default random), has its DICOM network port off, and
# stores everything as Explicit VR Little Endian.
set -euo pipefail

PLUGIN_DIR="${ORTHANC_PLUGIN_DIR:-/usr/share/orthanc/plugins}"
PY="${PYTHON:-python3}"

die() { echo "orthanc.sh: $*" >&2; exit 2; }

install_orthanc() {  # [--with-chromium]
  local packages=()
  command -v Orthanc >/dev/null || packages+=(orthanc)
  [ -e "$PLUGIN_DIR/libOrthancDicomWeb.so" ] || packages+=(orthanc-dicomweb)
  if [ "${1:-}" = "--with-chromium" ] && ! command -v chromium >/dev/null; then packages+=(chromium); fi
  [ ${#packages[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${packages[*]}; run as root: apt-get install -y --no-install-recommends ${packages[*]}"
  echo "[orthanc] installing Debian's ${packages[*]}" >&2
  # The package would start a system-wide Orthanc on ports 8042/4242: keep services from starting.
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  if [ "$added" -eq 1 ]; then rm -f "$policy"; fi
  command -v Orthanc >/dev/null || die "apt-get finished but the Orthanc command is missing"
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {  # DIR PORT USER PASSWORD
  local dir="$1" port="$2" user="$3" password="$4"
  mkdir -p "$dir/storage"
  "$PY" - "$dir" "$port" "$user" "$password" "$PLUGIN_DIR" <<'EOF'
import json, sys
out, port, user, password, plugins = sys.argv[1:]
explicit_le = "1.2.840.10008.1.2.1"
config = {
    "Name": "MammoLabel-Orthanc",
    "StorageDirectory": f"{out}/storage",
    "IndexDirectory": f"{out}/storage",
    "StorageCompression": False,
    "HttpServerEnabled": True,
    "HttpPort": int(port),
    "RemoteAccessAllowed": False,  # answers loopback clients only
    "AuthenticationEnabled": True,  # no anonymous access
    "RegisteredUsers": {user: password},
    "SslEnabled": False,
    "DicomServerEnabled": False,  # no DIMSE port: DICOMweb only
    "AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", explicit_le],
    "IngestTranscoding": explicit_le,  # what is stored and served is uncompressed little endian
    "UnknownSopClassAccepted": False,
    "OverwriteInstances": True,
    "SaveJobs": False,
    "ConcurrentJobs": 1,
    "HttpThreadsCount": 8,
    "StableAge": 2,
    "Plugins": [f"{plugins}/libOrthancDicomWeb.so"],
    "DicomWeb": {
        "Enable": True,
        "Root": "/dicom-web/",
        "EnableWado": True,
        "WadoRoot": "/wado",
        "Ssl": False,
        "StudiesMetadata": "Full",
        "SeriesMetadata": "Full",
    },
}
with open(f"{out}/orthanc.json", "w") as f:
    json.dump(config, f, indent=2)
EOF
  chmod 600 "$dir/orthanc.json"
  cat > "$dir/orthanc.env" <<EOF
ORTHANC_URL=http://127.0.0.1:$port
DICOMWEB_URL=http://127.0.0.1:$port/dicom-web
MONAI_LABEL_DICOMWEB_USERNAME=$user
MONAI_LABEL_DICOMWEB_PASSWORD=$password
EOF
  chmod 600 "$dir/orthanc.env"
}

start_orthanc() {  # DIR [PORT]
  local dir port user password
  dir="$(mkdir -p "$1" && cd "$1" && pwd)"
  install_orthanc
  if [ -f "$dir/orthanc.pid" ] && kill -0 "$(cat "$dir/orthanc.pid")" 2>/dev/null; then
    die "an Orthanc is already running from $dir (pid $(cat "$dir/orthanc.pid")); run: $0 stop $dir"
  fi
  port="${2:-$(free_port)}"
  user="${ORTHANC_USER:-mammolabel}"
  password="${ORTHANC_PASSWORD:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')}"
  write_config "$dir" "$port" "$user" "$password"
  Orthanc "$dir/orthanc.json" > "$dir/orthanc.log" 2>&1 &
  echo $! > "$dir/orthanc.pid"
  for _ in $(seq 1 100); do
    if curl -sf -u "$user:$password" "http://127.0.0.1:$port/dicom-web/studies" -o /dev/null; then
      echo "[orthanc] DICOMweb at http://127.0.0.1:$port/dicom-web (user $user; credentials in $dir/orthanc.env)" >&2
      cat "$dir/orthanc.env"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/orthanc.pid")" 2>/dev/null; then
      tail -n 20 "$dir/orthanc.log" >&2
      die "Orthanc exited during start-up (log: $dir/orthanc.log)"
    fi
    sleep 0.1
  done
  stop_orthanc "$dir"
  die "Orthanc did not answer on port $port within 10 s (log: $dir/orthanc.log)"
}

stop_orthanc() {  # DIR
  local pidfile="$1/orthanc.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}

upload() {  # DIR FILE...
  local dir="$1"; shift
  [ -f "$dir/orthanc.env" ] || die "no $dir/orthanc.env: start Orthanc first"
  # shellcheck disable=SC1091
  . "$dir/orthanc.env"
  for f in "$@"; do
    curl -sf -u "$MONAI_LABEL_DICOMWEB_USERNAME:$MONAI_LABEL_DICOMWEB_PASSWORD" -X POST \
      -H "Content-Type: application/dicom" --data-binary "@$f" "$ORTHANC_URL/instances" -o /dev/null \
      || die "upload of $f failed"
  done
  echo "[orthanc] stored $# file(s)" >&2
}

case "${1:-}" in
  install) install_orthanc "${2:-}" ;;
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [PORT]"; start_orthanc "$2" "${3:-}" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop_orthanc "$2" ;;
  upload) [ $# -ge 3 ] || die "usage: $0 upload DIR FILE..."; dir="$2"; shift 2; upload "$dir" "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
