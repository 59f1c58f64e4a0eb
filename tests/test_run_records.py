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
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main([]) == 143  # 128 + SIGTERM, as a shell reports it (Ctrl-C: 130)
    assert signal.getsignal(signal.SIGTERM) is before  # restored afterwards


def test_the_demo_records_its_wall_time_and_steps_also_when_it_fails(tmp_path, monkeypatch):
    from longctx import demo
    from longctx.cli import main

    def workflow(args, step):
        step("1. first")
        step("2. second")
        return 0 if args.skip_eval else 1

    monkeypatch.setattr(demo, "workflow", workflow)
    monkeypatch.setattr("sys.argv", ["longctx", "demo"])
    out = tmp_path / "demo-out"
    assert main(["demo", "--out", str(out), "--skip-eval"]) == 0
    assert main(["demo", "--out", str(out)]) == 1
    runs = [json.loads(line) for line in (out / demo.RECORD).read_text().splitlines()]
    assert [(r["exit_code"], r["completed"], r["skip_eval"]) for r in runs] == [(0, True, True), (1, False, False)]
    for run in runs:
        assert [s["step"] for s in run["steps"]] == ["1. first", "2. second"]
        assert run["wall_seconds"] >= 0 and run["machine"]["cores"] and run["command"].startswith("longctx demo")
    assert demo.last_complete_run(out / demo.RECORD) is None  # a skipped step or a failure is no timing of the demo
    whole = {**runs[0], "skip_eval": False, "wall_seconds": 125.4, "commit": "0123456789ab", "dirty": False,
             "machine": {"cores": 2, "cpu": "Intel Xeon"}, "command": "longctx demo --out demo-out"}
    (out / demo.RECORD).write_text(json.dumps(whole) + "\n")
    assert demo.timing_text(demo.last_complete_run(out / demo.RECORD)) == (
        "Measured: 2 min 5 s for `longctx demo --out demo-out` on 2 cores of Intel Xeon (commit 0123456)")


def test_a_patch_and_a_bench_section_carry_the_run_record_of_provenance(tiny_llama_dir, tmp_path):
    """One kind of run record: `longctx patch`'s longctx_patch.json and the bench's environment hold the commit and
    the machine as `provenance.RunRecord` writes them in runs.jsonl."""
    import sys
    from pathlib import Path

    from longctx.checkpoint import write_patched_checkpoint
    from longctx.patch import PatchSpec
    from longctx.provenance import git_commit

    out = write_patched_checkpoint(tiny_llama_dir, tmp_path / "p", PatchSpec(method="base", base=1e6))
    record = json.loads((out / "longctx_patch.json").read_text())
    assert record["commit"] == git_commit()["commit"] and record["machine"]["cores"] >= 1
    assert record["command"] is None  # not run from the CLI

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import common

    env = common.environment("cpu")
    assert env["commit"] == record["commit"] and env["machine"]["cpu"] == env["device_name"]
    assert "commit " + (env["commit"] or "")[:7] in common.environment_lines({**env, "dirty": False})
