"""eval/studies/rope-base-gpu.sh end to end in its dry run: three tiny byte models trained at once
with equal steps, the eval suite, and the study's page with a row per base and a column per length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASES = ("1e4", "1e5", "1e6")
LENGTHS = ("256", "512", "768", "1K", "2K", "4K")  # eval/suites/rope-base-gpu-dry.yaml


def test_dry_run_trains_three_equal_models_and_writes_the_report(tmp_path):
    out, models = tmp_path / "out", tmp_path / "models"
    env = {**os.environ, "DRY_RUN": "1", "PARALLEL": "1", "OUT": str(out), "MODELS": str(models),
           "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(ROOT / "eval/studies/rope-base-gpu.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = set()
    for base in BASES:
        name = f"scratch-base{base}"
        assert (models / name / "config.json").is_file()
        run = out / "finetune" / name
        for file in ("train_log.jsonl", "runs.jsonl", "finetune_args.json", "model-card.md", "stdout.log"):
            assert (run / file).is_file(), file
        steps.add(json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["step"])
        assert json.loads((run / "runs.jsonl").read_text().splitlines()[-1])["command"]
        for task in ("ppl", "passkey"):
            assert (out / name / f"{task}.jsonl").is_file()
    assert steps == {3}  # equal steps: equal tokens
    assert json.loads((out / "finetune" / "schedule.json").read_text())["parallel"] is True
    page = (out / "README.md").read_text()
    assert (out / "rope-base.png").stat().st_size > 0
    header = next(line for line in page.splitlines() if line.startswith("| model | base |"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == list(LENGTHS)
    for base in BASES:
        rows = [line for line in page.splitlines() if line.startswith(f"| scratch-base{base} |")]
        assert len(rows) >= 2  # bits per byte and passkey
        assert all(len(row.strip("|").split("|")) == 2 + len(LENGTHS) for row in rows[:2])
        assert f"| {float(base):g} | " in page  # lower-bound and side-by-side rows
    assert "Lower bound of the base" in page and "original experiment" in page
    # resumable: a rerun trains nothing again and keeps the same files
    again = subprocess.run(["bash", str(ROOT / "eval/studies/rope-base-gpu.sh"), "train", "report"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "scratch-base1e4" in (out / "README.md").read_text()


def test_mixcheck_dry_run_writes_the_loss_curve_and_the_copy_probe(tmp_path):
    """`rope-base-gpu.sh mixcheck` (the CPU check that the configs' data mix trains) in its 3-step dry shape."""
    out = tmp_path / "mixcheck"
    env = {**os.environ, "DRY_RUN": "1", "MIXCHECK_OUT": str(out), "MODELS": str(tmp_path / "models"),
           "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(ROOT / "eval/studies/rope-base-gpu.sh"), "mixcheck"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (out / "README.md").read_text()
    assert "| mean loss (nats/byte) |" in page and "retrieval_mix 0.2" in page and "copy_mix 0.2" in page
    assert "uniform over digits" in (out / "copy_probe.txt").read_text()  # the probe ran on the trained model
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["step"] == 3
