"""`kill -9` at chosen points of patch, eval and fine-tune, then a rerun: the final files equal those of an
uninterrupted run, and nothing is left behind.

The process kills itself at a named point (LONGCTX_KILL_AT=NAME[@N], `longctx.files.kill_point`): exact
and repeatable, unlike a timer. The killed runs are separate processes started together; the uninterrupted
run and the reruns run in this process (they are ordinary runs), which keeps the whole file near a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from result_cells import cells_by_key

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
LONGCTX = Path(sys.executable).parent / "longctx"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run_all(commands: dict[str, tuple[list[str], Path, str | None]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every (argv, cwd, kill point) at once; wait for all."""
    procs = {}
    for name, (argv, cwd, point) in commands.items():
        env = {**ENV, "LONGCTX_KILL_AT": point} if point else ENV
        procs[name] = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])


# ------------------------------------------------------------------------------------------------ patch
PATCH_POINTS = ["patch:placed@2", "patch:complete", "publish:moved-aside"]


def without_timestamps(path: Path) -> dict[str, bytes]:
    """Every file under path; the record and card lose their creation time and the process's torch thread count
    (what a rerun, or a run in another process, changes)."""
    files = {}
    for item in sorted(path.rglob("*")):
        if item.is_file():
            data = item.read_bytes()
            if item.name in ("README.md", "longctx_patch.json"):
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", b"TIME", data)
                data = re.sub(rb'"torch_threads": \d+', b'"torch_threads": N', data)
            files[str(item.relative_to(path))] = data
    return files


def in_folder(monkeypatch, folder: Path, argv: list[str], run) -> int:
    monkeypatch.chdir(folder)
    try:
        return run(argv)
    finally:
        monkeypatch.undo()


def test_kill_9_during_patch_then_rerun_gives_the_uninterrupted_result(tiny_llama_dir, tmp_path, monkeypatch):
    from longctx.cli import main

    patch = ["patch", "--model", "src", "--copy", "--base", "1e6", "--out", "out", "--force"]
    folders = {}
    for name in ["straight", *PATCH_POINTS]:
        folder = folders[name] = tmp_path / name.replace(":", "-").replace("@", "-")
        shutil.copytree(tiny_llama_dir, folder / "src")
        # --force over an earlier output: killed between moving it aside and the rename
        if name == "publish:moved-aside":
            assert (
                in_folder(monkeypatch, folder, ["patch", "--model", "src", "--base", "2e6", "--out", "out"], main) == 0
            )
    killed = run_all({name: ([str(LONGCTX), *patch], folders[name], name) for name in PATCH_POINTS})
    for name in PATCH_POINTS:
        assert_killed(killed[name])
        assert any(p.name.startswith(".out.longctx-") for p in folders[name].iterdir()), (
            "the kill left no partial folder"
        )
    for folder in folders.values():
        assert in_folder(monkeypatch, folder, patch, main) == 0
    expected = without_timestamps(folders["straight"] / "out")
    for name in PATCH_POINTS:
        assert without_timestamps(folders[name] / "out") == expected, name
        assert sorted(p.name for p in folders[name].iterdir()) == ["out", "src"], "leftovers of the killed run"
        assert without_timestamps(folders[name] / "src") == without_timestamps(tiny_llama_dir)


def test_an_output_moved_aside_by_a_killed_force_run_comes_back(tiny_llama_dir, tmp_path):
    """Killed between the two renames of --force: the next run (even without --force) restores the old output
    first, and then refuses to replace it without --force."""
    from longctx.cli import main

    shutil.copytree(tiny_llama_dir, tmp_path / "src")
    assert main(["patch", "--model", str(tmp_path / "src"), "--base", "2e6", "--out", str(tmp_path / "out")]) == 0
    killed = run_all(
        {
            "k": (
                [str(LONGCTX), "patch", "--model", "src", "--base", "1e6", "--out", "out", "--force"],
                tmp_path,
                "publish:moved-aside",
            )
        }
    )
    assert_killed(killed["k"])
    assert not (tmp_path / "out").exists()
    assert main(["patch", "--model", str(tmp_path / "src"), "--base", "1e6", "--out", str(tmp_path / "out")]) == 2
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rope_theta"] == 2e6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ------------------------------------------------------------------------------------------------- eval
# One length, two depths, two trials: 4 journaled trials (2 per trial, each trial scores both depths), then 2 cells.
EVAL_POINTS = ["results:journaled@2", "results:appended@1", "jsonl:torn@3"]


def cells(folder: Path) -> dict[str, dict]:
    """Finished cells by key, without their timings."""
    return cells_by_key(folder / "results" / "tiny" / "passkey.jsonl")


