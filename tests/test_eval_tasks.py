"""Tasks on the tiny random Llama: exact chunked loss, prefix-cache sharing, resume, CLI."""

from __future__ import annotations

import json
import random
import sys
import types

import pytest
import torch

from longctx.cli import main
from longctx.corpus import load_named_documents
from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import niah, passkey, perplexity
from longctx.evals.tasks.data import SentenceTokens, load_texts
from longctx.evals.tasks.scoring import grade_prompts, prefix_sharing_allowed


@pytest.fixture
def count_forwards():
    """count(model) -> a counter of decoder forwards (every task's unit of work), unhooked after the test."""
    handles = []

    def count(model) -> list[int]:
        calls = [0]
        handles.append(model.get_decoder().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)))
        return calls

    yield count
    for handle in handles:
        handle.remove()


def naive_nll(model, ids):
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")


def test_token_nll_equals_full_logits(tiny):
    model, _ = tiny
    ids = torch.randint(0, model.config.vocab_size, (1, 230), generator=torch.Generator().manual_seed(0))
    for chunk in (1, 37, 1024):
        got = perplexity.token_nll(model, ids, chunk_tokens=chunk)
        assert got.shape == (229,) and got.dtype == torch.float32
        torch.testing.assert_close(got, naive_nll(model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", [None, 48])
def test_ppl_cell_matches_the_hf_docs_recipe(tiny, tmp_path, stride):
    """Independent reference: full logits per window, labels masked with -100 (HF "perplexity" docs)."""
    model, tokenizer = tiny
    length, docs = 128, 3
    cfg = perplexity.Config(lengths=[length], stride=stride, docs=docs, chunk_tokens=50, seed=5)
    cell = perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "ppl"))[0]
    texts = dict(load_named_documents("pydoc"))
    total, count, step = 0.0, 0, stride or length
    for window in cell["windows"]:  # each window is one document's stretch: rebuild it from the record
        tokens = tokenizer.encode(texts[window["doc"]], add_special_tokens=False)
        tokens = tokens[window["start"]:window["start"] + window["tokens"]]
        prev_end = 0
        for begin in range(0, len(tokens), step):
            end = min(begin + length, len(tokens))
            ids = torch.tensor([tokens[begin:end]])
            labels = ids.clone()
            labels[0, : (end - begin) - (end - prev_end)] = -100
            with torch.no_grad():
                logits = model(ids, use_cache=False).logits.float()
            losses = torch.nn.functional.cross_entropy(
                logits[0, :-1], labels[0, 1:], reduction="none", ignore_index=-100
            )
            total += losses.sum().item()
            count += int((labels[0, 1:] != -100).sum())
            prev_end = end
            if end == len(tokens):
                break
    assert cell["n_tokens"] == count and cell["n_windows"] == docs and cell["n_docs"] == docs
    assert cell["nll"] == pytest.approx(total / count, abs=1e-4)
    assert cell["ppl"] == pytest.approx(float(torch.exp(torch.tensor(total / count))), rel=1e-4)
    low, high = cell["ppl_ci95"]
    assert low < cell["ppl"] < high
    assert 0 < cell["bpb"] < 20 and len(cell["buckets"]) == 8 and cell["buckets"][-1]["end"] == length
    windows = "document" if stride else "prefix"  # one length: its prefix evaluation is its own forward
    assert cell["key"] == f"ppl|L=128|stride={stride or 'none'}|data=pydoc|windows={windows}"


def _passkey_prompts(tokenizer, length=200):
    trial = passkey.PasskeyTrial(tokenizer, length, random.Random(11))
    return [trial.prompt(d) for d in (0.0, 0.2, 0.5, 0.5, 0.9, 1.0)]


def test_prefix_sharing_gives_the_same_logits_and_grades(tiny):
    model, tokenizer = tiny
    assert prefix_sharing_allowed(model)[0]
    prompts = _passkey_prompts(tokenizer)
    sentences = SentenceTokens(tokenizer, load_texts("pydoc"))
    niah_trial = niah.NiahTrial(tokenizer, 240, random.Random(3), sentences, needles=2, distractors=1)
    prompts += [niah_trial.prompt(d) for d in (0.0, 0.4, 1.0)]
    shared = grade_prompts(model, tokenizer, prompts, share_prefix=True, keep_logits=True)
    full = grade_prompts(model, tokenizer, prompts, share_prefix=False, keep_logits=True)
    for a_prompt, b_prompt in zip(shared, full, strict=True):
        for a, b in zip(a_prompt, b_prompt, strict=True):
            torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
            assert (a.answer, a.correct, a.strict, a.tokens, a.hits) == (
                b.answer,
                b.correct,
                b.strict,
                b.tokens,
                b.hits,
            )
            # partial credit per answer token: all right exactly when the answer is, token for token
            assert len(a.hits) == len(a.logits) and set(a.hits) <= {0, 1} and all(a.hits) == a.strict
    gen_shared = grade_prompts(model, tokenizer, prompts, mode="generate", share_prefix=True)
    gen_full = grade_prompts(model, tokenizer, prompts, mode="generate", share_prefix=False)
    fields = [[(g.answer, g.correct, g.strict, g.tokens) for g in p] for p in gen_shared]
    assert fields == [[(g.answer, g.correct, g.strict, g.tokens) for g in p] for p in gen_full]


