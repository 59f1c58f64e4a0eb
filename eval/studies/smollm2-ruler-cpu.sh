#!/usr/bin/env bash
# RULER and Kamradt's needle in a haystack on SmolLM2-135M-Instruct (trained to 8K) on CPU, into
# docs/results/smollm2-ruler-cpu/ (report.md with RULER's table layout and Kamradt's heatmap, one folder per model,
# every sample journaled; perplexity of the same checkpoints read from docs/results/smollm2-extension-cpu, so the
# report's SUPERFICIAL check can run). See the page for what has run and what it cost.
#   original, YaRN x2 and base 1e6 (the models of docs/results/smollm2-extension-cpu), chat template on,
#   essay haystack = ../shared/data/books, fp32;
#   4k, 8k: niah_single_1/2/3, niah_multikey_1, vt at that length, 10 samples per cell (4k8k: both);
#   16k:    niah_single_2 and vt at 16K, 10 samples per cell;
#   kamradt: Kamradt's needle at 2K, 4K, 8K, 16K x depths 0, 25, 50, 75, 100%, 1 sample per cell (his protocol),
#            haystack ../shared/data/books, graded by key phrases ("sandwich", "Dolores Park");
#   kamradt-smoke: Kamradt at 2K x depths 0, 50, 100%, original only (3 of the kamradt stage's cells).
# Every cell resumes at its next sample: rerun the same command to continue (stages in any order, in parts).
#
#   bash eval/studies/smollm2-ruler-cpu.sh                 # 4k, kamradt, 8k, 16k, every model
#   bash eval/studies/smollm2-ruler-cpu.sh kamradt         # the Kamradt heatmaps only
#   MODELS_RUN="original" bash eval/studies/smollm2-ruler-cpu.sh 8k
set -euo pipefail
cd "$(dirname "$0")/../.."
LONGCTX=${LONGCTX:-.venv/bin/longctx}
MODELS=${LONGCTX_CACHE:-.cache}/extension
OUT=${OUT:-docs/results/smollm2-ruler-cpu}
SAMPLES=${SAMPLES:-10}
MODELS_RUN=${MODELS_RUN:-original yarn-x2 base-1e6}
PPL_FROM=${PPL_FROM-docs/results/smollm2-extension-cpu}  # perplexity of the same checkpoints ('' = none)
STAGES=${*:-4k kamradt 8k 16k}
BOOKS=../shared/data/books
[ -d "$BOOKS" ] || { echo "this study needs $BOOKS (the essay haystack)" >&2; exit 2; }

declare -A PATCH=([yarn-x2]="--method yarn --factor 2" [base-1e6]="--base 1e6 --target-length 16384")

model() {  # label -> the --model argument (patched checkpoints written once, then reused)
  if [ "$1" = original ]; then echo smollm2; return; fi
  [ -d "$MODELS/$1" ] || $LONGCTX patch --model smollm2 --out "$MODELS/$1" ${PATCH[$1]} >&2
  echo "$MODELS/$1"
}

ruler() {  # label lengths tasks samples
  $LONGCTX eval ruler --model "$(model "$1")" --label "$1" --lengths "$2" --tasks "$3" --samples "$4" \
    --haystack-dir "$BOOKS" --chat-template on --past-context --out "$OUT"
}

kamradt() {  # label lengths depths
  $LONGCTX eval kamradt --model "$(model "$1")" --label "$1" --lengths "$2" --depths "$3" \
    --haystack-dir "$BOOKS" --chat-template on --past-context --out "$OUT"
}

for stage in $STAGES; do
  case $stage in
    4k8k|4k|8k) lengths=${stage/4k8k/4k,8k}
      for m in $MODELS_RUN; do ruler "$m" "$lengths" niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,vt "$SAMPLES"; done ;;
    16k)  for m in $MODELS_RUN; do ruler "$m" 16k niah_single_2,vt "$SAMPLES"; done ;;
    kamradt) for m in $MODELS_RUN; do kamradt "$m" 2k,4k,8k,16k 0:1:5; done ;;
    kamradt-smoke) kamradt original 2k 0,0.5,1 ;;
    *) echo "unknown stage $stage (4k, 8k, 4k8k, 16k, kamradt, kamradt-smoke)" >&2; exit 2 ;;
  esac
done
$LONGCTX report "$OUT" ${PPL_FROM:+--ppl-from "$PPL_FROM"}
