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
