"""The numbers on results pages come from the committed result files: a page's table is checked against them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "docs" / "results" / "smollm2-extension-cpu"


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after `heading`, cells stripped of bold."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines[start + 2:end]]


def _ppl(label: str) -> dict[int, dict]:
    cells = {}
    for line in (STUDY / label / "ppl.jsonl").read_text().splitlines():
        cell = json.loads(line)
        cells[cell["length"]] = cell  # the last line of a length wins, as in the report
    return cells


@pytest.mark.skipif(not STUDY.is_dir(), reason="no committed study")
def test_the_study_perplexity_table_is_the_committed_cells():
    rows = _table((STUDY / "README.md").read_text(), "## Perplexity (")
    assert len(rows) == 9
    for row in rows:
        label, values = row[0], row[2:7]
        cells = _ppl(label)
        for length, shown in zip((2048, 4096, 8192, 12288, 16384), values, strict=True):
            assert shown == f"{cells[length]['ppl']:.2f}", (label, length)
        last = cells[16384]["buckets"][-2:]  # 16K: NLL of the last 2K tokens (two 1K buckets)
        assert row[7] == f"{sum(b['nll'] for b in last) / 2:.2f}", label
        original = _ppl("original")[8192]["ppl"]
        cost = cells[8192]["ppl"] / original - 1
        expected = "–" if label == "original" else "0" if abs(cost) < 5e-4 else None
        if expected is None:
            digits = 0 if abs(cost) >= 0.1 else 1
            expected = f"{cost * 100:+.{digits}f}%".replace("-", "−")
        assert row[8] == expected, label


def test_readme_headline_cites_only_numbers_in_the_study_summary():
    """Every 'k/15' the README headline quotes is a pooled passkey count of the study's summary.json."""
    readme = (STUDY.parent.parent.parent / "README.md").read_text()
    headline = readme.split("**What it shows, measured on 2 CPU cores**", 1)[1].split("From-scratch byte models", 1)[0]
    summary = json.loads((STUDY / "summary.json").read_text())
    counts = {tuple(row["retrieval_counts"]) for m in summary["models"] for row in m["by_length"]
              if row.get("retrieval_counts")}
    quoted = {(int(k), int(n)) for k, n in re.findall(r"\b(\d+)/(\d+)\b", headline)}
    assert quoted and quoted <= counts


def test_the_readme_demo_timing_is_the_committed_demo_record():
    """A demo timing in the README is `demo.timing_text` of the last whole run in docs/results/demo/runs.jsonl
    (copied there from demo-out/runs.jsonl); without that file the README quotes none."""
    from longctx.demo import RECORD, last_complete_run, timing_text

    readme = (STUDY.parent.parent.parent / "README.md").read_text()
    paragraph = " ".join(readme.split("`make demo` builds", 1)[1].split("\n\n", 1)[0].split())
    record = last_complete_run(STUDY.parent / "demo" / RECORD)
    if record is None:
        assert not re.search(r"\b\d+ min\b|\b\d+ s\b", paragraph), "a demo timing that no committed run record backs"
    else:
        assert " ".join(timing_text(record).split()) in paragraph


def test_committed_docs_name_no_folder_of_the_machine_that_made_them():
    """Reports travel: no path under the checkout's parent folder (e.g. /work/) in docs/ or README.md."""
    root = STUDY.parent.parent.parent
    parent = str(root.parent).rstrip("/") + "/"
    found = [str(path.relative_to(root)) for path in [root / "README.md", *(root / "docs").rglob("*")]
             if path.is_file() and path.suffix in (".md", ".html", ".json", ".jsonl", ".txt")
             and parent in path.read_text(encoding="utf-8", errors="replace")]
    assert not found, f"{parent} appears in {found}"


def test_relative_paths_rewrites_only_the_checkout_prefix(tmp_path):
    """eval/studies/relative_paths.py: the one-off that made the committed raw files travel changes paths only."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("relative_paths", STUDY.parents[2] / "eval/studies/relative_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path / "results" / "m"
    folder.mkdir(parents=True)
    model = {"source": "/srv/ck/.cache/x", "model_dir": "/home/u/.cache/longctx/gguf/y", "rope": {"rope_theta": 1e5}}
    run = {"command": "longctx eval --model /srv/ck/.cache/x --out docs/r", "wall_seconds": 12.5, "cores": 2}
    (folder / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n")
    (folder / "report.md").write_text("/srv/ck/.cache/x\n")  # rendered by `longctx report`, left alone
    changed = module.rewrite_folder(tmp_path / "results", ["/srv/ck"], "/home/u")
    assert sorted(p.name for p in changed) == ["model.json", "runs.jsonl"]
    assert json.loads((folder / "model.json").read_text()) == {**model, "source": ".cache/x",
                                                              "model_dir": "~/.cache/longctx/gguf/y"}
    assert json.loads((folder / "runs.jsonl").read_text()) == {**run, "command": "longctx eval --model .cache/x "
                                                                                 "--out docs/r"}
    assert (folder / "report.md").read_text() == "/srv/ck/.cache/x\n"
    assert module.rewrite_folder(tmp_path / "results", ["/srv/ck"], "/home/u") == []  # once is enough
