"""recipes/finetune.py (a launcher of longctx.train.finetune) end to end on the tiny model (and, marked slow, the
real SmolLM2-135M)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finetune(*argv, callbacks=()) -> int:
    return _recipe().cli([str(a) for a in argv] + ["--report-to", "none"], callbacks=callbacks)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A few short documents, so runs take seconds and every row packs several documents."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": topics[k][:400]}) + "\n" for k in sorted(topics)[:12]))
    return path


def test_loss_falls_when_overfitting_one_batch(tiny_llama_dir, tmp_path):
    doc = tmp_path / "one.txt"
    doc.write_text("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 2)
    out = tmp_path / "run"
    rc = finetune("--model", tiny_llama_dir, "--base", "1e5", "--finetune", "full", "--data", doc, "--seq-len", 48,
                  "--max-steps", 25, "--lr", "3e-3", "--warmup-steps", 0, "--schedule", "constant",
                  "--gradient-checkpointing", "--out", out)
    assert rc == 0
    curve = losses(out)
    assert curve[25] < 0.5 * curve[1], curve
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 1e5 and config["rope_parameters"]["rope_theta"] == 1e5  # both schemas


class DieAfterSave:
    """A callback that interrupts the run right after the checkpoint of `step` is published (Ctrl-C there)."""

    def __init__(self, step: int):
        self.step, self.saved = step, []

    def on_save(self, state, path):
        self.saved.append(path)
        if state.step == self.step:
            raise KeyboardInterrupt(f"killed after the step-{self.step} checkpoint")


def test_kill_and_resume_continues_identically(tiny_llama_dir, corpus, tmp_path):
    common = ["--model", tiny_llama_dir, "--base", "1e5", "--data", corpus, "--seq-len", 64, "--batch-size", 2,
              "--grad-accum", 2, "--max-steps", 6, "--save-every", 3, "--lr", "5e-3", "--warmup-steps", 2,
              "--lora-dropout", "0.1", "--trainable-extra", "norm"]
    assert finetune(*common, "--out", tmp_path / "straight") == 0
    die = DieAfterSave(3)
    assert finetune(*common, "--out", tmp_path / "resumed", callbacks=[die]) == 130
    assert [p.name for p in die.saved] == ["step-000003"]
    half = tmp_path / "resumed" / "checkpoints" / ".step-000004.longctx-partial"
    half.mkdir()  # a half-written save is never resumed from, and is removed
    assert finetune(*common, "--out", tmp_path / "resumed", "--resume") == 0
    assert not half.exists()

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), (step, straight, resumed)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("norm" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("step-*"))) == 2  # keep_last
    changed = list(common)
    changed[changed.index("--seq-len") + 1] = 32
    assert finetune(*changed, "--out", tmp_path / "resumed", "--resume") == 2  # a resumed run keeps its data settings


def test_callbacks_see_every_step_each_checkpoint_and_the_end(tiny_llama_dir, corpus, tmp_path):
    from longctx.train.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.events = []

        def on_step(self, state):
            self.events.append(("step", state.step, state.tokens, round(state.loss, 6)))

        def on_save(self, state, path):
            self.events.append(("save", state.step, path.name))

        def on_end(self, summary):
            self.events.append(("end", summary["step"]))

    record = Record()
    out = tmp_path / "run"
    assert finetune("--model", tiny_llama_dir, "--data", corpus, "--seq-len", 32, "--max-steps", 3, "--save-every", 2,
                    "--out", out, callbacks=[record]) == 0
    logged = losses(out)
    assert record.events == [("step", 1, 32, logged[1]), ("step", 2, 64, logged[2]), ("save", 2, "step-000002"),
                             ("step", 3, 96, logged[3]), ("save", 3, "step-000003"), ("end", 3)]


def test_a_spent_time_budget_stops_after_the_step_saves_and_exports(tiny_llama_dir, corpus, tmp_path, monkeypatch):
    """--max-minutes (a GPU lease's stage budget): the step that spends it is the last, checkpointed and exported
    like step --max-steps, and the run record says the budget stopped it; a resume continues to --max-steps."""
    from longctx.train import loop

    ticks = iter(range(0, 10_000, 50))  # every read of the clock is 50 s later: step 2 ends past the 1.5 min
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(ticks)))
    out = tmp_path / "run"
    argv = ["--model", tiny_llama_dir, "--data", corpus, "--seq-len", 32, "--max-steps", 6, "--max-minutes", 1.5]
    assert finetune(*argv, "--out", out) == 0
    assert sorted(losses(out)) == [1, 2]
    assert (out / "adapter_config.json").is_file() and (out / "checkpoints" / "step-000002").is_dir()
    (record,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert record["stopped_by_time"] is True and record["step"] == 2
    monkeypatch.undo()  # the real clock again
    assert finetune(*argv, "--out", out, "--resume") == 0  # a fresh budget: the run reaches --max-steps
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["stopped_by_time"] is False
    assert finetune(*argv[:-2], "--max-minutes", 0, "--out", tmp_path / "bad") == 2


def test_lora_output_loads_with_the_patched_rope_and_merges(tiny_llama_dir, corpus, tmp_path):
    from longctx.modeling import load_model

    out = tmp_path / "run"
    assert finetune("--model", tiny_llama_dir, "--method", "yarn", "--factor", 4, "--data", corpus, "--seq-len", 64,
                    "--max-steps", 2, "--lr", "1e-2", "--merge", "--out", out) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == (out / "base").resolve()
    for directory in (out / "base", out / "merged"):
        config = json.loads((directory / "config.json").read_text())
        assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_scaling"]["factor"] == 4
        assert config["max_position_embeddings"] == 1024 and config["original_max_position_embeddings"] == 256
    model, _, _ = load_model(out, device="cpu")  # what `longctx eval OUT` does
    merged, _, _ = load_model(out / "merged", device="cpu")
    assert model.config.rope_parameters["rope_type"] == "yarn"
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "yarn" in card and "final training loss" in card
    assert json.loads((out / "finetune_args.json").read_text())["seq_len"] == 64


def test_scratch_init_trains_random_weights_of_the_same_architecture(tiny_llama_dir, corpus, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert finetune("--model", tiny_llama_dir, "--init", "scratch", "--finetune", "full", "--base", "5e5",
                    "--data", corpus, "--seq-len", 64, "--max-steps", 1, "--seed", 7, "--out", out) == 0
    source, trained = load_file(tiny_llama_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert source.keys() == trained.keys()
    assert not torch.allclose(
        source["model.layers.0.self_attn.q_proj.weight"], trained["model.layers.0.self_attn.q_proj.weight"], atol=1e-2
    )
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 5e5


BAD_INPUTS = {
    "unknown config key": (["--config", "{yaml}"], "unknown key 'seq_length'"),
    "missing data": (["--data", "{tmp}/nowhere.jsonl"], "does not exist"),
    "longer than trained": (["--seq-len", 512], "above the model's trained length 256"),
    "lora target absent": (["--lora-targets", "q_proj,wq"], "no linear layer named 'wq'"),
    "out exists": (["--out", "{tmp}"], "exists: pass --resume"),
    "resume without checkpoint": (["--resume"], "no checkpoint"),
    "bad patch": (["--method", "linear"], "needs --factor or --target-length"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_in_one_line_before_training(case, tiny_llama_dir, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("seq_length: 64\n")
    (tmp_path / "something.txt").write_text("not a finetune output")
    extra, message = BAD_INPUTS[case]
    extra = [str(a).format(yaml=tmp_path / "bad.yaml", tmp=tmp_path) for a in extra]
    out = ["--out", str(tmp_path / "out")] if "--out" not in extra else []
    capsys.readouterr()
    rc = finetune("--model", tiny_llama_dir, "--base", "1e5", "--max-steps", 1, *out, *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("finetune: error: ") and message in err, err
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


def test_script_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: 1e-4\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(RECIPE), "--config", str(tmp_path / "bad.yaml")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()] and "unknown key 'learning_rate'" in result.stderr
    )


@pytest.mark.slow
def test_smollm2_lora_recipe_runs_and_saves_through_accelerate_launch(smollm2_dir, tmp_path):
    out = tmp_path / "smol"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no", "--num_machines", "1",
           "--dynamo_backend", "no", str(RECIPE),
           "--config", str(ROOT / "longctx/train/configs/smollm2-135m-base1e6.yaml"),
           "--model", str(smollm2_dir), "--max-steps", "2", "--grad-accum", "1", "--save-every", "1", "--out", str(out),
           "--report-to", "tensorboard"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses(out)) == [1, 2] and all(0 < v < 10 for v in losses(out).values())
    assert (out / "adapter_model.safetensors").is_file() and list((out / "tensorboard").rglob("events.*"))
    base = json.loads((out / "base" / "config.json").read_text())
    assert base["rope_theta"] == 1e6 and base["rope_parameters"]["rope_theta"] == 1e6
    assert base["max_position_embeddings"] == 8192


def test_two_processes_match_one_process_with_twice_the_batch_and_resume(tiny_llama_dir, corpus, tmp_path):
    """Data parallelism (DDP over gloo, through accelerate) shards rows and normalizes the loss so that the
    run equals one process with the whole batch, step by step, also across a resume (per-process RNG, LoRA-only
    checkpoint under DDP's "module." names)."""
    common = ["--model", tiny_llama_dir, "--base", "1e5", "--data", corpus, "--seq-len", 64, "--grad-accum", 2,
              "--max-steps", 3, "--lr", "5e-3", "--report-to", "none"]
    common = [str(a) for a in common] + ["--merge"]
    assert finetune(*common, "--batch-size", 2, "--out", tmp_path / "one") == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for extra in (["--max-steps", "2"], ["--max-steps", "3", "--resume"]):  # warmup: the lr ignores --max-steps
        result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(RECIPE), *common, *extra,
                                 "--batch-size", "1", "--out", str(tmp_path / "two")], capture_output=True, text=True,
                                env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), (one, two)
    assert "× 2 processes" in (tmp_path / "two" / "README.md").read_text()
    runs = [json.loads(line) for line in (tmp_path / "two" / "runs.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world"]) for r in runs] == [(2, 2), (3, 2)]  # the run and its resume, written once each
    assert all(r["command"].startswith("python ") and "--resume" in runs[1]["command"] and r["wall_seconds"] > 0
               and "machine" in r for r in runs)
    # what the sharded run exported (the adapter and the merged weights) loads and scores like the 1-process export
    import torch

    from longctx.modeling import load_model

    ids = torch.arange(3, 67).unsqueeze(0)
    for export in ("", "merged"):
        logits = []
        for run in ("one", "two"):
            model, _, _ = load_model(tmp_path / run / export, device="cpu")
            with torch.no_grad():
                logits.append(model(input_ids=ids).logits)
        assert torch.allclose(*logits, atol=1e-4), (export, (logits[0] - logits[1]).abs().max())
    base, _, _ = load_model(tiny_llama_dir, device="cpu")
    with torch.no_grad():
        assert (base(input_ids=ids).logits - logits[0]).abs().max() > 1e-3  # the training is in what was exported