def test_prefix_sharing_does_less_work(tiny):
    model, tokenizer = tiny
    prompts = _passkey_prompts(tokenizer)
    tokens = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _m, args, kwargs: tokens.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    grade_prompts(model, tokenizer, prompts, share_prefix=True)
    shared_tokens = sum(tokens)
    tokens.clear()
    grade_prompts(model, tokenizer, prompts, share_prefix=False)
    hook.remove()
    assert 0 < shared_tokens < 0.8 * sum(tokens)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "factor": 2.0,
            "original_max_position_embeddings": 256,
            "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8,
        },  # short factors up to 256 tokens, long ones past them
    ],
)
def test_length_dependent_rope_refuses_prefix_sharing(tiny, rope):
    model, _ = tiny
    patched = types.SimpleNamespace(
        config=type(model.config).from_dict({**model.config.to_dict(), "rope_parameters": rope})
    )
    allowed, why = prefix_sharing_allowed(patched)
    assert not allowed and rope["rope_type"] in why
    for rope_type in ("yarn", "linear"):  # their frequencies do not depend on the length
        plain = types.SimpleNamespace(
            config=type(model.config).from_dict(
                {
                    **model.config.to_dict(),
                    "rope_parameters": {
                        "rope_type": rope_type,
                        "rope_theta": 10000.0,
                        "factor": 2.0,
                        "original_max_position_embeddings": 256,
                    },
                }
            )
        )
        assert prefix_sharing_allowed(plain)[0], rope_type


class Crash(RuntimeError):
    pass


def test_interrupted_passkey_sweep_resumes_without_recomputing(tiny, tmp_path, count_forwards):
    model, tokenizer = tiny
    cfg = passkey.Config(lengths=[160, 200], depths=[0.0, 0.5, 1.0], trials=2, seed=1)
    calls = count_forwards(model)

    def crash_after_second(cell):
        if cell["depth"] == 0.5 and cell["length"] == 160:
            raise Crash

    with pytest.raises(Crash):
        passkey.TASK.run(
            model, tokenizer, cfg, ResultsWriter(tmp_path / "a", "tiny", "passkey", after_append=crash_after_second)
        )
    calls[0] = 0
    resumed = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "a", "tiny", "passkey"))
    resumed_forwards = calls[0]
    # reference: the row that was never started, from scratch; the crashed row's depth 1.0 comes from the journal
    calls[0] = 0
    passkey.TASK.run(
        model,
        tokenizer,
        passkey.Config(lengths=[200], depths=cfg.depths, trials=2, seed=1),
        ResultsWriter(tmp_path / "b", "tiny", "passkey"),
    )
    assert resumed_forwards == calls[0] > 0
    clean = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "c", "tiny", "passkey"))
    strip = [{k: v for k, v in c.items() if k != "seconds"} for c in resumed]
    assert strip == [{k: v for k, v in c.items() if k != "seconds"} for c in clean]
    assert len((tmp_path / "a" / "tiny" / "passkey.jsonl").read_text().splitlines()) == 6
    assert resumed[0]["samples"][0]["seed"] == clean[0]["samples"][0]["seed"]


def test_deleted_ppl_cell_is_the_only_one_recomputed(tiny, tmp_path, count_forwards):
    """A deleted cell comes back from its journaled windows without a forward; with its journal lines deleted too,
    its windows (and only they) are scored again."""
    model, tokenizer = tiny
    cfg = perplexity.Config(lengths=[64, 128], docs=2)
    perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "ppl"))
    path, journal = tmp_path / "tiny" / "ppl.jsonl", tmp_path / "tiny" / "ppl.partial"
    lines = path.read_text().splitlines()
    assert len(journal.read_text().splitlines()) == 4  # two windows per length
    calls = count_forwards(model)
    path.write_text(lines[0] + "\n")
    cells = perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "ppl"))
    assert calls[0] == 0 and cells[1] == json.loads(lines[1])
    path.write_text(lines[0] + "\n")
    kept = [line for line in journal.read_text().splitlines() if "|L=64|" in line]
    assert len(kept) == 2
    journal.write_text("".join(line + "\n" for line in kept))
    cells = perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "ppl"))
    assert calls[0] == 2 and [c["length"] for c in cells] == [64, 128]
    assert cells[1]["nll"] == pytest.approx(json.loads(lines[1])["nll"], abs=1e-6)


