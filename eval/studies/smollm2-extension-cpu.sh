#!/usr/bin/env bash
# Training-free context extension of SmolLM2-135M (trained to 8K) on CPU, measured by longctx's own harness:
# the original against every method `longctx patch` writes, at scale 2 (8K -> 16K); perplexity at 2K-16K on
# single-document windows of the public-domain books in ../shared/data/books, then passkey at 12K and 16K
# for the original and the methods that hold perplexity. Resumable cell by cell: rerun to continue.
#
#   make extension-cpu                                   # everything (about 45 min + 30 min per passkey model)
#   PASSKEY_MODELS="original yarn-x2" make extension-cpu  # choose which models get the passkey grid
set -euo pipefail
cd "$(dirname "$0")/../.."
LONGCTX=${LONGCTX:-.venv/bin/longctx}
MODELS=${LONGCTX_CACHE:-.cache}/extension
OUT=${OUT:-docs/results/smollm2-extension-cpu}
PASSKEY_MODELS=${PASSKEY_MODELS:-original yarn-x2 dynamic-x2}
[ -d ../shared/data/books ] || { echo "this study needs ../shared/data/books (long single documents)" >&2; exit 2; }

declare -A PATCH=(
  [linear-x2]="--method linear --factor 2"
  [ntk-x2]="--method ntk --factor 2"
  [dynamic-x2]="--method dynamic --factor 2"
  [yarn-x2]="--method yarn --factor 2"
  [llama3-x2]="--method llama3 --factor 2"
  [base-1e6]="--base 1e6 --target-length 16384"
)
ORDER=(original linear-x2 ntk-x2 dynamic-x2 yarn-x2 llama3-x2 base-1e6)
source_of() { if [ "$1" = original ]; then echo smollm2; else echo "$MODELS/$1"; fi; }

for name in "${ORDER[@]}"; do
  [ "$name" = original ] || [ -d "$MODELS/$name" ] || $LONGCTX patch --model smollm2 --out "$MODELS/$name" ${PATCH[$name]}
done

args=(); labels=()
for name in "${ORDER[@]}"; do args+=(--model "$(source_of "$name")"); labels+=("$name"); done
$LONGCTX eval suite eval/suites/extension-ppl.yaml "${args[@]}" --labels "$(IFS=,; echo "${labels[*]}")" --out "$OUT"

args=(); labels=()
for name in $PASSKEY_MODELS; do args+=(--model "$(source_of "$name")"); labels+=("$name"); done
$LONGCTX eval suite eval/suites/extension-passkey.yaml "${args[@]}" --labels "$(IFS=,; echo "${labels[*]}")" --out "$OUT"
