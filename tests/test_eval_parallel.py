"""Evaluation past one device (longctx.evals.run.parallel, longctx.evals.run.nll), on CPU with 2 processes
launched as the project launches them (`ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2`):
data parallel gives the cells of one process, a rerun computes nothing, a partial folder completes; context
parallel splits each window across the processes and scores it as one process does."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from result_cells import cells_by_key, without_timings

from longctx.cli import main
from longctx.evals.run.parallel import World
from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import passkey

TORCHRUN = Path(sys.executable).parent / "torchrun"
SUITE = """seed: 3
tasks:
  ppl: {lengths: "128,130", docs: 3}
  passkey: {lengths: "160,200", depths: "0,0.5,1", trials: 3}
  niah: {lengths: 200, depths: "0,1", trials: 2, needles: 2}
"""


def torchrun(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *map(str, argv)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def cells(folder: Path, task: str) -> dict[str, dict]:
    return cells_by_key(folder / f"{task}.jsonl")


def assert_close(a, b, where="", rel=0.0):
    """The same structure and the same values, floats within 1e-6 (or `rel` of their size)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, rel=rel), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]", rel)
    else:
        assert a == b, where


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def journal_units(path: Path) -> list[tuple]:
    return [(r["key"], r.get("unit", r["sample"].get("seed"))) for r in map(json.loads, path.read_text().splitlines())]


def test_two_processes_give_the_cells_of_one_then_resume(tiny_llama_dir, tmp_path):
    """ppl + passkey + niah: 2 processes write exactly the cells of 1 (each taking its round-robin share of the
    (length, window) and (length, trial) units), a rerun with 2 computes nothing, and a folder holding one
    task's cells and some journaled trials (older journal lines without unit ids) is completed."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    args = ["eval", "suite", suite, "--model", tiny_llama_dir, "--labels", "tiny", "--out"]
    assert main([*args, tmp_path / "one"]) == 0
    one = tmp_path / "one" / "tiny"
    torchrun("-m", "longctx", *args, tmp_path / "two")
    two = tmp_path / "two" / "tiny"
    for task in ("ppl", "passkey", "niah"):
        assert_close(cells(one, task), cells(two, task), task)
    assert sorted(files(two)) == ["model.json", "niah.jsonl", "niah.partial", "passkey.jsonl", "passkey.partial",
                                  "ppl.jsonl", "ppl.partial", "runs.jsonl"]  # rank journals folded, then deleted
    (run,) = map(json.loads, (two / "runs.jsonl").read_text().splitlines())
    assert run["world"] == 2 and run["cells_computed"] == {"ppl": 2, "passkey": 6, "niah": 2}
    assert "× 2 processes" in (tmp_path / "two" / "report.md").read_text()  # process 0 wrote the report
    # the journal holds process 0's units, then process 1's folded in: round-robin over the windows, each one
    # forward of the longest length journaled for every length (prefix evaluation)
    ppl_cells = list(cells(two, "ppl").values())
    windows = [f"{w['doc']}@{w['start']}" for w in ppl_cells[-1]["windows"]]
    assert journal_units(two / "ppl.partial") == [(c["key"], w) for w in windows[0::2] + windows[1::2]
                                                  for c in ppl_cells]

    before = files(two)
    torchrun("-m", "longctx", *args, tmp_path / "two")
    assert files(two) == before  # no journal line (of any process), no cell, no run record

    three = tmp_path / "three" / "tiny"
    three.mkdir(parents=True)
    for name in ("model.json", "niah.jsonl"):
        (three / name).write_bytes((one / name).read_bytes())
    seeded = [json.loads(line) for line in (one / "passkey.partial").read_text().splitlines()[:4]]
    (three / "passkey.partial").write_text("".join(json.dumps({"key": r["key"], "sample": r["sample"]}) + "\n"
                                                   for r in seeded))  # one whole trial and one depth of the next
    torchrun("-m", "longctx", *args, tmp_path / "three")
    for task in ("ppl", "passkey", "niah"):
        assert_close(cells(one, task), cells(three, task), task)
    (run,) = map(json.loads, (three / "runs.jsonl").read_text().splitlines())
    assert run["cells_computed"] == {"ppl": 2, "passkey": 6, "niah": 0}
    journaled = journal_units(three / "passkey.partial")
    assert len(journaled) == len(set(journaled)) == 6 * 3  # every trial once: none journaled twice


CONTEXT_PARALLEL = textwrap.dedent("""
    import json, sys, torch
    from longctx.cli import main
    from longctx.evals.run import nll as context_parallel
    from longctx.evals.run.parallel import current_world
    from longctx.evals.tasks.perplexity import token_nll
    from longctx.modeling import load_model

    model_dir, out = sys.argv[1], sys.argv[2]
    assert main(["eval", "ppl", "--model", model_dir, "--label", "tiny", "--lengths", "128,130", "--docs", "3",
                 "--seed", "3", "--context-parallel", "--out", out]) == 0
    world = current_world()
    model, _, _ = load_model(model_dir, device=world.device)
    seen = []
    decoder = model.get_decoder()
    decoder.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[1]), with_kwargs=True)
    ids = torch.randint(3, 500, (1, 130), generator=torch.Generator().manual_seed(0))
    split = context_parallel.token_nll_split(model, ids, mesh=world.mesh(), chunk_tokens=16)
    whole = token_nll(model, ids)
    report = {"rank": world.rank, "seen": seen, "diff": float((split - whole).abs().max()), "shape": list(split.shape)}
    with open(f"{out}.rank{world.rank}.json", "w") as file:  # one file each: two processes' stdout interleaves
        json.dump(report, file)
