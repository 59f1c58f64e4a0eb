"""Passkey protocol: an independent key and filler per (length, depth, trial), configurable key digits, and a
Wilson 95% interval next to every retrieval accuracy."""

from __future__ import annotations

import json
import random

import pytest

from longctx.errors import UsageError
from longctx.evals.run.results import ResultsWriter
from longctx.evals.suite import make_config
from longctx.evals.tasks import niah, passkey
from longctx.evals.tasks.scoring import wilson_interval


@pytest.mark.parametrize("successes, n, expected", [
    (5, 5, [0.5655, 1.0]), (0, 5, [0.0, 0.4345]), (3, 10, [0.1078, 0.6032]), (50, 100, [0.4038, 0.5962]),
    (0, 0, [0.0, 1.0]),
])
def test_wilson_interval_known_values(successes, n, expected):
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-4)


def test_key_digits_setting():
    assert make_config("passkey", {"lengths": "1k"}).key_digits == "5-7"
    assert make_config("passkey", {"lengths": "1k", "key_digits": 6}).key_digits == "6"
    assert make_config("passkey", {"lengths": "1k", "key_digits": " 3 - 4 "}).key_digits == "3-4"
    for bad in ("7-5", "x", "0", 40):
        with pytest.raises(UsageError, match="key_digits"):
            make_config("passkey", {"lengths": "1k", "key_digits": bad})


def test_every_depth_and_trial_draws_its_own_key_and_filler(tiny, tmp_path):
    model, tokenizer = tiny
    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    cfg = passkey.Config(lengths=[180], depths=depths, trials=4, seed=3)
    cells = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "passkey"))
    samples = [sample for cell in cells for sample in cell["samples"]]
    assert len(samples) == 20 and len({s["seed"] for s in samples}) == 20
    assert len({s["passkey"] for s in samples}) == 20  # not one key per trial shared by every depth
    for trial in range(4):  # the same trial index at different depths: other keys and other filler starts
        assert len({cell["samples"][trial]["passkey"] for cell in cells}) == len(depths)
    assert {len(s["passkey"]) for s in samples} == {5, 6, 7}
    assert len({s["filler_start"] for s in samples}) > 1
    for cell in cells:
        assert cell["key"] == f"passkey|L=180|depth={cell['depth']:g}|key_digits=5-7|mode=forced"
        assert cell["accuracy_ci95"] == pytest.approx(wilson_interval(cell["correct"], 4))
        for sample in cell["samples"]:  # the recorded seed rebuilds the prompt
            rebuilt = passkey.PasskeyTrial(tokenizer, 180, random.Random(sample["seed"]))
            assert (rebuilt.passkey, rebuilt.filler_start) == (sample["passkey"], sample["filler_start"])


def test_key_digits_reach_the_prompts_and_the_cell_key(tiny, tmp_path):
    model, tokenizer = tiny
    cfg = make_config("passkey", {"lengths": 160, "depths": "0,1", "trials": 3, "key_digits": 3})
    cells = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "passkey"))
    assert all(len(s["passkey"]) == 3 for cell in cells for s in cell["samples"])
    assert all("|key_digits=3|" in cell["key"] for cell in cells)
    trial = passkey.PasskeyTrial(tokenizer, 160, random.Random(0), key_digits=(7, 7))
    assert len(trial.passkey) == 7 and trial.passkey[0] != "0"


def test_niah_cells_report_the_interval_over_questions():
    summary = niah.summarize_for(3)([{"retrieved": 3}, {"retrieved": 1}])
    assert summary["score"] == pytest.approx(4 / 6) and (summary["retrieved"], summary["questions"]) == (4, 6)
    assert summary["accuracy_ci95"] == pytest.approx(wilson_interval(4, 6))


def test_report_shows_the_pooled_interval_next_to_accuracy(tmp_path):
    from longctx.evals.report.page import write_report

    folder = tmp_path / "results" / "m"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"label": "m", "trained_length": 8192, "claimed_length": 8192}))
    cells = [{"task": "passkey", "key": f"passkey|L=4096|depth={d}|key_digits=5-7|mode=forced", "length": 4096,
              "depth": d, "key_digits": "5-7", "mode": "forced", "trials": 5, "correct": 5, "accuracy": 1.0,
              "accuracy_ci95": wilson_interval(5, 5), "samples": []} for d in (0.0, 1.0)]
    (folder / "passkey.jsonl").write_text("".join(json.dumps(cell) + "\n" for cell in cells))
    write_report(tmp_path / "results", tmp_path / "out")
    low, high = wilson_interval(10, 10)  # two depths of five trials, pooled
    assert f"1.00 [{low:.2f}, {high:.2f}]" in (tmp_path / "out" / "report.md").read_text()
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["models"][0]["by_length"][0]
    assert row["passkey_ci95"] == pytest.approx([low, high])
