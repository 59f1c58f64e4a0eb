"""runs.jsonl records every run that made numbers, including one stopped midway, and no rerun that made none."""

from __future__ import annotations

import json

import pytest


def records(out, label="tiny") -> list[dict]:
    path = out / label / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture
def books(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(" ".join(f"word{i % 50}." for i in range(2000)))
    return tmp_path / "books"


def test_an_interrupted_run_records_the_cells_it_finished(tiny_llama_dir, books, tmp_path, monkeypatch):
    from longctx.evals.run import results
    from longctx.evals.suite import make_config, run_tasks

    configs = {"ppl": make_config("ppl", {"lengths": "64,128", "docs": 1, "data": str(books)})}
    append = results.ResultsWriter.append

    def append_then_stop(self, record):  # SIGTERM arrives (longctx.cli turns it into KeyboardInterrupt)
        append(self, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(results.ResultsWriter, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_tasks(str(tiny_llama_dir), configs, tmp_path / "out", label="tiny")
    (run,) = records(tmp_path / "out")
    assert run["interrupted"] is True and run["cells_computed"] == {"ppl": 1}

    monkeypatch.setattr(results.ResultsWriter, "append", append)
    run_tasks(str(tiny_llama_dir), configs, tmp_path / "out", label="tiny")  # resumes: the other cell
    assert [r["cells_computed"] for r in records(tmp_path / "out")] == [{"ppl": 1}, {"ppl": 1}]
    run_tasks(str(tiny_llama_dir), configs, tmp_path / "out", label="tiny")  # nothing left: no record
    assert len(records(tmp_path / "out")) == 2


def test_sigterm_stops_the_cli_like_ctrl_c(monkeypatch):
    import os
    import signal

    from longctx import cli

    def command(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(func=command)
    assert cli.main([]) == 143  # 128 + SIGTERM, as a shell reports it (Ctrl-C: 130)
    assert signal.getsignal(signal.SIGTERM) is not cli._interrupt  # restored afterwards
