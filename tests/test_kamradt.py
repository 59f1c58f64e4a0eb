"""Kamradt's needle in a haystack: his literal strings, sentence-boundary placement and exact lengths under real
tokenizer families, the key-phrase grader, the judge hook, resume, a tiny model end to end with the heatmap."""

from __future__ import annotations

import copy
import json
import random
import sys

import pytest
from result_cells import without_timings

from longctx.cli import main
from longctx.errors import UsageError
from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import kamradt as k
from longctx.evals.tasks.data import is_sentence_end
from longctx.evals.tasks.intervals import wilson_interval

WORDS = ("river", "garden", "old", "mill", "letter", "morning", "captain", "road", "window", "winter", "quiet",
         "the", "of", "and", "near", "across", "every", "town", "bright", "stone")


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """A folder of two .txt 'books' of plain prose (sentences ending in . ! ?), one with a Gutenberg header."""
    rng = random.Random(5)

    def prose(sentences: int) -> str:
        out = []
        for i in range(sentences):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            out.append(" ".join(words).capitalize() + rng.choice(".!?."))
            if i % 9 == 8:
                out.append("\n\n")
        return " ".join(out)

    folder = tmp_path_factory.mktemp("books")
    (folder / "a.txt").write_text("Header of the ebook.\n*** START OF THIS PROJECT GUTENBERG EBOOK A ***\n"
                                  + prose(400) + "\n*** END OF THIS PROJECT GUTENBERG EBOOK A ***\nLicense text.\n")
    (folder / "b.txt").write_text(prose(400))
    return folder


def test_needle_question_and_prompts_are_kamradts_literal_strings():
    """needlehaystack/run.py, providers/openai.py, providers/Anthropic_prompt.txt, viz notebook: verbatim."""
    assert k.NEEDLE == ("\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny "
                        "day.\n")
    assert k.QUESTION == "What is the best thing to do in San Francisco?"
    assert k.SYSTEM == "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
    assert k.QUESTION_TURN.format(retrieval_question=k.QUESTION) == (
        "What is the best thing to do in San Francisco? Don't give information outside the document or repeat your "
        "findings")
    assert k.PLAIN_PROMPT == (
        "You are a helpful AI bot that answers questions for a user. Keep your response short and direct\n\nHuman: "
        "<context>\n{context}\n</context>\n\n{retrieval_question} Don't give information outside the document or "
        "repeat your findings\n\nAssistant: Here is the most relevant sentence in the context:")
    assert k.BUFFER == 200 and k.COLOURS == ("#F0496E", "#EBB839", "#0CD79F")
    assert k.KEY_PHRASES == ("sandwich", "Dolores Park") and all(p in k.NEEDLE for p in k.KEY_PHRASES)


def test_key_phrase_grader_by_hand():
    assert k.key_phrase_score("Eat a SANDWICH and sit in dolores park.") == (2, 1.0)
    assert k.key_phrase_score("The best thing is a sandwich.") == (1, 0.5)
    assert k.key_phrase_score("Visit Dolores  Park") == (0, 0.0)  # two spaces: not the phrase
    assert k.key_phrase_score("Dolores\tPark, and a sandwich") == (1, 0.5)  # RULER's postprocessing: \t -> \n
    assert k.key_phrase_score("") == (0, 0.0)
    cell = k.summarize([{"found": 2, "key_phrase_score": 1.0}, {"found": 1, "key_phrase_score": 0.5}], None)
    assert cell["score"] == 0.75 and (cell["found"], cell["refs"]) == (3, 4)
    assert cell["score_ci95"] == wilson_interval(1.5, 2)  # two answers, not four phrases


def test_gutenberg_license_is_left_out(books):
    text = k.read_books(books)
    assert "Header of the ebook" not in text and "License text" not in text and "*** " not in text
    assert text.count("\n\n") > 10