""")


def test_context_parallel_splits_each_window_and_scores_it_as_one_process(tiny_llama_dir, tmp_path):
    """`--context-parallel` with 2 processes: each process's decoder sees half of the (padded) window, the
    per-token NLL comes back whole and in order, and the cells equal one process's. On CPU this runs torch's
    ring attention with the CPU SDPA kernel (see longctx.evals.run.nll)."""
    script = tmp_path / "cp.py"
    script.write_text(CONTEXT_PARALLEL)
    torchrun(script, tiny_llama_dir, tmp_path / "cp")
    reports = [json.loads((tmp_path / f"cp.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["seen"] == [132 // 2, 130]  # split: 130 tokens padded to 132, halves; then the plain forward
        assert report["shape"] == [129] and report["diff"] < 1e-5
    assert main(["eval", "ppl", "--model", tiny_llama_dir, "--label", "tiny", "--lengths", "128,130", "--docs", "3",
                 "--seed", "3", "--no-prefix-eval", "--out", tmp_path / "one"]) == 0  # windows of each length
    assert_close(cells(tmp_path / "one" / "tiny", "ppl"), cells(tmp_path / "cp" / "tiny", "ppl"), rel=1e-6)


def test_context_parallel_refuses_what_it_cannot_split():
    from transformers import LlamaConfig, MistralConfig

    from longctx.evals.run.nll import refusal

    def model(config):
        return SimpleNamespace(config=config)

    assert refusal(model(LlamaConfig())) is None
    assert "dynamic rope" in refusal(model(LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0})))
    assert "sliding window" in refusal(model(MistralConfig(sliding_window=4096)))


def test_units_are_dealt_round_robin_and_a_single_process_reuses_another_process_journal(tiny, tmp_path):
    """Process N's journal left by an interrupted parallel run serves a one-process rerun: no forward, the same
    cells, and the journal folded into <task>.partial."""
    assert World(rank=1, size=3).share(list(range(8))) == [1, 4, 7]
    model, tokenizer = tiny
    cfg = passkey.Config(lengths=[160], depths=[0.0, 1.0], trials=2, seed=1)
    first = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "passkey"))
    folder = tmp_path / "tiny"
    (folder / "passkey.partial").rename(folder / "passkey.rank1.partial")
    (folder / "passkey.jsonl").unlink()
    calls = [0]
    handle = model.get_decoder().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        again = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "passkey"))
    finally:
        handle.remove()
    assert calls[0] == 0 and without_timings(again) == without_timings(first)
    assert sorted(p.name for p in folder.iterdir()) == ["passkey.jsonl", "passkey.partial"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs: context parallel splits a window across processes, one per GPU")
def test_context_parallel_on_gpus_scores_as_one_gpu(tmp_path):
    """torch's own CUDA path (flash attention under ring attention, NCCL), unmodified, on a random bf16 Llama
    with a 4K window: the perplexity of 2 GPUs splitting each window equals one GPU's within bf16 noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx.byte_tokenizer import byte_tokenizer

    model_dir = tmp_path / "model"
    config = LlamaConfig(vocab_size=260, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    args = ["eval", "ppl", "--model", model_dir, "--label", "m", "--lengths", "4096", "--docs", "2", "--data", "stdlib"]
    assert main([*args, "--out", tmp_path / "one"]) == 0
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "longctx",
                             *map(str, args), "--context-parallel", "--out", str(tmp_path / "cp")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (one,), (split,) = cells(tmp_path / "one" / "m", "ppl").values(), cells(tmp_path / "cp" / "m", "ppl").values()
    assert split["nll"] == pytest.approx(one["nll"], rel=1e-2)
