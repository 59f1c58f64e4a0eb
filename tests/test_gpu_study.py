"""`make study-gpu` and `make bench-gpu` run end to end on CPU in their dry-run shape, so they do not rot while
no GPU is around: every stage of eval/studies/smollm2-extension-gpu.sh (DRY_RUN=1: a tiny random Llama, lengths
64x shorter, 2 fine-tune steps) and both sections of bench/gpu.py (--dry-run: the tiny shape, toy lengths) write
the files the real runs write. Nothing here judges a number: they are toy-sized, on a shared CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is imported as a package from the repository root
    sys.path.insert(0, str(ROOT))
STUDY = ROOT / "eval" / "studies" / "smollm2-extension-gpu.sh"
TRAINING_FREE = ["original", "linear-x8", "ntk-x8", "dynamic-x8", "yarn-x8", "llama3-x8", "base-3.1e7"]
TUNED = ["yarn-x8-lora", "yarn-x8-pose64k-lora", "base-3.1e7-lora", "base-3.1e7-pose64k-lora"]
TUNED_CONFIGS = ["smollm2-135m-yarn8-books8k.yaml", "smollm2-135m-yarn8-books8k-pose64k.yaml",
                 "smollm2-135m-base3.1e7-books8k.yaml", "smollm2-135m-base3.1e7-books8k-pose64k.yaml"]


def interpreter_env(**extra) -> dict:
    """This interpreter and its `longctx` for the scripts (not necessarily .venv), plus `extra`."""
    longctx = Path(sys.executable).parent / "longctx"
    return {**os.environ, "PYTHON": sys.executable,
            "LONGCTX": str(longctx) if longctx.exists() else f"{sys.executable} -m longctx", **extra}


def run(command: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    return done


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_study_dry_run_writes_the_report_of_every_model_and_stage(tmp_path):
    out = tmp_path / "study"
    env = interpreter_env(DRY_RUN="1", OUT=str(out), MODELS=str(tmp_path / "models"))
    run(["bash", str(STUDY), "ppl", "finetune", "tuned", "retrieval", "report"], env)  # the default stages + report

    for name in ("report.md", "report.html", "summary.json", "ppl_vs_length.png", "passkey_heatmaps.png",
                 "niah_heatmaps.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    models = {m["label"]: m for m in summary["models"]}
    assert set(models) == set(TRAINING_FREE + TUNED)
    report = (out / "report.md").read_text()
    for label, model in models.items():
        assert f"**{label}**" in report
        assert model["trained_length"] == 128
        for task in ("ppl", "passkey", "niah"):  # every model went through the ppl and the retrieval stage
            values = [row[task] for row in model["by_length"] if row.get(task) is not None]
            assert values and all(math.isfinite(v) for v in values), (label, task)
            assert lines(out / label / f"{task}.jsonl"), (label, task)
        (record,) = lines(out / label / "runs.jsonl")[-1:]
        assert record["command"] and record["wall_seconds"] >= 0 and "machine" in record
    assert models["original"]["claimed_length"] == 128
    assert all(models[label]["claimed_length"] == 1024 for label in TRAINING_FREE[1:] + TUNED)
    for label in TUNED:  # the fine-tune stage: logs and run record beside the results
        folder = out / "finetune" / label
        steps = [r for r in lines(folder / "train_log.jsonl") if "loss" in r]
        assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
        (record,) = lines(folder / "runs.jsonl")
        assert "recipes/finetune.py" in record["command"] and record["wall_seconds"] > 0
        args = json.loads((folder / "finetune_args.json").read_text())
        assert args["seq_len"] == 128 and args["pose_target_length"] == (1024 if "pose" in label else None), label


def test_bench_dry_run_writes_every_number_of_the_gpu_bench(tmp_path):
    out = tmp_path / "bench"
    run([sys.executable, "bench/gpu.py", "--dry-run", "--out", str(out)], interpreter_env())
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["dry_run"] is True and results["run"]["wall_seconds"] > 0
    assert {"command", "commit", "machine"} <= set(results["run"])

    ppl = results["ppl"]
    assert [row["length"] for row in ppl["rows"]] == [128, 256]
    for row in ppl["rows"]:
        for variant in ("longctx", "naive"):
            cell = row[variant]
            assert "error" not in cell, cell
            for key in ("seconds", "tokens_per_s", "ppl"):
                assert math.isfinite(cell[key]) and cell[key] > 0, (variant, key)
            assert isinstance(cell["peak_bytes"], int)
        assert row["ppl_rel_diff"] < 1e-4  # the chunked loss computes the naive loss
    assert ppl["growth_exponent"]["longctx"] is not None

    lora = results["lora"]
    result = lora["result"]
    assert "error" not in result, result
    assert lora["seq_len"] == 64 and result["measured_steps"] == 2
    for key in ("tokens_per_s", "seconds_per_step", "mfu_vs_measured_peak"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["mfu_vs_datasheet"] is None  # a CPU has no data-sheet peak
    # 4N + 12·L·d·T for the tiny shape: 2 layers, 4 heads of 16, T = 64
    assert result["flops_per_token"] == 4 * result["non_embedding_params"] + 12 * 2 * 4 * 16 * 64
    assert 0 < result["trainable_params"] < result["non_embedding_params"]
    trainer = lora["trainer"]  # the baseline: the same step through transformers' Trainer
    assert "error" not in trainer, trainer
    assert trainer["impl"] == "trainer" and trainer["measured_steps"] == 2 and trainer["tokens_per_s"] > 0
    assert lora["speedup_vs_trainer"] == pytest.approx(result["tokens_per_s"] / trainer["tokens_per_s"])
    for section in ("ppl", "lora"):
        assert {"command", "device", "commit", "machine", "versions"} <= set(results[section]["environment"])
        assert results[section]["bench_seconds"] > 0

    readme = (out / "README.md").read_text()
    assert "DRY RUN" in readme and "## Run" in readme and "wall time" in readme
    assert "tok/s" in readme and "MFU" in readme and "4N + 12·L·d·T" in readme and "| Trainer |" in readme


def test_bench_and_study_refuse_to_run_the_real_thing_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real runs would start")
    from bench import gpu

    assert gpu.main(["--out", str(tmp_path / "bench")]) == 2
    env = interpreter_env(OUT=str(tmp_path / "study"), MODELS=str(tmp_path / "models"), BOOKS=str(tmp_path))
    done = subprocess.run(
        ["bash", str(STUDY), "retrieval"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "DRY_RUN=1" in done.stderr
    assert not (tmp_path / "bench").exists() and not (tmp_path / "study").exists()


def test_the_real_study_trains_on_two_books_and_evaluates_on_the_two_others():
    suite = yaml.safe_load((ROOT / "eval" / "suites" / "extension-64k-ppl.yaml").read_text())["tasks"]["ppl"]
    evaluated = {Path(p).name for p in suite["data"].split(",")}
    for name in TUNED_CONFIGS:
        config = yaml.safe_load((ROOT / "recipes" / "configs" / name).read_text())
        trained = {Path(p).name for p in config["data"].split(",")}
        assert len(trained) == 2 and not trained & evaluated, name
        assert config["seq_len"] == 8192 and config["attn_implementation"] == "sdpa", name
        assert config.get("pose_target_length") == (65536 if "pose" in name else None), name
    assert len(evaluated) == 2