@pytest.mark.parametrize("family", ["byte-level", "sentencepiece-legacy", "sentencepiece-reloaded", "llama3"])
def test_needle_at_a_sentence_end_and_prompts_exactly_their_length(retrieval_tokenizers, books, family):
    tokenizer = retrieval_tokenizers[family]
    hay = k.Haystack(k.read_books(books), k.Frame(tokenizer, "off"))
    for length in (700, 1536):
        previous = -1
        for depth in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
            sample = k.build_sample(hay, length, depth, 0, 3, 64)
            meta = sample.draft.meta
            assert sample.exact and len(sample.ids) + 64 == length, (family, length, depth)
            assert sample.ids == tokenizer.encode(hay.frame.text(sample.draft.context))  # ids = tokenization of text
            start, at, chars = meta["offset"], meta["needle_char"], meta["haystack_chars"]
            before = hay.text[start:start + at]
            assert sample.draft.context == before + k.NEEDLE + hay.text[start + at:start + chars]
            # his rule: the last sentence end at or before int(haystack tokens x depth); the start if none
            target = int(hay.tokens(start, start + chars) * depth)
            assert at == 0 or (is_sentence_end(before) and hay.tokens(start, start + at) <= target)
            later = [e for e in hay.ends if start + at < e <= start + chars and hay.tokens(start, e) <= target]
            assert not later, (depth, later[:3])
            assert (depth > 0 or at == 0) and at >= previous
            previous = at
            again = k.build_sample(hay, length, depth, 0, 3, 64)
            assert again.ids == sample.ids
        assert k.build_sample(hay, length, 0.5, 1, 11, 64).draft.meta["offset"] > 0  # later samples start elsewhere


@pytest.mark.parametrize("family", ["byte-level", "llama3"])
def test_chat_frame_carries_his_three_messages(retrieval_tokenizers, books, family):
    tokenizer = copy.deepcopy(retrieval_tokenizers[family])
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    frame = k.Frame(tokenizer, "auto")
    assert frame.record()["chat_template"] == "on" and frame.layout == "system, user: context, user: question"
    assert frame.head == f"<|system|>{k.SYSTEM}<|end|><|user|>"
    assert frame.tail == f"<|end|><|user|>{k.QUESTION} Don't give information outside the document or repeat your " \
                         "findings<|end|><|assistant|>"
    sample = k.build_sample(k.Haystack(k.read_books(books), frame), 1024, 0.5, 0, 1, 64)
    assert sample.exact and len(sample.ids) == 960
    no_system = copy.deepcopy(tokenizer)
    no_system.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                               "{% endif %}[{{ m['content'] }}]{% endfor %}")
    assert k.Frame(no_system, "on").layout == "user: system + context + question"
    assert k.Frame(tokenizer, "off").layout == "plain: Anthropic_prompt.txt"


def test_judge_is_a_callable_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(
        "def strict(response, *, question, needle):\n    return float(needle.lower() in response.lower())\n"
        "def broken(response, *, question, needle):\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert k.load_judge("my_judges:strict")("x", question="q", needle="x") == 1.0
    for spec, message in [("my_judges", "module:function"), ("no_such_module_x:f", "cannot import"),
                          ("my_judges:missing", "no function 'missing'")]:
        with pytest.raises(UsageError, match=message):
            k.Config(lengths=[512], haystack_dir="x", judge=spec)
    with pytest.raises(UsageError, match="returned 7"):
        k.judge_score(k.load_judge("my_judges:broken"), "my_judges:broken", "text")
    sys.modules.pop("my_judges", None)


def test_judge_grades_the_whole_answer_and_keeps_the_key_phrases(tiny, books, tmp_path, monkeypatch):
    (tmp_path / "half_judge.py").write_text("def half(response, *, question, needle):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, tokenizer = tiny
    cfg = k.Config(lengths=[384], depths=[0.0, 1.0], haystack_dir=str(books), buffer=8, past_context=True,
                   judge="half_judge:half")
    cells = k.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "out", "tiny", "kamradt"))
    for cell in cells:
        assert cell["score"] == 0.5 and (cell["found"], cell["refs"]) == (1, 1) and cell["judge"] == "half_judge:half"
        assert cell["stop_when_found"] is False and "judge=half_judge:half" in cell["key"]
        assert cell["records"][0]["judge_score"] == 0.5 and "key_phrase_score" in cell["records"][0]
    sys.modules.pop("half_judge", None)