def test_kill_9_during_eval_then_rerun_gives_the_uninterrupted_cells(tiny_llama_dir, tmp_path, monkeypatch):
    from longctx.cli import main

    tiny = tmp_path / "tiny"
    shutil.copytree(tiny_llama_dir, tiny)
    argv = ["eval", "passkey", "--model", str(tiny), "--lengths", "160", "--depths", "0:1:2", "--trials", "2",
            "--out", "results"]
    folders = {name: tmp_path / name.replace(":", "-").replace("@", "-") for name in ["straight", *EVAL_POINTS]}
    for folder in folders.values():
        folder.mkdir()
    killed = run_all({name: ([str(LONGCTX), *argv], folders[name], name) for name in EVAL_POINTS})
    for name in EVAL_POINTS:
        assert_killed(killed[name])
    for folder in folders.values():
        assert in_folder(monkeypatch, folder, argv, main) == 0
    expected = cells(folders["straight"])
    assert len(expected) == 2
    for name in EVAL_POINTS:
        assert cells(folders[name]) == expected, name
        assert (folders[name] / "results" / "tiny" / "model.json").is_file()


# ------------------------------------------------------------------------------------------------ fine-tune
# 4 steps, checkpoints after steps 2 and 4: killed while writing step 3's log line, while saving the step-4
# checkpoint (before its rename), and after the adapter was exported but before the model card.
FINETUNE_POINTS = ["jsonl:torn@3", "checkpoint:saved@2", "export:saved"]


def recipe_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli


def test_kill_9_during_finetune_then_resume_gives_the_uninterrupted_adapter(tiny_llama_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    (tmp_path / "docs.jsonl").write_text("".join(
        json.dumps({"text": f"The grass is green. The sky is blue. Here we go {i}. " * 6}) + "\n" for i in range(8)))
    common = ["--model", str(tiny_llama_dir), "--base", "1e5", "--data", str(tmp_path / "docs.jsonl"),
              "--seq-len", "32", "--batch-size", "2", "--max-steps", "4", "--save-every", "2", "--lr", "5e-3",
              "--warmup-steps", "1", "--lora-dropout", "0.1", "--report-to", "none", "--out", "run"]
    folders = {name: tmp_path / name.replace(":", "-").replace("@", "-") for name in ["straight", *FINETUNE_POINTS]}
    for folder in folders.values():
        folder.mkdir()
    killed = run_all({name: ([sys.executable, str(RECIPE), *common], folders[name], name) for name in FINETUNE_POINTS})
    for name in FINETUNE_POINTS:
        assert_killed(killed[name])
    cli = recipe_cli()
    assert in_folder(monkeypatch, folders["straight"], common, cli) == 0
    for name in FINETUNE_POINTS:
        assert in_folder(monkeypatch, folders[name], [*common, "--resume"], cli) == 0

    def losses(folder):
        return {
            r["step"]: r["loss"] for r in map(json.loads, (folder / "run" / "train_log.jsonl").read_text().splitlines())
        }

    straight = folders["straight"] / "run"
    expected = load_file(straight / "adapter_model.safetensors")
    for name in FINETUNE_POINTS:
        run = folders[name] / "run"
        assert losses(folders[name]) == pytest.approx(losses(folders["straight"]), abs=1e-6), name
        got = load_file(run / "adapter_model.safetensors")
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)
        assert (run / "README.md").is_file()
        assert json.loads((run / "base" / "config.json").read_text()) == json.loads(
            (straight / "base" / "config.json").read_text()
        )
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"], name
        assert not [p for p in run.rglob(".*") if "longctx-" in p.name or ".tmp-" in p.name], name


def test_a_checkpoint_of_an_earlier_longctx_resumes_identically(tiny_llama_dir, tmp_path, monkeypatch):
    """Before the checkpoint format tag, the scheduler was accelerate's custom_checkpoint_0.pkl and the RNG only
    accelerate's pickles: such a run still resumes exactly, every pickle read with weights_only=True."""
    from safetensors.torch import load_file

    (tmp_path / "docs.jsonl").write_text("".join(
        json.dumps({"text": f"The grass is green. The sky is blue. Here we go {i}. " * 6}) + "\n" for i in range(8)))
    common = [
        "--model",
        str(tiny_llama_dir),
        "--base",
        "1e5",
        "--data",
        str(tmp_path / "docs.jsonl"),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--lr",
        "5e-3",
        "--warmup-steps",
        "1",
        "--lora-dropout",
        "0.1",
        "--report-to",
        "none",
        "--out",
        "run",
    ]
    cli = recipe_cli()
    (tmp_path / "straight").mkdir()
    assert in_folder(monkeypatch, tmp_path / "straight", common, cli) == 0
    old = tmp_path / "old" / "run"
    shutil.copytree(tmp_path / "straight" / "run", old)
    shutil.rmtree(old / "checkpoints" / "step-000004")
    step = old / "checkpoints" / "step-000002"
    state = json.loads((step / "trainer_state.json").read_text())
    torch.save(state["scheduler"], step / "custom_checkpoint_0.pkl")  # what accelerate wrote for a registered scheduler
    (step / "trainer_state.json").write_text(
        json.dumps({"step": state["step"], "rows_consumed": state["rows_consumed"]})
    )
    (step / "rng_state_0.json").unlink()
    assert in_folder(monkeypatch, tmp_path / "old", [*common, "--resume"], cli) == 0
    expected, got = (
        load_file(tmp_path / "straight" / "run" / "adapter_model.safetensors"),
        load_file(old / "adapter_model.safetensors"),
    )
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)
