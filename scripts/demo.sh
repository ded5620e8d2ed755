#!/usr/bin/env bash
# The main job on the bundled offline models, end to end (`make demo`).
# Each step skips work whose output already exists; DEMO_FRESH=1 redoes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${LOGTRIAGE_VENV:-.venv}/bin/python
LT=${LOGTRIAGE_VENV:-.venv}/bin/logtriage
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOGHUB=${LOGTRIAGE_LOGHUB:-../shared/datasets/loghub}
[ "${DEMO_FRESH:-0}" = 1 ] && rm -rf data artifacts
step() { printf '\n==> %s\n' "$*"; }

step "1. synthetic microservice logs (hard difficulty) and the stratified split"
[ -f data/log_sequences_strings.json ] || $PY data_gen/log_sequence_generator.py --difficulty hard
[ -f data/splits/test.json ] || $PY data_gen/data_splitter.py --input data/log_sequences_strings.json
[ -f data/instructions_chat.jsonl ] || $PY data_gen/anomaly_classification_generator.py

step "2. real logs: loghub samples into sequence records"
if [ -d "$LOGHUB" ]; then
  $LT prepare "$LOGHUB/BGL/BGL_2k.log" --input-format BGL --window-size 10 -o data/loghub/bgl_windows.jsonl
  $LT prepare "$LOGHUB/HDFS/HDFS_2k.log" --input-format HDFS --window-type session -o data/loghub/hdfs_sessions.jsonl
else
  echo "loghub samples not found at $LOGHUB (set LOGTRIAGE_LOGHUB); skipping"
fi