def test_resume_equals_an_uninterrupted_run(tiny, books, tmp_path, monkeypatch):
    model, tokenizer = tiny
    cfg = k.Config(lengths=[320, 384], depths=[0.0, 0.5, 1.0], samples=2, haystack_dir=str(books), buffer=12,
                   past_context=True)
    whole = k.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "a", "tiny", "kamradt"))
    calls = {"n": 0}
    original = ResultsWriter.add_sample

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResultsWriter, "add_sample", crash)
    with pytest.raises(KeyboardInterrupt):
        k.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "b", "tiny", "kamradt"))
    monkeypatch.setattr(ResultsWriter, "add_sample", original)
    resumed = k.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "b", "tiny", "kamradt"))
    assert without_timings(resumed) == without_timings(whole)
    assert [(c["length"], c["depth"]) for c in whole] == [(n, d) for n in (320, 384) for d in (0.0, 0.5, 1.0)]
    for record in whole[0]["records"]:
        assert {"generated", "found", "key_phrase_score", "needle_char", "prompt_sha1", "stopped",
                "seed"} <= set(record)


def test_sharing_batching_and_early_stop_keep_every_grade(tiny, books, tmp_path):
    """The fast path (shared KV prefix, the depths of a length decoded as one batch, stop once found) decodes what
    fresh prefills of the whole budget, one at a time, decode."""
    model, tokenizer = tiny
    runs = {}
    for fast in (True, False):
        cfg = k.Config(lengths=[384], depths=[0.0, 0.5, 1.0], haystack_dir=str(books), buffer=12, past_context=True,
                       share_prefix=fast, stop_when_found=fast, batch=8 if fast else 1)
        cells = k.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / str(fast), "tiny", "kamradt"))
        runs[fast] = [(c["depth"], r["found"], r["generated"]) for c in cells for r in c["records"]]
    assert runs[True] == runs[False]


def test_tiny_model_end_to_end_through_the_cli_with_his_heatmap(tiny_llama_dir, books, tmp_path):
    out = tmp_path / "results"
    argv = ["eval", "kamradt", "--model", str(tiny_llama_dir), "--lengths", "320,384", "--depths", "0,0.5,1",
            "--haystack-dir", str(books), "--buffer", "8", "--past-context", "--out", str(out), "--label", "tiny"]
    assert main(argv) == 0
    cells = [json.loads(line) for line in (out / "tiny" / "kamradt.jsonl").read_text().splitlines()]
    assert len(cells) == 6 and all(c["chat_template"] == "off" and len(c["score_ci95"]) == 2 for c in cells)
    assert all(r["prompt_tokens"] + 8 == c["length"] for c in cells for r in c["records"])
    assert main(["report", str(out)]) == 0
    png = out / "kamradt_heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "## Kamradt needle in a haystack" in markdown and "| Depth | 320 | 384 |" in markdown
    assert "](kamradt_heatmap.png)" in markdown and "\n### Kamradt score\n" in markdown


@pytest.mark.parametrize("extra, message", [
    (["--haystack-dir", ""], "needs --haystack-dir"),
    (["--chat-template", "on"], "no chat template"),
    (["--judge", "nope"], "module:function"),
    (["--lengths", "2k"], "too little text"),
    (["--lengths", "100"], "too short"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_llama_dir, tmp_path, capsys, extra, message):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("One short sentence. Another one here. " * 20)
    argv = ["eval", "kamradt", "--model", str(tiny_llama_dir), "--lengths", "384", "--haystack-dir", str(small),
            "--past-context", "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))
