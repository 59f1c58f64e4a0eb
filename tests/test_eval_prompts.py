"""Prompt builders, argument syntax, text sources and the results files: no model needed."""

from __future__ import annotations

import json
import random

import pytest

from longctx.errors import UsageError
from longctx.evals.run.results import ResultsWriter, cell_key, write_model_json
from longctx.evals.suite import load_suite, make_config, parse_depths, parse_lengths
from longctx.evals.tasks import get_task
from longctx.evals.tasks.data import SentenceTokens, load_texts, sentence_pieces, special_prefix, token_stream
from longctx.evals.tasks.niah import NiahTrial, needle_depths
from longctx.evals.tasks.passkey import NEEDLE, PasskeyTrial


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_llama_dir):
    """The tiny tokenizer made to prepend <s> like Llama's, to check BOS handling."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok.encode("hi")[0] == bos
    return tok


def test_lengths_syntax():
    assert parse_lengths("2k,4k") == [2048, 4096]
    assert parse_lengths("4096") == [4096]
    assert parse_lengths("1.5k") == [1536]
    assert parse_lengths("4k..32k") == [4096, 8192, 16384, 32768]
    assert parse_lengths("4K..16k,1k") == [1024, 4096, 8192, 16384]
    assert parse_lengths([512, "1k"]) == [512, 1024]
    for bad in ("", "abc", "2q", "1.3", "8k..4k", "-4"):
        with pytest.raises(UsageError):
            parse_lengths(bad)


def test_depths_syntax():
    assert parse_depths("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_depths("11") == [round(i / 10, 6) for i in range(11)]
    assert parse_depths("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_depths("0.5") == [0.5]
    for bad in ("x", "0:1", "0:2:3", "1.5", "0:1:0"):
        with pytest.raises(UsageError):
            parse_depths(bad)


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(UsageError, match="did you mean 'passkey'"):
        get_task("paskey")
    with pytest.raises(UsageError, match="unknown key 'depth'"):
        make_config("passkey", {"lengths": "1k", "depth": "0:1:3"})


@pytest.mark.parametrize("length", [160, 200, 333])
def test_passkey_prompt_has_exact_length_and_needle_at_depth(tokenizer, length):
    trial = PasskeyTrial(tokenizer, length, random.Random(7))
    needle = tokenizer.encode(NEEDLE.format(key=trial.passkey), add_special_tokens=False)
    previous = -1
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        prompt = trial.prompt(depth)
        assert len(prompt.context) + len(prompt.queries[0].question) == length
        start = prompt.needle_positions[0]
        assert prompt.context[start:start + len(needle)] == needle
        filler_pos = start - len(trial.head)
        assert filler_pos in trial.boundaries  # at a filler sentence end
        assert filler_pos <= round(depth * len(trial.filler))  # the last one at or before the depth
        assert filler_pos >= previous
        previous = filler_pos
        # everything but the needle is the same filler for every depth: that is what prefix sharing needs
        assert prompt.context[:start] + prompt.context[start + len(needle):] == trial.head + trial.filler
    # depth 1 puts the needle after the last whole filler sentence: at most part of one sentence follows
    assert trial.prompt(1.0).needle_positions[0] == len(trial.head) + trial.boundaries[-1]
    assert len(trial.filler) - trial.boundaries[-1] < len(needle)
    assert 5 <= len(trial.passkey) <= 7 and trial.passkey.isdigit() and trial.passkey[0] != "0"
    query = trial.prompt(0.5).queries[0]
    assert tokenizer.decode(query.answer).strip() == trial.passkey == query.expected
    assert tokenizer.decode(query.question).endswith("What is the pass key? The pass key is")


def test_passkey_same_seed_same_prompt_and_bos_only_at_start(bos_tokenizer):
    a = PasskeyTrial(bos_tokenizer, 300, random.Random(3)).prompt(0.5)
    b = PasskeyTrial(bos_tokenizer, 300, random.Random(3)).prompt(0.5)
    c = PasskeyTrial(bos_tokenizer, 300, random.Random(4)).prompt(0.5)
    assert a.context == b.context and a.context != c.context
    bos = bos_tokenizer.bos_token_id
    assert special_prefix(bos_tokenizer) == [bos]
    assert a.context[0] == bos and bos not in a.context[1:] and bos not in a.queries[0].question + a.queries[0].answer
    assert len(a.context) + len(a.queries[0].question) == 300


def test_passkey_too_short_is_a_usage_error(tokenizer):
    with pytest.raises(UsageError, match="too short"):
        PasskeyTrial(tokenizer, 40, random.Random(0))


def test_niah_single_needle_at_sentence_end(tokenizer):
    sentences = SentenceTokens(tokenizer, load_texts("pydoc"))
    trial = NiahTrial(tokenizer, 400, random.Random(1), sentences)
    for depth in (0.0, 0.3, 0.7, 1.0):
        prompt = trial.prompt(depth)
        assert len(prompt.context) + len(prompt.queries[0].question) == 400
        start = prompt.needle_positions[0]
        assert prompt.context[start:start + len(trial.needles[0])] == trial.needles[0]
        assert start in trial.boundaries  # after a sentence end: the last one at or before the depth, or the first
        assert start <= round(depth * len(trial.body)) or start == trial.boundaries[0]
    question = tokenizer.decode(trial.queries[0].question)
    assert f"special magic number for {trial.cities[0]}?" in question
    assert trial.queries[0].expected == trial.numbers[0] and len(trial.numbers[0]) == 7
    assert tokenizer.decode(trial.queries[0].answer).strip() == trial.numbers[0]


def test_niah_multi_needle_spacing_and_distractors(tokenizer):
    assert needle_depths(0.4, 3) == pytest.approx([0.4, 0.6, 0.8])
    sentences = SentenceTokens(tokenizer, load_texts("pydoc"))
    trial = NiahTrial(tokenizer, 900, random.Random(2), sentences, needles=3, distractors=2)
    prompt = trial.prompt(0.4)
    assert len(prompt.context) + len(prompt.queries[0].question) == 900
    assert len(prompt.queries) == 3 and len(set(trial.cities)) == 3
    text = tokenizer.decode(prompt.context)
    for city, number in zip(trial.cities, trial.numbers, strict=True):
        assert f"The special magic number for {city} is {number}." in text
    assert text.count("The special magic number for") == 5  # 3 needles + 2 distractors, all inside the haystack
    positions = prompt.needle_positions
    assert positions == sorted(positions)
    body_positions = trial.needle_positions(0.4)
    for got, depth in zip(body_positions, needle_depths(0.4, 3), strict=True):
        assert got <= round(depth * len(trial.body)) and got in trial.boundaries
    # distractors are part of the fixed haystack: removing the needles gives the same tokens at every depth
    other = trial.prompt(0.0)
    assert tokenizer.decode(other.context).count("The special magic number for") == 5


def test_sentence_pieces_join_back():
    text = "One sentence. Another one!  A third?\n\nNew paragraph without end\n\nLast."
    pieces = sentence_pieces(text)
    assert "".join(pieces) == text and len(pieces) == 5


def test_text_sources(tmp_path, tokenizer):
    assert len(load_texts("pydoc")) > 50 and len(load_texts("stdlib")) > 50
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "alpha beta"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n"
    )
    assert load_texts(str(tmp_path / "a.jsonl")) == ["alpha beta", "gamma"]
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(UsageError, match="no text"):
        load_texts(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(UsageError, match="field 'text'"):
        load_texts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UsageError):
        load_texts(str(tmp_path / "missing.txt"))
    texts = load_texts("pydoc")
    assert token_stream(tokenizer, texts, 500, seed=1) == token_stream(tokenizer, texts, 500, seed=1)
    assert token_stream(tokenizer, texts, 500, seed=1) != token_stream(tokenizer, texts, 500, seed=2)


def test_results_writer_survives_a_torn_last_line(tmp_path):
    writer = ResultsWriter(tmp_path, "m", "ppl")
    key = cell_key("ppl", length=4096, stride=None, data="pydoc")
    assert key == "ppl|L=4096|stride=none|data=pydoc"
    writer.append({"key": key, "nll": float("nan")})
    with open(writer.path, "a") as handle:
        handle.write('{"key": "ppl|L=8192|str')  # killed mid-write
    again = ResultsWriter(tmp_path, "m", "ppl")
    assert again.done(key) and not again.done("ppl|L=8192|stride=none|data=pydoc")
    again.append({"key": "x"})
    lines = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert [line["key"] for line in lines] == [key, "x"] and lines[0]["nll"] is None


def test_model_json_keeps_earlier_warnings(tmp_path):
    write_model_json(tmp_path, "m", {"label": "m", "warnings": ["a"]})
    path = write_model_json(tmp_path, "m", {"label": "m", "warnings": ["b", "a"]})
    assert json.loads(path.read_text())["warnings"] == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]


@pytest.mark.parametrize("name", ["quick.yaml", "demo.yaml"])
def test_shipped_suites_are_valid(name):
    from pathlib import Path

    tasks, _ = load_suite(Path(__file__).resolve().parents[1] / "longctx" / "evals" / "suites" / name)
    configs = {task: make_config(task, settings) for task, settings in tasks.items()}
    if name == "demo.yaml":  # one length inside SmolLM2's trained 8K and one past it, CPU-sized
        assert set(configs) == {"ppl", "passkey"}
        assert min(configs["ppl"].lengths) <= 8192 < max(configs["ppl"].lengths) <= 12288
    else:
        assert set(configs) == {"ppl", "passkey", "niah"}
