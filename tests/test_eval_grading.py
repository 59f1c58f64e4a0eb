"""Retrieval is graded by content (the passkey's first integer, NIAH's number as a substring) with the token-exact
grade beside it; the forced pass gives generate mode's grades, and the report labels cells that predate them."""

from __future__ import annotations

import json
import random
import types

import pytest
from scripted_model import ScriptedModel

from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import niah, passkey
from longctx.evals.tasks.data import SentenceTokens, load_texts
from longctx.evals.tasks.scoring import contains_answer, grade_prompts

KEY = "8109231"


@pytest.mark.parametrize("text, correct", [
    ("\n8109231", True), (" 8109231.", True), ("The pass key is 8109231", True), ("8109232", False),
    ("81092315", False), ("", False), ("no number", False), ("1 then 8109231", False),
])
def test_passkey_grades_the_first_integer(text, correct):
    assert passkey.grade_passkey(text, KEY) is correct


@pytest.mark.parametrize("start, decided", [
    ("", None), ("\n", None), (" 81", None), (" 8109231", None),  # the next token may still add digits
    (" 815", False), (" 81092315", False), (" 7.", False),       # no continuation makes these the key
    (" 8109231.", True), ("\n8109231\n", True),
])
def test_passkey_grade_of_the_start_of_an_answer(start, decided):
    assert passkey.grade_passkey(start, KEY, complete=False) is decided


def test_niah_grades_each_value_as_a_substring_ignoring_case():
    assert contains_answer("The special magic number for Oslo is 8109231.", KEY) is True
    assert contains_answer("\n8109231", KEY) is True
    assert contains_answer("8109232", KEY) is False
    assert contains_answer("the ANSWER is Abc", "abc") is True
    assert contains_answer("810923", KEY, complete=False) is None  # the rest of the answer may hold it
    assert contains_answer("x 8109231", KEY, complete=False) is True


class Scripted(ScriptedModel):
    """A model that, after each known context + question, emits the tokens its script gives, then EOS; after
    anything else, token 0 (the teacher-forced pass feeds it the gold answer, which the script may not follow)."""

    def __init__(self, tokenizer, scripts: list[tuple[list[int], str]]):
        super().__init__(tokenizer, [prompt + tokenizer(text, add_special_tokens=False)["input_ids"]
                                     + [tokenizer.eos_token_id] for prompt, text in scripts])


def _passkey_prompt(tokenizer, key: str):
    trial = passkey.PasskeyTrial(tokenizer, 200, random.Random(0), key_digits=(len(key), len(key)))
    trial.passkey = key  # the same prompt with a known key
    trial.needle_text = passkey.NEEDLE.format(key=key)
    trial.needle = passkey.continuation(tokenizer, passkey.AFTER_SENTENCE, trial.needle_text)
    trial.answer = passkey.continuation(tokenizer, passkey.QUESTION, " " + key)
    return trial.prompt(0.5)


# (what the model says after the question, content grade, token-exact grade, greedy decoding needed in forced mode)
ANSWERS = [
    (" 8109231", True, True, False),    # the gold tokens, then EOS: the forced pass settles both
    ("\n8109231", True, False, True),   # a failure seen on SmolLM2: a newline where the gold answer has a space
    (" 8109232", False, False, False),  # a wrong number is wrong by both
    (" 81092315", False, True, False),  # the key run on into more digits: its first integer is another number
    (" The pass key is 8109231.", True, False, True),
]


