"""Retrieval beyond the trained length comes with a control inside it, unless the suite opts out."""

from __future__ import annotations

import pytest

from longctx.errors import UsageError
from longctx.evals.suite import make_config
from longctx.evals.tasks.base import with_control


def test_lengths_all_beyond_the_window_gain_the_longest_power_of_two_inside_it():
    assert with_control([12288, 16384], 8192, True) == [8192, 12288, 16384]
    assert with_control([12288], 6000, True) == [4096, 12288]
    assert with_control([4096, 16384], 8192, True) == [4096, 16384]  # a length inside already: nothing added
    assert with_control([12288, 16384], 8192, 2048) == [2048, 12288, 16384]  # the length the suite names
    assert with_control([12288, 16384], 8192, False) == [12288, 16384]  # opted out
    with pytest.raises(UsageError, match="within the trained 8192 tokens"):
        with_control([16384], 8192, 12288)


@pytest.mark.parametrize("task", ["passkey", "niah"])
def test_control_is_a_suite_key(task):
    assert make_config(task, {"lengths": [16384]}).control is True
    assert make_config(task, {"lengths": [16384], "control": False}).control is False
    assert make_config(task, {"lengths": [16384], "control": 4096}).control == 4096


def test_a_passkey_run_past_the_window_measures_the_control(tiny, tmp_path):
    from longctx.evals.run.results import ResultsWriter
    from longctx.evals.tasks import passkey

    model, tokenizer = tiny  # trained length 256
    cfg = passkey.Config(lengths=[300], depths=[0.5], trials=1)
    cells = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", "passkey"))
    assert [c["length"] for c in cells] == [256, 300]
