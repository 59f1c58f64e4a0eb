#!/usr/bin/env bash
# The rope-base findings reproduced from scratch on CPU into docs/results/rope-base-scratch/:
#   train:  byte-level 4x256 Llamas from random init at 512 tokens, base 500 / 1e4 / 1e5 / 1e6, equal tokens
#           and seed, 5% synthetic passkey documents in the mix (recipes/configs/rope-base-scratch/scratch-*.yaml);
#   tune:   the base-1e4 model trained on at 512 tokens with base 80 / 500 / 1e4 (control) / 1e5 / 1e6, equal steps
#           (tune-base1e4-to-*.yaml: arXiv 2310.05209's base change at the original length);
#   bound:  a base-1e4 model trained from scratch on dense copy text (so an induction circuit forms), then on
#           books with half of the text synthetic passkey documents, so that it retrieves within its context,
#           then trained on at 512 tokens with base 80 / 1e4 / 1e6 (bound-*.yaml: the lower bound of the base,
#           arXiv 2405.14591);
#   eval:   bits per byte and passkey at 1x-16x the training length on the held-out book
#           (eval/suites/rope-base-scratch.yaml);
#   report: the tables (bpb, Δbpb against each model's own 512-token bpb, measured vs predicted break point,
#           passkey by length) and plots (eval/studies/rope_base_report.py).
# Every stage resumes where it stopped (training checkpoints, eval cells): rerun to continue.
#
#   make reproduce-rope-base                      # all stages
#   bash eval/studies/rope-base-scratch.sh bound eval report
set -euo pipefail
cd "$(dirname "$0")/../.."
source eval/studies/lib.sh
LONGCTX=${LONGCTX:-.venv/bin/longctx}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/results/rope-base-scratch}
CONFIGS=recipes/configs/rope-base-scratch
SCRATCH=(scratch-base500 scratch-base1e4 scratch-base1e5 scratch-base1e6)
TUNED=(tune-base1e4-to-80 tune-base1e4-to-500 tune-base1e4-to-1e4 tune-base1e4-to-1e5 tune-base1e4-to-1e6)
BOUND=(bound-copy-base1e4 bound-scratch-base1e4 bound-tune-to-80 bound-tune-to-1e4 bound-tune-to-1e6)  # in order: each of the first two starts the next
STAGES=${*:-train tune bound eval report}
[ -d ../shared/data/books ] || { echo "this study needs ../shared/data/books (long single documents)" >&2; exit 2; }

train() {  # run name: train it unless its export exists; resume a stopped run
  local config=$CONFIGS/$1.yaml out; out=$(config_out "$config")
  [ -f "$out/config.json" ] && return 0
  local resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
  $PYTHON recipes/finetune.py --config "$config" "${resume[@]}" --report-to none
}

for stage in $STAGES; do
  case $stage in
    train) for name in "${SCRATCH[@]}"; do train "$name"; done ;;
    tune) for name in "${TUNED[@]}"; do train "$name"; done ;;
    bound) for name in "${BOUND[@]}"; do train "$name"; done ;;
    eval)
      args=(); labels=()
      for name in "${SCRATCH[@]}" "${TUNED[@]}" "${BOUND[@]:1}"; do  # not the copy warm-up (256 tokens, no passkey)
        out=$(config_out "$CONFIGS/$name.yaml")
        [ -f "$out/config.json" ] || { echo "skip $name: not trained yet" >&2; continue; }
        args+=(--model "$out"); labels+=("$name")
      done
      [ ${#labels[@]} -gt 0 ] && $LONGCTX eval suite eval/suites/rope-base-scratch.yaml "${args[@]}" \
        --labels "$(IFS=,; echo "${labels[*]}")" --out "$OUT" ;;
    report) $PYTHON eval/studies/rope_base_report.py "$OUT" ;;
    *) echo "unknown stage $stage: use train, tune, bound, eval, report" >&2; exit 2 ;;
  esac
done
