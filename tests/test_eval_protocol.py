"""Eval tasks behind one protocol: a task nobody else has heard of, registered here, runs from the CLI and a
suite, gets its table, legend, figure and summary.json columns, and joins the bench, with no edit anywhere
else; the modules that iterate over tasks name none; the bench's baseline grades the prompts `run` grades."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from longctx.cli import main
from longctx.evals.run.results import ResultsWriter
from longctx.evals.suite import make_config
from longctx.evals.tasks import all_tasks, passkey
from longctx.evals.tasks.base import RetrievalTask
from longctx.evals.tasks.scoring import grade_prompts

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")


@dataclass
class EchoConfig:
    lengths: list[int]
    depths: list[float] = field(default_factory=lambda: [0.0, 1.0])
    trials: int = 1
    mode: str = "forced"
    seed: int = 0
    share_prefix: bool = True
    echoes: int | None = None  # a setting of its own: what a suite accepts for it comes from this field alone


class Echo(RetrievalTask):
    """Passkey prompts under another name: everything a retrieval task declares, and nothing more."""

    name, label, metric, order = "echo", "echo", "echo accuracy", 99
    help = "passkey prompts under another name"
    Config = EchoConfig
    value_key, counts = "accuracy", ("correct", "trials")
    grade = staticmethod(passkey.grade_passkey)
    flag_defaults = {"depths": "0,1", "trials": 1}
    heatmap_title, heatmap_caption = "Echo accuracy", "Echo accuracy by context length and depth."

    def variant(self, record: dict) -> tuple:
        return (record.get("mode"),)

    def variant_name(self, variant: tuple) -> str:
        return f"mode={variant[0]}"

    def key_fields(self, cfg, length: int, depth: float) -> dict:
        return {"length": length, "depth": depth, "mode": cfg.mode}

    def builder(self, tokenizer, cfg):
        return lambda length, rng: passkey.PasskeyTrial(tokenizer, length, rng)

    def summarizer(self, cfg):
        return passkey.summarize


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(all_tasks(), "echo", Echo())


def test_a_suite_takes_what_the_tasks_config_fields_say(echo):
    """Keys, nulls and whole numbers come from each task's Config fields, not from names listed in suite.py."""
    from longctx.errors import UsageError

    assert make_config("echo", {"lengths": "200", "echoes": None}).echoes is None
    assert make_config("echo", {"lengths": "200", "echoes": 3}).echoes == 3
    with pytest.raises(UsageError, match="echoes of task echo must be an integer"):
        make_config("echo", {"lengths": "200", "echoes": "3"})
    with pytest.raises(UsageError, match="chunk_tokens of task ppl must be an integer"):
        make_config("ppl", {"lengths": "200", "chunk_tokens": "1k"})
    assert make_config("ppl", {"lengths": "200", "stride": None, "data": None}).stride is None
    with pytest.raises(UsageError, match="unknown key 'stride' for task echo"):
        make_config("echo", {"lengths": "200", "stride": 4})


def test_a_registered_task_reaches_cli_suite_summary_report_and_bench(echo, tiny_llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["eval", "echo", "--model", tiny_llama_dir, "--lengths", "160", "--out", out, "--label", "cli"]) == 0
    cells = [json.loads(line) for line in (out / "cli" / "echo.jsonl").read_text().splitlines()]
    assert [c["key"] for c in cells] == ["echo|L=160|depth=0|mode=forced", "echo|L=160|depth=1|mode=forced"]
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  ppl: {lengths: 128, docs: 1}\n  echo: {lengths: '160,200', trials: 2}\n")
    assert main(["eval", "suite", suite, "--model", tiny_llama_dir, "--labels", "suite", "--out", out]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert "echo_heatmaps.png" in summary["figures"] and (out / "echo_heatmaps.png").stat().st_size > 0
    for model in summary["models"]:
        assert model["series"]["echo"] == "mode=forced"
        for row in model["by_length"]:
            if row["length"] != 128:  # echo is the only retrieval task that ran: retrieval is its accuracy
                assert row["echo"] is not None and row["retrieval"] == row["echo"] and len(row["echo_ci95"]) == 2
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "\n### Echo accuracy\n" in markdown and "<th colspan=2>Echo accuracy</th>" in page
    assert "mean of passkey accuracy, NIAH score, RULER score, Kamradt score and echo accuracy" in markdown
    assert "echo mode=forced" in markdown and "Echo accuracy by context length and depth." in page

    from bench import bench_sweep

    asked = []
    monkeypatch.setattr(bench_sweep.common, "run_child", lambda target, kwargs, timeout: asked.append(kwargs) or {})
    section = bench_sweep.run(SimpleNamespace(device="cpu", sizes=[256], timeout=1))
    assert list(section["tasks"]) == [t.name for t in all_tasks().values() if isinstance(t, RetrievalTask)]
    assert {kwargs["task"] for kwargs in asked} == {"passkey", "niah", "echo"}


@pytest.mark.parametrize("name", [name for name, task in all_tasks().items() if isinstance(task, RetrievalTask)])
def test_the_bench_baseline_grades_the_prompts_that_run_grades(tiny, tmp_path, name):
    """bench_sweep's `generate` path takes `task.prompts`: the same seeds, depths and token ids as `run`."""
    model, tokenizer = tiny
    task = all_tasks()[name]
    cfg = make_config(name, {"lengths": "200", "depths": "0,0.5", "trials": 2, "seed": 4})
    cells = task.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "tiny", name))
    samples = {(cell["depth"], sample["seed"]): sample for cell in cells for sample in cell["samples"]}
    prompts = task.prompts(tokenizer, cfg, 200)
    assert sorted((depth, seed) for depth, seed, _ in prompts) == sorted(samples)
    grades = grade_prompts(model, tokenizer, [prompt for _, _, prompt in prompts], share_prefix=False)
    for (depth, seed, prompt), graded in zip(prompts, grades, strict=True):
        assert len(prompt.context) + len(prompt.queries[0].question) == 200
        assert " | ".join(g.answer.strip() for g in graded) == samples[depth, seed]["answer"]
        assert all(g.correct for g in graded) == samples[depth, seed]["correct"]


ITERATORS = ["longctx/evals/report/load.py", "longctx/evals/report/judge.py", "longctx/evals/report/text.py",
             "longctx/evals/report/summary_json.py", "longctx/evals/report/page.py", "longctx/evals/report/plots.py",
             "longctx/evals/report/page_table.py", "longctx/evals/report/page_markdown.py",
             "longctx/evals/report/page_html.py",
             "longctx/evals/suite.py", "longctx/evals/cli.py", "bench/bench_sweep.py",
             # shared machinery
             "longctx/evals/run/results.py", "longctx/evals/tasks/scoring.py", "longctx/evals/run/parallel.py"]


@pytest.mark.parametrize("path", ITERATORS)
def test_the_modules_that_iterate_over_tasks_name_none(path):
    """No string or attribute equal to a task name: a branch on a name would hold one. Docstrings and the keys
    of dict literals (summary.json's flag records say "ppl" for a perplexity) are not branches."""
    names = set(all_tasks())
    tree = ast.parse((ROOT / path).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    named = [(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
             and id(node) not in docstrings | keys and node.value in names]
    named += [
        (node.lineno, node.attr) for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in names
    ]
    assert not named, named
    template = (ROOT / "longctx/templates/report.html.j2").read_text()
    assert not [name for name in names if f"'{name}'" in template or f".{name}" in template]
