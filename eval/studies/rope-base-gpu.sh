#!/usr/bin/env bash
# The rope-base findings at GPU scale into docs/results/rope-base-<gpu>/ (e.g. rope-base-h200):
#   train:  three byte-level Llamas (12 layers, width 768, 12 heads of 64, 85M parameters) from random init at
#           1024 tokens with rope base 1e4 / 1e5 / 1e6, equal steps, rows and seed (equal tokens), on three books
#           plus the pydoc prose with synthetic passkey and dense copy documents mixed in
#           (recipes/configs/rope-base-gpu/scratch-base*.yaml; american_adventures.txt is held out);
#   eval:   bits per byte on the held-out book and passkey (10 trials x 3 depths) at 512-8K tokens
#           (eval/suites/rope-base-gpu.yaml);
#   report: OUT/README.md and OUT/rope-base.png: val bpb at 1024, Δbpb against each model's own 1024 value,
#           passkey by length, the lower bound of the base per length (longctx.rope_bounds) and the original
#           H100 experiment next to it (eval/studies/rope_base_gpu_report.py).
# Every stage resumes where it stopped (training checkpoints, eval cells): rerun to continue.
#
#   PARALLEL=1 TRAIN_MINUTES=3 bash eval/studies/rope-base-gpu.sh                 # all stages on one GPU
#   BOOKS=/data/books bash eval/studies/rope-base-gpu.sh eval report              # the books elsewhere
#   DRY_RUN=1 OUT=/tmp/dry bash eval/studies/rope-base-gpu.sh                     # every stage on CPU in seconds
#   bash eval/studies/rope-base-gpu.sh mixcheck   # CPU, ~10 min: a 4x256 byte model on the real data and mix
#                                                 # fractions, 400 steps at 512 tokens: does the mix train?
#                                                 # -> docs/results/rope-base-gpu-mixcheck/
#
# Environment: PYTHON (.venv/bin/python), LONGCTX ("$PYTHON -m longctx"), BOOKS (../shared/data/books, relative
# to the repository root or absolute), OUT (docs/results/rope-base-<gpu>), MODELS (.cache/rope-base-gpu),
# TRAIN_MINUTES (wall-clock cap per model, recipes/finetune.py --max-minutes; unset: max_steps decides),
# PARALLEL=1 (train the three at once in the background on the one device, then wait: the same steps still
# mean the same tokens; recorded in OUT/finetune/schedule.json), DEVICE (eval device; cpu in the dry run),
# TRAIN_EXTRA (more recipes/finetune.py flags, e.g. "--batch-size 1 --max-steps 2" for a CPU rehearsal).
#
# DRY_RUN=1: the same commands with a 2-layer, width-64 byte Llama (byte-llama-dry.json) trained 3 steps at 512
# tokens (the passkey documents of retrieval_mix need 400 bytes) on the pydoc prose, the suite at the same
# 0.5x-8x lengths of that (eval/suites/rope-base-gpu-dry.yaml): no GPU, no books, the same files
# (tests/test_rope_base_gpu.py runs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source eval/studies/lib.sh
PYTHON=${PYTHON:-.venv/bin/python}
LONGCTX=${LONGCTX:-"$PYTHON -m longctx"}
DRY_RUN=${DRY_RUN:-0}
PARALLEL=${PARALLEL:-0}
TRAIN_MINUTES=${TRAIN_MINUTES:-}
BOOKS=${BOOKS:-../shared/data/books}
CONFIGS=recipes/configs/rope-base-gpu
BASES=(1e4 1e5 1e6)
STAGES=${*:-train eval report}

if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-${TMPDIR:-/tmp}/rope-base-gpu-dry-run}
  MODELS=${MODELS:-$OUT/.models}  # models of a dry run never mix with the real ones
  DEVICE=${DEVICE:-cpu}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # toy sizes: more threads only contend
  SUITE=eval/suites/rope-base-gpu-dry.yaml
  TRAIN_ARGS=(--model-config "$CONFIGS/byte-llama-dry.json" --data pydoc --seq-len 512 --batch-size 2
              --max-steps 3 --warmup-steps 1 --save-every 1)
else
  MODELS=${MODELS:-.cache/rope-base-gpu}
  DEVICE=${DEVICE:-}
  SUITE=eval/suites/rope-base-gpu.yaml
  TRAIN_ARGS=()
  if [ -z "${OUT:-}" ] && [ "$STAGES" != mixcheck ]; then  # named after the GPU: rope-base-h200, -h100, ...
    gpu=$($PYTHON -c "from bench.common import device_slug; print(device_slug())")
    [ "$gpu" != cpu ] || { echo "no CUDA GPU here: give OUT=... to run the real study on CPU (DRY_RUN=1 runs every stage on CPU with tiny models)" >&2; exit 2; }
    OUT=docs/results/rope-base-$gpu
  fi
fi
[ -z "$TRAIN_MINUTES" ] || TRAIN_ARGS+=(--max-minutes "$TRAIN_MINUTES")
read -r -a extra <<< "${TRAIN_EXTRA:-}"; TRAIN_ARGS+=("${extra[@]}")  # e.g. TRAIN_EXTRA="--batch-size 1" for a rehearsal

