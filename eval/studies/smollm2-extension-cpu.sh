#!/usr/bin/env bash
# Context extension of SmolLM2-135M (trained to 8K) on CPU, measured by longctx's own harness, into
# docs/results/smollm2-extension-cpu/ (report.md, report.html, summary.json, PNGs, one folder per model).
#   ppl:      the original against every training-free method `longctx patch` writes, at scale 2 (8K -> 16K),
#             perplexity 2K-16K on 8 single-document windows per length from the 4 books of ../shared/data/books;
#   passkey:  12K and 16K, 5 trials x 3 depths, for every model of PASSKEY_MODELS (the fine-tunes once trained);
#   finetune: YaRN x2 + LoRA at 2K tokens on the two other books, with PoSE skips to 16K and without;
#   tuned:    perplexity of both tuned models and of YaRN x2 (their base) on 8 windows of the two books they did
#             not train on (then passkey again adds them);
#   control:  passkey at 4K and 8K for the original: retrieval inside the trained window;
#   controls: passkey at 8K for every other model but dynamic NTK (the original's up to 8K): each one's control;
#   niah:     NIAH in the books at 12K and 16K (+ the 8K control), 10 trials per length, for NIAH_MODELS, into
#             NIAH_OUT (docs/results/smollm2-niah-books-cpu: a page of its own, its verdicts on NIAH alone);
#   generate: YaRN x2 and dynamic NTK x2 at depths 0.5 and 1 again, graded by greedy generation.
# Every stage resumes where it stopped (cells, trials and training checkpoints): rerun to continue.
#
#   make extension-cpu                          # all stages (hours on 2 cores: spread over sessions)
#   bash eval/studies/smollm2-extension-cpu.sh ppl passkey     # chosen stages
#   PASSKEY_MODELS="original yarn-x2" bash eval/studies/smollm2-extension-cpu.sh passkey
#   PASSKEY_SUITE=eval/suites/extension-passkey-12k.yaml bash eval/studies/smollm2-extension-cpu.sh passkey
#   OUT=.cache/studies/x bash eval/studies/smollm2-extension-cpu.sh ppl   # into a staging folder: see collect_staged.py
set -euo pipefail
cd "$(dirname "$0")/../.."
source eval/studies/lib.sh
LONGCTX=${LONGCTX:-.venv/bin/longctx}
PYTHON=${PYTHON:-.venv/bin/python}
MODELS=${LONGCTX_CACHE:-.cache}/extension
OUT=${OUT:-docs/results/smollm2-extension-cpu}
PASSKEY_SUITE=${PASSKEY_SUITE:-eval/suites/extension-passkey.yaml}  # or its 12K half, same cells
PPL_SUITE=${PPL_SUITE:-eval/suites/extension-ppl-8w.yaml}  # extension-ppl.yaml: the first 2-window plan
NIAH_MODELS=${NIAH_MODELS:-original yarn-x2 base-1e6}  # the models the README's retrieval claims name
PASSKEY_MODELS=${PASSKEY_MODELS:-original yarn-x2 base-1e6 dynamic-x2 ntk-x2 llama3-x2 linear-x2 yarn-x2-pose16k-lora yarn-x2-lora}
STAGES=${*:-ppl passkey finetune tuned passkey control generate}  # passkey twice: the tuned models join once they exist
[ -d ../shared/data/books ] || { echo "this study needs ../shared/data/books (long single documents)" >&2; exit 2; }

declare -A PATCH=(
  [linear-x2]="--method linear --factor 2"
  [ntk-x2]="--method ntk --factor 2"
  [dynamic-x2]="--method dynamic --factor 2"
  [yarn-x2]="--method yarn --factor 2"
  [llama3-x2]="--method llama3 --factor 2"
  [base-1e6]="--base 1e6 --target-length 16384"
)
declare -A TUNED=(  # label -> recipe config (its `out` is the adapter folder)
  [yarn-x2-pose16k-lora]=recipes/configs/smollm2-135m-yarn2-books2k-pose16k.yaml
  [yarn-x2-lora]=recipes/configs/smollm2-135m-yarn2-books2k.yaml
)
TRAINING_FREE=(original linear-x2 ntk-x2 dynamic-x2 yarn-x2 llama3-x2 base-1e6)

source_of() {
  case "$1" in
    original) echo smollm2 ;;
    *-lora) echo "$(config_out "${TUNED[$1]}")" ;;
    *) echo "$MODELS/$1" ;;
  esac
}
suite() {  # suite.yaml label...
  local file=$1; shift; local args=() labels=()
  for name in "$@"; do args+=(--model "$(source_of "$name")"); labels+=("$name"); done
  $LONGCTX eval suite "$file" "${args[@]}" --labels "$(IFS=,; echo "${labels[*]}")" --out "$OUT"
}

for stage in $STAGES; do
  case $stage in
    ppl)
      for name in "${TRAINING_FREE[@]}"; do
        [ "$name" = original ] || [ -d "$MODELS/$name" ] || $LONGCTX patch --model smollm2 --out "$MODELS/$name" ${PATCH[$name]}
      done
      suite "$PPL_SUITE" "${TRAINING_FREE[@]}" ;;
    finetune)
      for name in yarn-x2-pose16k-lora yarn-x2-lora; do
        config=${TUNED[$name]}; out=$(config_out "$config")
        if [ -f "$out/adapter_config.json" ]; then continue; fi
        resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
        $PYTHON recipes/finetune.py --config "$config" "${resume[@]}" --report-to none
      done ;;
    tuned) suite eval/suites/extension-ppl-heldout.yaml yarn-x2 yarn-x2-lora yarn-x2-pose16k-lora ;;
    passkey)
      ready=()
      for name in $PASSKEY_MODELS; do  # tuned models count once their adapter exists
        if [[ $name != *-lora ]] || [ -f "$(source_of "$name")/adapter_config.json" ]; then ready+=("$name"); fi
      done
      suite "$PASSKEY_SUITE" "${ready[@]}" ;;
    control) suite eval/suites/extension-passkey-control.yaml original ;;
    niah) OUT=${NIAH_OUT:-docs/results/smollm2-niah-books-cpu} suite eval/suites/extension-niah-books.yaml $NIAH_MODELS ;;
    controls) suite eval/suites/extension-passkey-control-8k.yaml yarn-x2 base-1e6 ntk-x2 llama3-x2 linear-x2 \
      yarn-x2-lora yarn-x2-pose16k-lora ;;
    generate) suite eval/suites/extension-passkey-generate.yaml yarn-x2 dynamic-x2 ;;
    *) echo "unknown stage $stage: use ppl, finetune, tuned, passkey, control, controls, niah, generate" >&2; exit 2 ;;
  esac
done