def test_cli_ppl_writes_results_and_warns_beyond_the_claimed_length(tiny_llama_dir, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "ppl",
            "--model",
            str(tiny_llama_dir),
            "--lengths",
            "128,320",
            "--docs",
            "2",
            "--out",
            str(tmp_path),
            "--label",
            "tiny",
        ]
    )
    assert rc == 0
    cells = [json.loads(line) for line in (tmp_path / "tiny" / "ppl.jsonl").read_text().splitlines()]
    assert [c["length"] for c in cells] == [128, 320]
    assert cells[0]["warnings"] == [] and "exceeds the 256 tokens" in cells[1]["warnings"][0]
    info = json.loads((tmp_path / "tiny" / "model.json").read_text())
    assert info["claimed_length"] == 256 and info["trained_length"] == 256 and info["rope"]["rope_theta"] == 10000.0
    assert len(info["warnings"]) == 1 and info["attn_implementation"] == "sdpa"
    assert "warning: ppl: length 320 exceeds" in capsys.readouterr().err


def test_cli_eval_runs_in_bf16_on_cpu(tiny_llama_dir, tmp_path):
    """`longctx eval ... --dtype bfloat16 --device cpu` (what the bench's dtype section loads): the model runs in bf16,
    model.json says so, perplexity is finite and passkey trials carry both grades."""
    common = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "bfloat16", "--out", str(tmp_path),
              "--label", "bf16"]
    assert main(["eval", "ppl", "--lengths", "128", "--docs", "1", *common]) == 0
    assert main(["eval", "passkey", "--lengths", "160", "--depths", "0.5", "--trials", "1", *common]) == 0
    info = json.loads((tmp_path / "bf16" / "model.json").read_text())
    assert info["dtype"] == "bfloat16" and info["device"] == "cpu"
    (ppl,) = [json.loads(line) for line in (tmp_path / "bf16" / "ppl.jsonl").read_text().splitlines()]
    assert ppl["length"] == 128 and 1 < ppl["ppl"] < float("inf")
    (cell,) = [json.loads(line) for line in (tmp_path / "bf16" / "passkey.jsonl").read_text().splitlines()]
    assert set(cell["samples"][0]) >= {"correct", "correct_strict", "answer"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "pasky", "--lengths", "1k"], "unknown task 'pasky': did you mean 'passkey'?"),
        (["eval", "ppl", "--lengths", "4q"], "bad length '4q'"),
        (["eval", "passkey", "--lengths", "1k", "--depths", "0:1"], "bad depths"),
        (["eval", "ppl", "--lengths", "1k", "--data", "/nonexistent.txt"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tiny_llama_dir, tmp_path, capsys, argv, message):
    try:
        rc = main([*argv, "--model", str(tiny_llama_dir), "--out", str(tmp_path)])
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_cli_suite_runs_every_task_for_every_model_then_reports(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "seed: 3\ntasks:\n  ppl: {lengths: 128, docs: 1}\n  passkey: {lengths: 160, depths: '0,1', trials: 1}\n"
        "  niah: {lengths: 200, depths: 0.5, trials: 1, needles: 2}\n"
    )
    seen = []
    report = types.ModuleType("longctx.evals.report.page")
    report.add_parser = lambda subparsers: None  # the CLI registers the report verb from this module
    report.write_report = lambda results_dir: seen.append(results_dir) or [tmp_path / "report.html"]
    monkeypatch.setitem(sys.modules, "longctx.evals.report.page", report)
    rc = main(
        [
            "eval",
            "suite",
            str(suite),
            "--model",
            str(tiny_llama_dir),
            "--model",
            str(tiny_llama_dir),
            "--labels",
            "a,b",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0 and seen == [str(tmp_path / "out")]
    assert str(tmp_path / "report.html") in capsys.readouterr().out
    for label in ("a", "b"):
        folder = tmp_path / "out" / label
        assert sorted(p.name for p in folder.glob("*.jsonl")) == [
            "niah.jsonl",
            "passkey.jsonl",
            "ppl.jsonl",
            "runs.jsonl",
        ]
        run = json.loads((folder / "runs.jsonl").read_text().splitlines()[-1])  # how the cells were made
        assert "eval suite" in run["command"] and run["tasks"] == ["ppl", "passkey", "niah"]
        niah_cell = json.loads((folder / "niah.jsonl").read_text())
        assert niah_cell["key"] == "niah|L=200|depth=0.5|needles=2|distractors=0|mode=forced|protocol=2"
        assert 0 <= niah_cell["score"] <= 1 and len(niah_cell["samples"][0]["expected"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  nia: {lengths: 1k}\n")
    assert main(["eval", "suite", str(bad), "--model", str(tiny_llama_dir)]) == 2
    assert "did you mean 'niah'" in capsys.readouterr().err


def test_grading_uses_the_current_cache_argument_without_deprecation_warnings(tiny):
    """transformers 5 renamed `past_key_values` to `cache` (the old name goes in 5.40): no FutureWarning."""
    import warnings

    model, tokenizer = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grade_prompts(model, tokenizer, _passkey_prompts(tokenizer)[:2], mode="generate", share_prefix=True)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