needs_books() {
  [ "$DRY_RUN" = 1 ] || [ -d "$BOOKS" ] || { echo "this study needs the books in $BOOKS (BOOKS=... to point elsewhere)" >&2; exit 2; }
}
train_one() {  # base: train unless its export exists; resume a stopped run; logs and run record into OUT
  local base=$1 name=scratch-base$1 out=$MODELS/scratch-base$1 args=()
  if [ ! -f "$out/config.json" ]; then
    if [ -d "$out/checkpoints" ]; then args+=(--resume)
    elif [ -e "$out" ]; then args+=(--force); fi  # stopped before its first checkpoint: start over
    $PYTHON recipes/finetune.py --config "$(with_books "$CONFIGS/$name.yaml" "$MODELS/configs")" "${TRAIN_ARGS[@]}" "${args[@]}" \
      --out "$out" --report-to none
  fi
  mkdir -p "$OUT/finetune/$name"
  cp "$out/train_log.jsonl" "$out/finetune_args.json" "$out/runs.jsonl" "$OUT/finetune/$name/"
  cp "$out/README.md" "$OUT/finetune/$name/model-card.md"
}
train() {
  needs_books
  mkdir -p "$MODELS" "$OUT/finetune"
  local started; started=$(date -u +%FT%TZ)
  if [ "$PARALLEL" = 1 ]; then  # the three at once on the one device; each logs to MODELS/<name>.log
    local pids=() failed=0
    for base in "${BASES[@]}"; do
      train_one "$base" > "$MODELS/scratch-base$base.log" 2>&1 &
      pids+=($!)
    done
    for i in "${!pids[@]}"; do
      wait "${pids[$i]}" || { failed=1; echo "training base ${BASES[$i]} failed: see $MODELS/scratch-base${BASES[$i]}.log" >&2; tail -5 "$MODELS/scratch-base${BASES[$i]}.log" >&2; }
    done
    for base in "${BASES[@]}"; do cp "$MODELS/scratch-base$base.log" "$OUT/finetune/scratch-base$base/stdout.log" 2>/dev/null || true; done
    [ "$failed" = 0 ] || exit 1
  else
    for base in "${BASES[@]}"; do train_one "$base"; done
  fi
  $PYTHON - "$OUT/finetune/schedule.json" "$PARALLEL" "$started" "$(date -u +%FT%TZ)" "$TRAIN_MINUTES" "${BASES[@]}" <<'PY'
import json, sys
from longctx.files import write_text_atomic
path, parallel, started, ended, minutes, *bases = sys.argv[1:]
write_text_atomic(path, json.dumps({"parallel": parallel == "1", "shared_device": parallel == "1",
                                    "started_utc": started, "ended_utc": ended,
                                    "max_minutes": float(minutes) if minutes else None,
                                    "models": [f"scratch-base{b}" for b in bases]}, indent=1) + "\n")
PY
}
evaluate() {
  needs_books
  local args=() labels=()
  for base in "${BASES[@]}"; do
    if [ -f "$MODELS/scratch-base$base/config.json" ]; then
      args+=(--model "$MODELS/scratch-base$base"); labels+=("scratch-base$base")
    else echo "skip scratch-base$base: not trained yet" >&2; fi
  done
  [ ${#labels[@]} -gt 0 ] || return 0
  local device=(); [ -n "$DEVICE" ] && device=(--device "$DEVICE")
  $LONGCTX eval suite "$(with_books "$SUITE" "$MODELS/configs")" "${args[@]}" --labels "$(IFS=,; echo "${labels[*]}")" \
    "${device[@]}" --out "$OUT"
}

mixcheck() {  # on CPU: does the real configs' mix train? A tiny model, the same data and mix fractions, 300 steps
  needs_books
  local out=${MIXCHECK_OUT:-docs/results/rope-base-gpu-mixcheck} model=$MODELS/mixcheck
  local steps=${MIXCHECK_STEPS:-400} arch=recipes/configs/rope-base-scratch/byte-llama-4x256.json args=()
  [ "$DRY_RUN" = 1 ] && steps=3 arch=$CONFIGS/byte-llama-dry.json
  [ -d "$model/checkpoints" ] && args+=(--resume)
  mkdir -p "$MODELS" "$out"
  [ -f "$model/config.json" ] || $PYTHON recipes/finetune.py --config "$(with_books "$CONFIGS/scratch-base1e4.yaml" "$MODELS/configs")" \
    --model-config "$arch" --seq-len 512 --batch-size 2 --max-steps "$steps" --warmup-steps 20 --lr 1e-3 \
    --save-every 100 --log-every 1 "${args[@]}" --out "$model" --report-to none "${TRAIN_ARGS[@]}"
  cp "$model/train_log.jsonl" "$model/finetune_args.json" "$model/runs.jsonl" "$out/"
  # does the tiny model copy at all (passkey keys, dense copy documents)? what the lease's 85M models must do
  $PYTHON eval/studies/copy_probe.py "$model" > "$out/copy_probe.txt"
  $PYTHON eval/studies/rope_base_gpu_report.py --mixcheck "$out"
}

for stage in $STAGES; do
  case $stage in
    train) train ;;
    eval) evaluate ;;
    report) $PYTHON eval/studies/rope_base_gpu_report.py "$OUT" ;;
    mixcheck) mixcheck ;;
    *) echo "unknown stage $stage: use train, eval, report, mixcheck" >&2; exit 2 ;;
  esac
done