def test_exported_model_is_the_trained_model_with_tied_embeddings(tiny_llama_dir, corpus, tmp_path):
    """Step 5's logged loss (weights after 4 steps, on row 4) equals the loss of the 4-step run's adapter dir and
    merged dir on row 4: what `longctx eval` loads is exactly what was trained, with embed+norm trainable on a
    tied-embedding model (the harder case for peft)."""
    import shutil

    from longctx.corpus import load_documents
    from longctx.modeling import load_model
    from longctx.train.data import PackedRows, collate
    from longctx.train.loss import CausalLMLoss

    tied = tmp_path / "tied"
    shutil.copytree(tiny_llama_dir, tied)
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    common = ["--model", tied, "--base", "1e5", "--data", corpus, "--seq-len", 64, "--lr", "1e-2", "--warmup-steps", 0,
              "--schedule", "constant", "--trainable-extra", "embed,norm"]
    assert finetune(*common, "--max-steps", 5, "--out", tmp_path / "five") == 0
    assert finetune(*common, "--max-steps", 4, "--merge", "--out", tmp_path / "four") == 0
    for directory in (tmp_path / "four", tmp_path / "four" / "merged"):
        model, tokenizer, _ = load_model(directory, device="cpu")
        batch = collate([next(PackedRows(load_documents(str(corpus)), tokenizer, 64, seed=0).rows(4))])
        with torch.no_grad():
            loss = CausalLMLoss(model)(**batch) / (batch["labels"] != -100).sum()
        assert float(loss) == pytest.approx(losses(tmp_path / "five")[5], abs=1e-5)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("variable,expect", [
    ("ACCELERATE_USE_FSDP", "asks for FSDP but accelerate runs one plain process"),
    ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed is not installed"),  # accelerate's own check comes first here
])
def test_a_sharding_engine_accelerate_cannot_give_is_refused_in_one_line(tiny_llama_dir, corpus, tmp_path, variable,
                                                                         expect):
    """accelerate turns FSDP on only for GPU-like devices (never MULTI_CPU): where the launch config asks for it
    and accelerate would silently train unsharded, the recipe says so in one line instead of training."""
    env = {**os.environ, variable: "true", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run([sys.executable, str(RECIPE), "--model", tiny_llama_dir, "--base", "1e5", "--data", corpus,
                             "--seq-len", "64", "--max-steps", "1", "--report-to", "none", "--out", tmp_path / "out"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expect in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