@pytest.mark.parametrize("said, content, strict, decodes", ANSWERS)
@pytest.mark.parametrize("mode", ["forced", "generate"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_forced_and_generate_give_both_grades_of_the_same_greedy_answer(tiny, said, content, strict, decodes,
                                                                        mode, share_prefix):
    _, tokenizer = tiny
    prompt = _passkey_prompt(tokenizer, KEY)
    query = prompt.queries[0]
    model = Scripted(tokenizer, [(prompt.context + query.question, said)])
    [[graded]] = grade_prompts(model, tokenizer, [prompt], mode=mode, share_prefix=share_prefix,
                               grade=passkey.grade_passkey)
    assert (graded.correct, graded.strict) == (content, strict), graded
    assert graded.generated == (decodes or mode == "generate")
    assert "".join(graded.tokens).startswith(said if mode == "generate" else said[:1])  # why it failed, token by token
    sample = passkey.PasskeyTrial.sample(types.SimpleNamespace(passkey=KEY, filler_start=0), 1, [graded])
    assert (sample["correct"], sample["correct_strict"], sample["tokens"]) == (content, strict, graded.tokens)
    assert (graded.hits is None) == (mode == "generate")


def test_niah_recall_counts_each_needle_by_content(tiny):
    _, tokenizer = tiny
    trial = niah.NiahTrial(tokenizer, 300, random.Random(2), SentenceTokens(tokenizer, load_texts("pydoc")), needles=3)
    prompt = trial.prompt(0.2)
    first, second, third = trial.numbers
    said = [f" {first}", f"\nthe number is {second}", f" {int(third) + 1}"]  # exact, by content only, wrong
    model = Scripted(tokenizer, [(prompt.context + q.question, s) for q, s in zip(prompt.queries, said, strict=True)])
    for mode in ("forced", "generate"):
        [grades] = grade_prompts(model, tokenizer, [prompt], mode=mode, grade=contains_answer)
        sample = trial.sample(7, grades)
        assert (sample["retrieved"], sample["retrieved_strict"], sample["correct"], sample["correct_strict"]) == (
            2, 1, False, False)
        assert len(sample["tokens"]) == 3
        summary = niah.summarize_for(3)([sample, {**sample, "retrieved": 3, "retrieved_strict": 3}])
        assert summary["score"] == pytest.approx(5 / 6) and summary["score_strict"] == pytest.approx(4 / 6)
        assert (summary["retrieved"], summary["retrieved_strict"], summary["questions"]) == (5, 4, 6)


def test_samples_journaled_before_content_grading_keep_the_cell_readable():
    summary = passkey.summarize([{"correct": True}, {"correct": False, "correct_strict": False}])
    assert summary["accuracy"] == 0.5 and "accuracy_strict" not in summary


@pytest.mark.parametrize("name", ["passkey", "niah"])
def test_tiny_model_cells_carry_both_grades_and_forced_equals_generate(tiny, tmp_path, name):
    model, tokenizer = tiny
    task = {"passkey": passkey.TASK, "niah": niah.TASK}[name]
    value, (hits, totals) = task.value_key, task.counts
    grades = {}
    for mode in ("forced", "generate"):
        cfg = task.Config(lengths=[220], depths=[0.0, 0.5, 1.0], trials=3, seed=1, mode=mode, control=False)
        cells = task.run(model, tokenizer, cfg, ResultsWriter(tmp_path, mode, name))
        for cell in cells:
            assert cell[f"{value}_strict"] == pytest.approx(cell[f"{hits}_strict"] / cell[totals])
            assert cell[value] == pytest.approx(cell[hits] / cell[totals])
            for sample in cell["samples"]:
                assert {"correct", "correct_strict", "tokens", "generated"} <= set(sample)
                grades[mode, cell["depth"], sample["seed"]] = (sample["correct"], sample["correct_strict"])
        written = [json.loads(line) for line in (tmp_path / mode / f"{name}.jsonl").read_text().splitlines()]
        assert all(f"{value}_strict" in cell for cell in written)
    forced = {k[1:]: v for k, v in grades.items() if k[0] == "forced"}
    assert forced == {k[1:]: v for k, v in grades.items() if k[0] == "generate"}


def test_a_trial_journaled_before_content_grading_is_graded_again(tiny, tmp_path):
    model, tokenizer = tiny
    cfg = passkey.Config(lengths=[180], depths=[0.5], trials=2, seed=3, control=False)
    first = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "a", "passkey"))[0]
    old = {k: v for k, v in first["samples"][0].items() if k not in ("correct_strict", "tokens", "generated")}
    journal = tmp_path / "b" / "passkey.partial"
    journal.parent.mkdir()
    journal.write_text(json.dumps({"key": first["key"], "unit": old["seed"], "sample": old}) + "\n")
    again = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "b", "passkey"))[0]
    assert again["samples"] == first["samples"] and again["accuracy_strict"] == first["accuracy_strict"]


def _write_cells(folder, cells):
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"label": folder.name, "trained_length": 8192}))
    (folder / "passkey.jsonl").write_text("".join(json.dumps(cell) + "\n" for cell in cells))


def _cell(length, correct, strict=None, mode="forced"):
    cell = {"task": "passkey", "key": f"passkey|L={length}|depth=0.5|key_digits=5-7|mode={mode}", "length": length,
            "depth": 0.5, "key_digits": "5-7", "mode": mode, "trials": 5, "correct": correct,
            "accuracy": correct / 5, "accuracy_ci95": [0, 1]}
    if strict is not None:
        cell |= {"correct_strict": strict, "accuracy_strict": strict / 5}
    return cell


def test_report_heads_with_the_content_grade_and_labels_older_cells(tmp_path):
    from longctx.evals.report.page import write_report

    _write_cells(tmp_path / "res" / "new", [_cell(4096, 4, strict=2), _cell(8192, 5, strict=5)])
    _write_cells(tmp_path / "res" / "old", [_cell(4096, 3), _cell(8192, 1)])
    _write_cells(tmp_path / "res" / "old-generate", [_cell(4096, 1, mode="generate")])
    write_report(tmp_path / "res")
    markdown = (tmp_path / "res" / "report.md").read_text()
    table = markdown.split("### Passkey accuracy", 1)[1].split("\n\n", 2)[1]
    assert "| **new** | 0.80 [0.38, 0.96] (exact 0.40) | 1.00 [0.57, 1.00] |" in table
    assert "| **old** | 0.60 [0.23, 0.88]† | 0.20 [0.04, 0.62]† |" in table
    # generate mode is always graded by content; ‡: another series (mode=generate) than the column's forced cells
    assert "| **old-generate** | 0.20 [0.04, 0.62]‡ | – |" in table
    assert "(old-generate: passkey mode=generate" in markdown
    assert "(exact x): the token-exact grade" in markdown and "†: graded token-exact only (greedy" in markdown
    assert "0.80 (exact 0.40)" in (tmp_path / "res" / "report.html").read_text()
    rows = {m["label"]: m["by_length"] for m in json.loads((tmp_path / "res" / "summary.json").read_text())["models"]}
    assert (rows["new"][0]["passkey"], rows["new"][0]["passkey_strict"], rows["new"][0]["passkey_graded_by"]) == (
        0.8, 0.4, "content")
    assert (rows["old"][0]["passkey_strict"], rows["old"][0]["passkey_graded_by"]) == (None, "token-exact")
    assert rows["old-generate"][0]["passkey_graded_by"] == "content"
