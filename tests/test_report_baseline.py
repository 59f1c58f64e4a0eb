"""`longctx report --baseline LABEL`: every model's perplexity against one model's, window by window; and rows read
on another series than their column (other documents) are marked, not compared silently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from longctx.errors import UsageError
from longctx.evals.report.compare import reading
from longctx.evals.report.page import write_report
from longctx.evals.tasks.intervals import mean_ci95

YARN = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
NOISE = [0.30, -0.25, 0.10, -0.15, 0.05, -0.05]  # per-window spread of the texts, shared by every model


def _cells(data: str, shift: float, jitter: float = 0.0, docs: str = "d") -> list[dict]:
    """ppl cells at 8K and 16K over six windows: log ppl = 3 + the text's difficulty + shift (+ jitter by window)."""
    cells = []
    for n in (8192, 16384):
        windows = [{"doc": f"{docs}{i}", "start": 0, "tokens": n, "n_tokens": n - 1,
                    "nll_sum": (3 + noise + shift + (jitter if i % 2 else -jitter)) * (n - 1)}
                   for i, noise in enumerate(NOISE)]
        nll, half = mean_ci95([w["nll_sum"] / w["n_tokens"] for w in windows])
        cells.append({"key": f"ppl|L={n}|data={data}", "length": n, "data": data, "stride": None,
                      "ppl": math.exp(nll), "nll": nll, "ppl_ci95": [math.exp(nll - half), math.exp(nll + half)],
                      "n_windows": len(windows), "windows": windows})
    return cells


def _model(root: Path, label: str, *series: list[dict]) -> None:
    folder = root / label
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"label": label, "rope": YARN, "trained_length": 8192}))
    (folder / "ppl.jsonl").write_text("".join(json.dumps(c) + "\n" for cells in series for c in cells))


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    _model(root, "base", _cells("books", 0.0), _cells("held-out", 0.2, docs="h"))  # two series, one model
    _model(root, "worse", _cells("books", 0.03, jitter=0.002))        # 3% higher on every window
    _model(root, "same", _cells("books", 0.0, jitter=0.01))           # no difference beyond window noise
    _model(root, "tuned", _cells("held-out", 0.15, jitter=0.002, docs="h"))  # only read on the held-out books
    _model(root, "elsewhere", _cells("books", 0.0, docs="x"))         # same series, other windows
    return root


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_each_model_is_divided_by_the_baselines_cell_of_its_own_series_window_by_window(results, tmp_path):
    write_report(results, tmp_path / "out", baselines=["base"])
    (versus,) = _summary(tmp_path / "out")["versus_baselines"]
    assert versus["baseline"] == "base" and set(versus["models"]) == {"worse", "same", "tuned", "elsewhere"}
    worse = versus["models"]["worse"]["16384"]
    assert worse["paired"] and worse["n"] == 6 and worse["ratio"] == pytest.approx(math.exp(0.03))
    assert worse["ci95"][0] > 1 and worse["reading"] == "higher"
    same = versus["models"]["same"]["16384"]
    assert same["paired"] and same["ci95"][0] < 1 < same["ci95"][1] and same["reading"] == "inconclusive"
    # the held-out model against the baseline's held-out cells, not its books cells
    tuned = versus["models"]["tuned"]["8192"]
    assert tuned["paired"] and tuned["ratio"] == pytest.approx(math.exp(-0.05)) and tuned["reading"] == "lower"
    # other windows of the same series: unpaired, so the texts' spread stays in the interval
    elsewhere = versus["models"]["elsewhere"]["8192"]
    assert not elsewhere["paired"] and elsewhere["reading"] == "inconclusive"


def test_the_page_shows_the_comparison_and_marks_the_row_read_on_other_documents(results, tmp_path):
    write_report(results, tmp_path / "out", baselines=["base"])
    page = (tmp_path / "out" / "report.md").read_text()
    assert "## Perplexity against base" in page
    assert "| **worse** | ×1.030 [" in page and "(higher) |" in page
    assert "(inconclusive, unpaired)" in page  # elsewhere
    table = page.split("### Perplexity", 1)[1].split("\n\n")[1].splitlines()  # the perplexity table's rows
    marked = {line.split(" | ")[0].strip("|* ") for line in table if "‡" in line}
    assert marked == {"tuned"}
    assert ("‡: read on another series than the rest of the column, so not comparable across rows there "
            "(tuned: perplexity data=held-out, stride=none)") in page
    assert "Series in the table: perplexity data=books, stride=none." in page
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Perplexity against base</h2>" in html and "‡" in html


def test_a_rerender_keeps_the_baselines_and_none_drops_them(results, tmp_path):
    out = tmp_path / "out"
    write_report(results, out, baselines=["base"])
    write_report(results, out)  # what a suite does after each run
    assert [b["baseline"] for b in _summary(out)["versus_baselines"]] == ["base"]
    write_report(results, out, baselines=["base", "same"])
    assert [b["baseline"] for b in _summary(out)["versus_baselines"]] == ["base", "same"]
    against_same = (out / "report.md").read_text().split("## Perplexity against same", 1)[1].split("\n## ", 1)[0]
    assert "| **worse** |" in against_same and "| **tuned** |" not in against_same  # tuned: text same never read
    write_report(results, out, baselines=["none"])
    assert _summary(out)["versus_baselines"] == []
    assert "Perplexity against" not in (out / "report.md").read_text()


def test_an_unknown_baseline_is_one_line_and_writes_nothing(results, tmp_path):
    with pytest.raises(UsageError, match=r"--baseline nope: no model folder of that label here \(labels: base, "):
        write_report(results, tmp_path / "out", baselines=["nope"])
    assert not (tmp_path / "out").exists()


def test_cli_takes_the_baseline(results, tmp_path, capsys):
    from longctx import cli

    assert cli.main(["report", str(results), "--out", str(tmp_path / "out"), "--baseline", "nope"]) == 2
    assert "--baseline nope" in capsys.readouterr().err
    assert cli.main(["report", str(results), "--out", str(tmp_path / "out"), "--baseline", "base"]) == 0
    assert _summary(tmp_path / "out")["versus_baselines"][0]["baseline"] == "base"


def test_reading_needs_the_interval_on_one_side_of_one():
    assert reading({"ci95": [0.9, 0.99]}) == "lower"
    assert reading({"ci95": [1.01, 1.2]}) == "higher"
    assert reading({"ci95": [0.99, 1.01]}) == "inconclusive"
    assert reading({"ci95": None}) == "no interval"


def test_the_compact_table_marks_a_row_read_on_other_documents(results, tmp_path):
    from longctx.evals.report.compact import compact_table

    write_report(results, tmp_path / "out")
    summary = _summary(tmp_path / "out")
    assert {m["label"]: m["off_series"] for m in summary["models"]}["tuned"] == ["ppl"]
    table = compact_table(summary, ["base", "tuned"], [8192, 16384], []).splitlines()
    assert table[2].startswith("| base |") and "‡" not in table[2]
    assert table[3].startswith("| tuned |") and table[3].count("‡") == 2
