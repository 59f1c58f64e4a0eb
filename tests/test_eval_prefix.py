"""Prefix evaluation: one forward of the longest window scores every shorter length on its prefix, exactly as
separate forwards would, where the rope does not depend on the sequence length (and never where it does)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from longctx.corpus import load_named_documents  # noqa: E402
from longctx.evals.run.results import ResultsWriter  # noqa: E402
from longctx.evals.tasks import perplexity  # noqa: E402
from longctx.evals.tasks.data import special_prefix  # noqa: E402

LENGTHS = [48, 96, 200]


def _separate_nll(model, tokenizer, cell: dict) -> list[float]:
    """Each recorded window re-read from its document and scored by a forward of its own length."""
    texts = dict(load_named_documents("pydoc"))
    prefix = special_prefix(tokenizer)
    sums = []
    for window in cell["windows"]:
        tokens = tokenizer.encode(texts[window["doc"]], add_special_tokens=False)
        body = tokens[window["start"]:window["start"] + window["tokens"]]
        ids = torch.tensor([prefix + body])
        sums.append(float(perplexity.token_nll(model, ids).double().sum()))
    return sums


def test_prefix_evaluation_equals_separate_forwards(tiny, tmp_path):
    model, tokenizer = tiny
    cfg = perplexity.Config(lengths=LENGTHS, docs=3, seed=2)
    assert perplexity.prefix_evaluation(model, cfg)[0]
    cells = {c["length"]: c for c in perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "ppl"))}
    longest = cells[max(LENGTHS)]["windows"]
    for length, cell in cells.items():
        assert cell["key"].endswith("windows=prefix") and cell["n_windows"] == 3
        assert all(w["tokens"] == length - len(special_prefix(tokenizer)) for w in cell["windows"])
        # the same documents and starts at every length: the prefixes of the longest windows
        assert [(w["doc"], w["start"]) for w in cell["windows"]] == [(w["doc"], w["start"]) for w in longest]
        separate = _separate_nll(model, tokenizer, cell)
        for window, expected in zip(cell["windows"], separate, strict=True):
            assert window["nll_sum"] / window["n_tokens"] == pytest.approx(expected / window["n_tokens"], abs=1e-5)
    # and against the reference path: the same run with prefix evaluation off scores each window separately
    off = perplexity.Config(lengths=[max(LENGTHS)], docs=3, seed=2, prefix=False)
    (ref,) = perplexity.run(model, tokenizer, off, ResultsWriter(tmp_path / "off", "tiny", "ppl"))
    assert ref["nll"] == pytest.approx(cells[max(LENGTHS)]["nll"], abs=1e-5)


def test_prefix_evaluation_is_never_used_for_dynamic_ntk(tiny_llama_dir, tmp_path, monkeypatch):
    from longctx.checkpoint import write_patched_checkpoint
    from longctx.modeling import load_model
    from longctx.patch import PatchSpec

    patched = write_patched_checkpoint(tiny_llama_dir, tmp_path / "dyn", PatchSpec(method="dynamic", factor=2))
    model, tokenizer, _ = load_model(str(patched), device="cpu")
    cfg = perplexity.Config(lengths=[200, 400], docs=2, seed=2)
    allowed, why = perplexity.prefix_evaluation(model, cfg)
    assert not allowed and "dynamic" in why
    forwards = []
    real = perplexity.token_nll
    monkeypatch.setattr(
        perplexity, "token_nll", lambda m, ids, **kw: forwards.append(ids.shape[1]) or real(m, ids, **kw)
    )
    cells = perplexity.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "out", "dyn", "ppl"))
    assert all(c["key"].endswith("windows=document") for c in cells)
    assert sorted(forwards) == [200, 200, 400, 400]  # one forward per window per length: the 200s are not prefixes
    # ... of a forward, but of the text: every length reads the first L tokens of the same windows, so ratios
    # between lengths (and against other models) pair window by window
    starts = [[(w["doc"], w["start"]) for w in cell["windows"]] for cell in cells]
    assert starts[0] == starts[1]
    # the 200-token cell is what the model gives those 200 tokens alone (past 256 the base would differ)
    for cell in cells:
        separate = _separate_nll(model, tokenizer, cell)
        assert [w["nll_sum"] for w in cell["windows"]] == pytest.approx(separate, abs=1e-4)


def test_prefix_evaluation_is_a_flag_and_a_suite_key():
    from longctx.evals.suite import make_config

    assert make_config("ppl", {"lengths": [64], "prefix": False}).prefix is False
    assert perplexity.Config(lengths=[64]).prefix is True
