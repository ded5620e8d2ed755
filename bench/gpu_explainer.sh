#!/usr/bin/env bash
# The explainer's fine-tune on a lent GPU (the device tool), in stages over back-to-back calls.
#
# Nothing can be fetched on that machine and one call carries 64 MiB, so the bundled GGUF
# (98 MB, split in parts), the data, and the wheels it lacks (bitsandbytes, pydantic, the
# unsloth set) travel in folders wheels/c1..c4 (git-ignored), one per call, and are kept in
# /tmp/stash while the machine stays warm:
#
#   bash bench/gpu_explainer.sh stash wheels/c1 install    # bitsandbytes, gguf, data, GGUF part 1
#   bash bench/gpu_explainer.sh stash wheels/c2 install    # pydantic, GGUF parts 2-4
#   bash bench/gpu_explainer.sh stash wheels/c3 && COMPARE_BASE=1 bash bench/gpu_explainer.sh peft
#   bash bench/gpu_explainer.sh stash wheels/c4 && bash bench/gpu_explainer.sh unsloth
#
# peft / unsloth [NAME [flags]]: the DEFAULT train-large (the same flags as on the CPU, plus any
# given) with that backend on CUDA, then evaluate-large (COMPARE_BASE=1: beside the untuned
# base; EVAL_LIMIT: held-out rows, 200 by default; GENERATE_LIMIT: rows whose texts are
# generated, 20 by default); logs, metrics and
# reports land in $OUT.
set -euo pipefail
STASH=/tmp/stash
SITE=/tmp/site
OUT=${OUT:-/tmp/out}
mkdir -p "$STASH" "$SITE" "$OUT"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LOGTRIAGE_BUNDLED_GGUF="$STASH/SmolLM2-135M-Instruct.Q4_1.gguf"
export LOGTRIAGE_BASE_CACHE="$STASH/base"
EVAL_FLAGS=(--limit "${EVAL_LIMIT:-200}" --generate-limit "${GENERATE_LIMIT:-20}" --no-progress)

stage=${1:?stage: stash DIR | peft | unsloth}
case "$stage" in
stash)
    # stash DIR [install]: keep DIR's files; install its wheels now (the unsloth set waits for its stage)
    dir=${2:?folder}
    cp "$dir"/* "$STASH"/
    whl=("$dir"/*.whl)
    if [ "${3:-}" = install ] && [ -e "${whl[0]}" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${whl[@]}"
    fi
    if [ -f "$dir/data.tgz" ]; then tar xzf "$dir/data.tgz" -C "$STASH"; fi
    ls "$STASH" | wc -l
    ;;
peft | unsloth)
    # peft|unsloth [NAME [train-large flags...]]: a run named NAME (default: the backend's name)
    if [ "$stage" = unsloth ] && [ ! -d "$SITE/unsloth" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$STASH"/*.whl
    fi
    [ -f "$LOGTRIAGE_BUNDLED_GGUF" ] || cat "$STASH"/gguf.part.* >"$LOGTRIAGE_BUNDLED_GGUF"
    name=${2:-$stage}
    python3 - <<'EOF2'
import importlib.metadata as m
import torch
print("torch", torch.__version__, torch.cuda.get_device_name(0))
for name in ("transformers", "peft", "bitsandbytes", "accelerate", "unsloth", "unsloth_zoo", "trl"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "absent")
EOF2
    run="$STASH/run-$name"
    rm -rf "$run"
    python3 -m large_model.cli train-large --data "$STASH/data/instructions_chat.jsonl" \
        --base bundled --backend "$stage" --output "$run" --no-progress "${@:3}" >"$OUT/train-$name.log" 2>&1 ||
        { tail -40 "$OUT/train-$name.log"; exit 1; }
    grep -E "large_model|Unsloth|unsloth" "$OUT/train-$name.log" | grep -v -i warn | tail -8 || true
    cp "$run/metrics.json" "$OUT/metrics-$name.json"
    python3 -m large_model.cli evaluate-large --model "$run" --device cuda --report "$OUT/eval-$name.json" \
        "${EVAL_FLAGS[@]}" ${COMPARE_BASE:+--compare-base} 2>&1 | grep -v -i warn
    ;;
summary)
    python3 - "$OUT" <<'EOF2'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'run':<14}{'steps':>6}{'train_s':>9}{'tok/s':>9}{'cat_acc':>9}{'sev_acc':>9}{'valid':>7}{'base_cat':>9}")
for ev in sorted(out.glob("eval-*.json")):
    name = ev.stem[5:]
    reps = json.loads(ev.read_text())["reports"]
    m = json.loads((out / f"metrics-{name}.json").read_text())
    t, b = reps["tuned"], reps.get("base", {})
    print(f"{name:<14}{m['steps']:>6}{m['train_seconds']:>9.1f}{m['tokens_per_second']:>9.0f}"
          f"{t['category_accuracy']:>9.3f}{t['severity_accuracy']:>9.3f}{t['schema_valid_rate']:>7.2f}"
          f"{b.get('category_accuracy', float('nan')):>9.3f}")
EOF2
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
