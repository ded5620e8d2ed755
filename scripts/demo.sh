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
[ -f data/instructions_chat.jsonl ] && [ -f data/normal_reference.jsonl ] || $PY data_gen/anomaly_classification_generator.py

step "2. real logs: loghub samples into sequence records"
if [ -d "$LOGHUB" ]; then
  $LT prepare "$LOGHUB/BGL/BGL_2k.log" --input-format BGL --window-size 10 -o data/loghub/bgl_windows.jsonl
  $LT prepare "$LOGHUB/HDFS/HDFS_2k.log" --input-format HDFS --window-type session -o data/loghub/hdfs_sessions.jsonl
  # real anomalies as the explainer's category "other" (training) and its real-log evaluation
  [ -f data/real_anomalies_train.jsonl ] || $PY data_gen/real_anomalies.py --loghub "$LOGHUB"
else
  echo "loghub samples not found at $LOGHUB (set LOGTRIAGE_LOGHUB); skipping"
fi

step "3. the detector: MoE-BERT over line vectors of the bundled all-MiniLM-L6-v2, supervised (about 4 min on 2 cores)"
# an artifact of the older token-level detector (no line_dim in its config) is trained again
grep -qs '"line_dim": [0-9]' artifacts/detector/config.json || $LT train-small --train data/splits/train.json --val data/splits/val.json \
  --test data/splits/test.json --out artifacts/detector

step "4. anomaly categories without labels: DeepLog features + Birch on the training anomalies"
[ -f artifacts/cluster/clusters.json ] || $LT cluster \
  --data data/splits/train.json --normal data/splits/train_normal.json --detector artifacts/deeplog \
  --train-detector --anomalies-only -o artifacts/cluster

step "5. the explainer: QLoRA fine-tune of the bundled SmolLM2-135M-Instruct (about 30 min on 2 cores)"
[ -f artifacts/explainer/adapter_config.json ] || $LT train-large --data data/instructions_chat.jsonl \
  --output artifacts/explainer

step "6. the service, with a sample detection and its explanation"
PORT=${LOGTRIAGE_PORT:-8000}
export LOGTRIAGE_CLUSTER_PATH=${LOGTRIAGE_CLUSTER_PATH:-artifacts/cluster}
export LOGTRIAGE_DATABASE_URL=${LOGTRIAGE_DATABASE_URL:-sqlite+aiosqlite:///./data/logtriage.db}
if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  echo "something already answers on port $PORT; set LOGTRIAGE_PORT" >&2; exit 1
fi
nohup $LT serve --port "$PORT" > data/serve.log 2>&1 &
echo $! > data/serve.pid
for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break; sleep 1; done
curl -sf "http://127.0.0.1:$PORT/ready" || { echo "the service did not start; see data/serve.log" >&2; exit 1; }
echo
SAMPLE=$($PY - <<'PY'
import json
seqs = json.load(open("data/splits/test.json"))
anomaly = next(s for s in seqs if s["label"] == 1 and s["anomaly_type"] == "timeout")
print(json.dumps({"sequences": [{"sequence_id": anomaly["sequence_id"], "log_entries": anomaly["log_entries"]}]}))
PY
)
echo "\$ curl -s -X POST http://127.0.0.1:$PORT/detect -H 'content-type: application/json' -d '<a timeout sequence from data/splits/test.json>'"
DETECT=$(curl -s -X POST "http://127.0.0.1:$PORT/detect" -H 'content-type: application/json' -d "$SAMPLE")
echo "$DETECT" | $PY -m json.tool
ID=$(echo "$DETECT" | $PY -c 'import json,sys; print(json.load(sys.stdin)["detections"][0]["id"])')
echo "\$ curl -s -X POST http://127.0.0.1:$PORT/explain -H 'content-type: application/json' -d '{\"detection_id\": \"$ID\", \"wait_seconds\": 120}'"
curl -s -X POST "http://127.0.0.1:$PORT/explain" -H 'content-type: application/json' \
  -d "{\"detection_id\": \"$ID\", \"wait_seconds\": 120}" | $PY -m json.tool
echo
echo "The service is running at http://127.0.0.1:$PORT (docs: /docs); pid $(cat data/serve.pid), log data/serve.log."
echo "Stop it with: kill \$(cat data/serve.pid)"
