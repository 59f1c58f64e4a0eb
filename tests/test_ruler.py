"""RULER's tasks: literal templates and scorers, exact lengths under real tokenizer families, resume, a tiny model
end to end, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from longctx.cli import main
from longctx.errors import UsageError
from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.ruler import TASK, Config, parse_tasks
from longctx.evals.tasks.ruler_niah import niah_templates
from longctx.evals.tasks.ruler_prompts import Wrapper, build_sample

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "books"
NEEDS_WORDS = pytest.mark.skipif(not rt.load_words().nouns, reason="wonderwords not installed (longctx[eval])")


def test_templates_are_rulers_literal_strings():
    """scripts/data/synthetic/constants.py of NVIDIA/RULER, character for character."""
    assert rt.TASKS["niah"]["template"] == (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
        "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for "
        "{query} mentioned in the provided text?")
    assert (
        rt.TASKS["niah"]["answer_prefix"]
        == " The special magic {type_needle_v} for {query} mentioned in the provided text are"
    )
    assert rt.TASKS["variable_tracking"]["template"] == (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: "
        "Find all variables that are assigned the value {query} in the text above."
    )
    assert rt.TASKS["variable_tracking"]["answer_prefix"] == (
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
        "the value {query}, they are: "
    )
    assert rt.TASKS["common_words_extraction"]["template"] == (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
        "appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
    )
    assert (
        rt.TASKS["common_words_extraction"]["answer_prefix"]
        == " Answer: The top 10 words that appear most often in the list are:"
    )
    assert rt.TASKS["freq_words_extraction"]["template"] == (
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?"
    )
    assert rt.TASKS["freq_words_extraction"]["answer_prefix"] == (
        " Answer: According to the coded text above, the three most frequently appeared words are:"
    )
    assert {k: v["tokens_to_generate"] for k, v in rt.TASKS.items()} == {
        "niah": 128,
        "variable_tracking": 30,
        "common_words_extraction": 120,
        "freq_words_extraction": 50,
        "qa": 32,
    }
    assert rt.NEEDLE == "One of the special magic {type_needle_v} for {key} is: {value}."
    assert rt.NOISE == "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    assert rt.DEPTHS[:4] == [0, 3, 5, 8] and rt.DEPTHS[-1] == 100 and len(rt.DEPTHS) == 40


def test_presets_are_synthetic_yaml():
    assert list(rt.SYNTHETIC) == [
        "niah_single_1",
        "niah_single_2",
        "niah_single_3",
        "niah_multikey_1",
        "niah_multikey_2",
        "niah_multikey_3",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
        "cwe",
        "fwe",
        "qa_1",
        "qa_2",
    ]
    haystacks = {name: args.get("type_haystack") for name, (_, args) in rt.SYNTHETIC.items()}
    assert (
        haystacks["niah_single_1"] == "noise"
        and haystacks["niah_multikey_2"] == "needle"
        and haystacks["vt"] == "noise"
    )
    assert (
        rt.SYNTHETIC["niah_multikey_3"][1]["type_needle_k"]
        == "uuids"
        == rt.SYNTHETIC["niah_multikey_3"][1]["type_needle_v"]
    )
    assert (
        rt.SYNTHETIC["niah_multivalue"][1]["num_needle_v"] == 4
        and rt.SYNTHETIC["niah_multiquery"][1]["num_needle_q"] == 4
    )
    assert rt.SYNTHETIC["cwe"][1] == {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10} and rt.SYNTHETIC["fwe"][1] == {
        "alpha": 2.0
    }


def test_niah_singular_rewrite_is_rulers():
    """One value asked for: RULER rewrites 'Some'->'A', 'are all'->'is', 'are'->'is' and drops the plural 's'."""
    template, prefix, kind = niah_templates(rt.SYNTHETIC["niah_single_1"][1])
    assert kind == "number"
    assert template.format(type_needle_v=kind, context="C", query="Q") == (
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about "
        "the number afterwards.\nC\nWhat is the special magic number for Q mentioned in the provided text?"
    )
    assert (
        prefix.format(type_needle_v=kind, query="Q")
        == " The special magic number for Q mentioned in the provided text is"
    )
    template, prefix, kind = niah_templates(rt.SYNTHETIC["niah_multivalue"][1])
    assert (
        kind == "numbers"
        and template.startswith("Some special magic {type_needle_v} are hidden")
        and prefix.endswith(" are")
    )


def test_scorers_are_rulers_by_hand():
    preds, refs = (
        ["The numbers are 123 and 456.", "nothing here", "UUID AbC-1"],
        [["123", "456", "789"], ["9"], ["abc-1"]],
    )
    assert rt.string_match_all(preds, refs) == round((2 / 3 + 0 + 1) / 3 * 100, 2) == 55.56
    assert rt.string_match_part(preds, refs) == round((1 + 0 + 1) / 3 * 100, 2) == 66.67
    assert rt.string_match_all(["ab"], [["AB", "b"]]) == 100.0  # case-insensitive substring
    assert rt.postprocess("  1234\x00567\t ") == "1234\n567"
    assert rt.found(" royal-cat is 1234567", ["1234567", "7654321"]) == 1


def test_unknown_task_says_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'niah_single_3'"):
        parse_tasks("niah_single")
    assert parse_tasks("vt,niah_single_1") == ["niah_single_1", "vt"] and len(parse_tasks("all")) == 13


@NEEDS_WORDS
@pytest.mark.parametrize("family", ["byte-level", "sentencepiece-legacy", "sentencepiece-reloaded", "llama3"])
def test_every_prompt_is_exactly_its_length_and_the_tokenization_of_its_text(retrieval_tokenizers, family):
    tokenizer = retrieval_tokenizers[family]
    essay = tuple(" ".join(rt.NOISE.replace("green", w) for w in ("red", "blue", "old", "new") * 400).split())
    res = rt.with_essay(rt.load_words(), essay)
    wrapper = Wrapper(tokenizer, "off")
    for name in ("niah_single_1", "niah_single_3", "niah_multikey_2", "niah_multiquery", "vt", "cwe", "fwe"):
        for length in (1536, 2048):
            sample = build_sample(name, length, 0, 7, res, wrapper)
            assert sample.exact and len(sample.ids) + sample.budget == length, (name, length)
            text = wrapper.text(sample.draft.user(0), sample.draft.answer_prefix)
            assert text.startswith(tokenizer.decode(sample.ids[:1], skip_special_tokens=True)[:0])
            again = build_sample(name, length, 0, 7, res, wrapper)
            assert again.ids == sample.ids and again.draft.outputs == sample.draft.outputs  # same seed, same sample
            assert build_sample(name, length, 1, 8, res, wrapper).ids != sample.ids


@NEEDS_WORDS
def test_prompt_ids_are_the_tokenization_of_the_prompt_text(retrieval_tokenizers):
    tokenizer = retrieval_tokenizers["sentencepiece-legacy"]
    res = rt.load_words()
    wrapper = Wrapper(tokenizer, "off")
    sample = build_sample("niah_single_1", 1024, 0, 3, res, wrapper)
    needle = sample.draft.meta["needles"][0]
    assert needle in tokenizer.decode(sample.ids) and sample.draft.outputs[0] in needle
    assert tokenizer.decode(sample.ids, skip_special_tokens=True).endswith("mentioned in the provided text is")


@NEEDS_WORDS
def test_resume_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    cfg = Config(lengths=[512], tasks="niah_single_1,fwe", samples=3, past_context=True)
    whole = TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "a", "tiny", "ruler"))
    calls = {"n": 0}
    original = ResultsWriter.add_sample

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResultsWriter, "add_sample", crash)
    with pytest.raises(KeyboardInterrupt):
        TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "b", "tiny", "ruler"))
    monkeypatch.setattr(ResultsWriter, "add_sample", original)
    resumed = TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / "b", "tiny", "ruler"))

    def strip(cells):
        return [
            {k: v for k, v in c.items() if k != "seconds"}
            | {"records": [{k: v for k, v in r.items() if k != "seconds"} for r in c["records"]]}
            for c in cells
        ]

    assert strip(resumed) == strip(whole)
    assert all(c["chat_template"] == "off" and len(c["records"]) == 3 for c in whole)
    for record in whole[0]["records"]:
        assert {"needles", "expected", "generated", "tokens_generated", "stopped", "seed"} <= set(record)


@NEEDS_WORDS
def test_sharing_batching_and_early_stop_keep_every_grade(tiny, tmp_path):
    """The fast path (shared KV prefix, samples decoded as one batch, stop once found) writes exactly what fresh
    prefills decoding one sample at a time for the whole budget write: text, tokens, grade."""
    model, tokenizer = tiny
    runs = {}
    for fast, batch in ((True, 8), (False, 1), (True, 2)):
        cfg = Config(lengths=[512], tasks="niah_single_1,niah_multikey_2", samples=3, past_context=True,
                     share_prefix=fast, stop_when_found=fast, batch=batch)
        cells = TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path / f"{fast}{batch}", "tiny", "ruler"))
        runs[fast, batch] = [(c["subtask"], r["index"], r["found"], r["generated"], r["tokens_generated"])
                             for c in cells for r in c["records"]]
    assert runs[True, 8] == runs[False, 1] == runs[True, 2]


@NEEDS_WORDS
def test_rows_leave_the_batch_as_they_finish_and_decode_as_alone(tiny):
    """Rows of one batch that stop at different steps (answer found early, late, never) decode what each decodes
    alone: the batch drops finished rows from its cache without disturbing the others."""
    import dataclasses

    from longctx.evals.tasks.ruler_decode import generate

    model, tokenizer = tiny
    wrapper = Wrapper(tokenizer, "off")
    samples = [build_sample("niah_single_1", 512, i, 11 + i, rt.load_words(), wrapper) for i in range(4)]
    alone = [text for _, text, *_ in generate(model, tokenizer, samples, share=False, stop_when_found=False, batch=1)]
    seen = [rt.postprocess(text) for text in alone]  # what `found` reads
    expect = [seen[0][:3], seen[1][:40], "never in any text", seen[3][:12]]
    samples = [dataclasses.replace(s, draft=dataclasses.replace(s.draft, outputs=[e]))
               for s, e in zip(samples, expect, strict=True)]
    runs = {batch: [(text, n, stopped) for _, text, n, stopped, _ in generate(model, tokenizer, samples, share=True,
                                                                            stop_when_found=True, batch=batch)]
            for batch in (1, 4)}
    assert runs[4] == runs[1]
    assert [stopped for *_, stopped in runs[4]] == ["found", "found", "budget", "found"]
    assert len({n for _, n, _ in runs[4]}) == 4


@NEEDS_WORDS
def test_tiny_model_end_to_end_and_report(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        "eval",
        "ruler",
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "512",
        "--tasks",
        "niah_single_1",
        "--samples",
        "2",
        "--past-context",
        "--out",
        str(out),
        "--label",
        "tiny",
    ]
    assert main(argv) == 0
    cells = [json.loads(line) for line in (out / "tiny" / "ruler.jsonl").read_text().splitlines()]
    assert [c["subtask"] for c in cells] == ["niah_single_1"] and cells[0]["length"] == 512
    assert 0 <= cells[0]["score"] <= 1 and len(cells[0]["score_ci95"]) == 2
    assert main(["report", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## RULER" in markdown and "| niah_single_1 |" in markdown and "effective length (avg ≥ 85.6)" in markdown
    page = (out / "report.html").read_text()  # the HTML page shows the same section
    assert "<h2>RULER</h2>" in page and "<b>Avg.</b>" in page
    assert "<tr class='task'><td class='txt'>niah_single_1</td>" in page


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "niah_singel_1"], "did you mean 'niah_single_1'"),
        (["--tasks", "niah_single_2"], "need --haystack-dir"),
        (["--chat-template", "on"], "no chat template"),
        (["--lengths", "100", "--tasks", "fwe"], "too short"),  # fwe: no wonderwords needed
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_llama_dir, tmp_path, capsys, extra, message):
    argv = [
        "eval",
        "ruler",
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "512",
        "--tasks",
        "niah_single_1",
        "--past-context",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))


def test_past_the_claimed_context_is_refused(tiny_llama_dir, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "ruler",
                "--model",
                str(tiny_llama_dir),
                "--lengths",
                "512",
                "--tasks",
                "niah_single_1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "pass --past-context" in capsys.readouterr().err


@NEEDS_WORDS
@pytest.mark.skipif(not BOOKS.is_dir(), reason="../shared/data/books is not beside the project")
def test_too_little_haystack_text_is_refused(tiny_llama_dir, tmp_path, capsys):
    small = tmp_path / "books"
    small.mkdir()
    (small / "a.txt").write_text((BOOKS / "complete_angler.txt").read_text()[:3000])
    assert (
        main(
            [
                "eval",
                "ruler",
                "--model",
                str(tiny_llama_dir),
                "--lengths",
                "2k",
                "--tasks",
                "niah_single_2",
                "--haystack-dir",
                str(small),
                "--past-context",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "too little text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seeds_differ_by_task_length_and_index():
    cfg = Config(lengths=[1024])
    seeds = {TASK.seed(cfg, n, L, i) for n in ("vt", "fwe") for L in (1024, 2048) for i in range(3)}
    assert len(seeds) == 12 and random.Random(1).random() == random.Random(1).random()


def test_the_table_averages_all_tasks_and_the_tasks_run_at_every_length():
    """RULER's average needs every task of the table at a length; a length that ran fewer (the study's 16K) has
    none and stops the effective length, and a second row averages the tasks run at every length."""
    from longctx.evals.tasks.ruler_report import table

    def cell(name, n, score):
        return {"subtask": name, "length": n, "ruler_score": score, "score_ci95": [score / 200, score / 100]}

    records = [cell("niah_single_1", 4096, 100.0), cell("vt", 4096, 90.0), cell("niah_single_1", 8192, 100.0),
               cell("vt", 8192, 80.0), cell("vt", 16384, 20.0)]
    rows, average, longest = table(records, 85.6)
    assert average == {4096: 95.0, 8192: 90.0} and longest == 8192
    assert rows[-2] == "| **Avg.** | **95.0** | **90.0** | – (not every task) |"
    assert rows[-1] == "| Avg. of vt (run at every length) | 90.0 | 80.0 | 20.0 |"
    rows, average, longest = table(records[:4], 92.0)
    assert longest == 4096 and rows[-1].startswith("| **Avg.** |")  # every task everywhere: no second row


def test_a_lengths_interval_counts_answers_and_holds_rulers_average():
    """vt asks 5 strings per answer and the NIAH tasks 1: pooling strings would weigh vt 5x and put RULER's
    average (the number shown) outside its own interval (0.44 beside [0.22, 0.40] in the study's first render).
    Answers are the trials, each scored by its share of strings, so the pooled rate is the average."""
    from longctx.evals.report.text import counts_text
    from longctx.evals.tasks.base import answer_interval
    from longctx.evals.tasks.intervals import wilson_interval
    from longctx.evals.tasks.ruler_report import table

    def cell(name, score, found, refs):
        return {"subtask": name, "length": 4096, "samples": 10, "score": score, "ruler_score": 100 * score,
                "found": found, "refs": refs, "score_ci95": wilson_interval(found, refs)}  # as older cells stored

    records = [cell("niah_single_1", 1.0, 10, 10), cell("niah_single_3", 0.1, 1, 10), cell("vt", 0.12, 6, 50)]
    counts = TASK.trial_counts(records)[4096]
    assert counts == (12.2, 30) and TASK.values(records)[4096] == pytest.approx(12.2 / 30)
    low, high = TASK.ci95(records)[4096]
    assert low < TASK.values(records)[4096] < high
    vt = wilson_interval(1.2, 10)
    assert answer_interval(records[2]) == vt  # not the stored 6 of 50 strings
    assert f"| vt | 12.0 [{100 * vt[0]:.0f}, {100 * vt[1]:.0f}] |" in table(records, 85.6)[0]
    assert counts_text(counts).startswith("12.2/30 [") and counts_text((3.0, 5)).startswith("3/5 [")


@NEEDS_WORDS
def test_a_cells_haystack_is_its_own_tasks_and_older_run_labelled_cells_are_still_found(tiny, tmp_path):
    """niah_single_1 reads no essay: its key and table are the same whether niah_single_2 ran beside it or not,
    and a cell (and journal) written when the label was the run's is found on resume, not recomputed."""
    import shutil
    from pydoc_data.topics import topics

    from longctx.evals.tasks.ruler import haystack_label

    model, tokenizer = tiny
    books = tmp_path / "books"
    books.mkdir()
    (books / "topics.txt").write_text("\n".join(topics.values()))
    mixed = Config(lengths=[512], tasks="niah_single_1,niah_single_2", samples=2, past_context=True,
                   haystack_dir=str(books))
    cells = TASK.run(model, tokenizer, mixed, ResultsWriter(tmp_path / "a", "tiny", "ruler"))
    label = haystack_label(rt.with_essay(rt.load_words(), rt.essay_from_folder(str(books))))
    assert [(c["subtask"], c["haystack"]) for c in cells] == [("niah_single_1", "none"), ("niah_single_2", label)]
    alone = Config(lengths=[512], tasks="niah_single_1", samples=2, past_context=True)
    lines = (tmp_path / "a" / "tiny" / "ruler.jsonl").read_text()
    assert TASK.run(model, tokenizer, alone, ResultsWriter(tmp_path / "a", "tiny", "ruler")) == cells[:1]
    assert (tmp_path / "a" / "tiny" / "ruler.jsonl").read_text() == lines  # found, not recomputed

    # The same results as an older version wrote them: niah_single_1 keyed and labelled by the run's books.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("ruler.jsonl", "ruler.partial"):
        path = tmp_path / "b" / "tiny" / name
        if path.exists():
            path.write_text(path.read_text().replace("haystack=none", f"haystack={label}").replace(
                '"haystack": "none"', f'"haystack": "{label}"'))
    old = (tmp_path / "b" / "tiny" / "ruler.jsonl").read_text()
    assert "haystack=none" not in old
    again = TASK.run(model, tokenizer, mixed, ResultsWriter(tmp_path / "b", "tiny", "ruler"))
    assert (tmp_path / "b" / "tiny" / "ruler.jsonl").read_text() == old
    assert [c["records"] for c in again] == [c["records"] for c in cells]

    # A half-finished older cell: its journaled sample counts, only the missing one runs.
    (tmp_path / "b" / "tiny" / "ruler.jsonl").write_text(old.splitlines(keepends=True)[1])
    partial = tmp_path / "b" / "tiny" / "ruler.partial"
    lines = partial.read_text().splitlines(keepends=True)
    legacy = [line for line in lines if json.loads(line)["key"].startswith("ruler|name=niah_single_1")]
    assert len(legacy) == 2 and all(label in json.loads(line)["key"] for line in legacy)
    partial.write_text("".join(line for line in lines if line != legacy[1]))
    calls = []
    writer = ResultsWriter(tmp_path / "b", "tiny", "ruler")
    original = writer.add_sample
    writer.add_sample = lambda key, sample, unit=None: (calls.append((key, unit)), original(key, sample, unit=unit))
    redone = TASK.run(model, tokenizer, mixed, writer)
    assert redone[0]["haystack"] == "none" and "haystack=none" in redone[0]["key"]
    assert [r["generated"] for r in redone[0]["records"]] == [r["generated"] for r in cells[0]["records"]]
    assert calls == [(redone[0]["key"].replace("|samples=2", ""), json.loads(legacy[1])["unit"])]

def test_cells_without_an_essay_join_the_table_of_their_chat_template():
    def cell(subtask, haystack, chat="on"):
        return {"subtask": subtask, "haystack": haystack, "chat_template": chat, "length": 512}

    books, other = "books:10w:aaaa", "books:20w:bbbb"
    vt_alone, vt_mixed, essay = cell("vt", "none"), cell("vt", books), cell("niah_single_2", books)
    assert TASK.group([vt_alone, essay, vt_mixed]) == {("on", books): [essay, vt_alone, vt_mixed]}
    assert TASK.group([vt_alone]) == {("on", "none"): [vt_alone]}
    off = cell("vt", "none", chat="off")
    assert TASK.group([essay, off]) == {("on", books): [essay], ("off", "none"): [off]}
    two = cell("niah_single_2", other)  # two essays: which table vt belongs to is not known, so it stays apart
    assert TASK.group([essay, two, vt_alone]) == {("on", books): [essay], ("on", other): [two],
                                                  ("on", "none"): [vt_alone]}
