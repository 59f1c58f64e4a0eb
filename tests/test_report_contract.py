"""The report contract, checked on what `longctx report` writes from a results folder that `longctx eval suite`
really wrote (every registered task, two models), not on hand-written cells: every number the eval wrote
reaches summary.json, report.md and report.html, and the synthetic results of test_eval_report.py use only
fields the eval writes."""

from __future__ import annotations

import json
import math
from pydoc_data.topics import topics

import pytest

from longctx.cli import main
from longctx.evals.report.text import fmt_ppl
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import PERPLEXITY, RETRIEVAL
from longctx.evals.tasks.scoring import wilson_interval
from longctx.files import read_jsonl
from longctx.lengths import fmt_len

pytest.importorskip("matplotlib")

LABELS = ("a", "b")
# the tiny model claims 256 tokens: lengths within and beyond it, for every registered task
SETTINGS = {PERPLEXITY: "{lengths: '128,320'}", RETRIEVAL: "{lengths: '160,320', depths: '0,1', trials: 2}"}
OWN_SETTINGS = {"ruler": "{lengths: '512', tasks: fwe, samples: 1, past_context: true}",  # tasks of their own shape
                "kamradt": "{lengths: '512', depths: '0,1', haystack_dir: BOOKS, buffer: 16, past_context: true}"}


@pytest.fixture(scope="module")
def results(tiny_llama_dir, tmp_path_factory):
    """(results folder, summary.json, report.md, report.html) of a real suite run and `longctx report`."""
    root = tmp_path_factory.mktemp("contract")
    suite, books = root / "suite.yaml", root / "books"
    books.mkdir()
    (books / "pydoc.txt").write_text(" ".join(topics.values()))  # kamradt's haystack
    suite.write_text(
        "seed: 1\ntasks:\n"
        + "".join(f"  {t.name}: {OWN_SETTINGS.get(t.name, SETTINGS[t.kind])}\n" for t in all_tasks().values())
        .replace("BOOKS", str(books))
    )
    argv = ["eval", "suite", suite, "--labels", ",".join(LABELS), "--out", root / "results"]
    assert main([*argv[:3], "--model", tiny_llama_dir, "--model", tiny_llama_dir, *argv[3:]]) == 0
    assert main(["report", root / "results", "--out", root / "report"]) == 0
    out = root / "report"
    summary = json.loads(
        (out / "summary.json").read_text(),
        parse_constant=lambda name: pytest.fail(f"summary.json holds {name}: not strict JSON"),
    )
    return root / "results", summary, (out / "report.md").read_text(), (out / "report.html").read_text()


def written_cells(folder, task) -> dict[int, list[dict]]:
    """Length -> the cells `longctx eval` wrote for `task`."""
    by_length: dict[int, list[dict]] = {}
    for cell in read_jsonl(folder / f"{task}.jsonl", repair=False):
        by_length.setdefault(cell["length"], []).append(cell)
    return by_length


def test_every_task_of_every_model_reaches_summary_json(results):
    folder, summary, _, _ = results
    assert [m["label"] for m in summary["models"]] == list(LABELS)
    graded = [name for name, task in all_tasks().items() if hasattr(task, "graded_by")]  # content, token-exact beside
    for model in summary["models"]:
        rows = {row["length"]: row for row in model["by_length"]}
        for row in rows.values():
            assert set(row) == {
                "length",
                "retrieval",
                "status",
                *all_tasks(),
                *(f"{t}_ci95" for t in all_tasks()),
                *(f"{t}_strict" for t in graded),
                *(f"{t}_graded_by" for t in graded),
                "retrieval_pooled",
                "retrieval_counts",
                "retrieval_ci95",
                "ppl_ratio",
                "ppl_ratio_ci95",
                "ppl_ratio_paired",
                "decision",
            }
        assert set(model["series"]) == set(all_tasks())
        assert not [w for w in model["warnings"] if "skipped" in w], model["warnings"]
        for name, task in all_tasks().items():
            for length, cells in written_cells(folder / model["label"], name).items():
                shown = rows[length][name]
                assert shown == pytest.approx(sum(c[task.value_key] for c in cells) / len(cells)), (name, length)
                interval = rows[length][f"{name}_ci95"]
                assert interval is not None and interval[0] <= shown <= interval[1], (name, length, interval)
                if task.kind == RETRIEVAL:  # every depth's trials pooled, as the task counts them
                    hits, totals = task.trial_counts(cells)[length]
                    assert interval == pytest.approx(wilson_interval(hits, totals))
                    assert hits / totals == pytest.approx(shown)  # equal cells: the pooled rate is the mean
                if name in graded:  # the content grade heads, the token-exact one beside it
                    strict = sum(c[f"{task.value_key}_strict"] for c in cells) / len(cells)
                    assert rows[length][f"{name}_strict"] == pytest.approx(strict), (name, length)
                    assert rows[length][f"{name}_graded_by"] == "content"
        retrieval_lengths = {
            n
            for t in all_tasks().values()
            if t.kind == RETRIEVAL
            for n in written_cells(folder / model["label"], t.name)
        }
        assert {n for n, row in rows.items() if row["retrieval"] is not None} == retrieval_lengths
        for row in rows.values():  # the interval belongs to the pooled rate; `retrieval` is the tasks' mean
            values = [row[t.name] for t in all_tasks().values() if t.kind == RETRIEVAL and row[t.name] is not None]
            assert row["retrieval"] == (pytest.approx(sum(values) / len(values)) if values else None)
            if row["retrieval_counts"]:
                (hits, trials), (low, high) = row["retrieval_counts"], row["retrieval_ci95"]
                assert row["retrieval_pooled"] == pytest.approx(hits / trials) and low <= hits / trials <= high
        assert rows[320]["status"] != "in-distribution" and rows[128]["status"] == "in-distribution"
        assert model["trained_length"] == 256 and model["verdict"] and model["ppl_windows"]
        assert len(model["runs"]) == 1 and "eval suite" in model["runs"][0]["command"]


def test_every_task_has_its_table_and_figures_in_both_pages(results):
    _, summary, markdown, page = results
    files = [figure.file for task in all_tasks().values() for figure in task.figures()]
    assert sorted(summary["figures"]) == sorted(files)
    rows = {m["label"]: {r["length"]: r for r in m["by_length"]} for m in summary["models"]}
    for name, task in all_tasks().items():
        table = markdown.split(f"\n### {task.title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
        lengths = sorted({n for label in LABELS for n, row in rows[label].items() if row[name] is not None})
        assert table[0] == "| Model | " + " | ".join(map(fmt_len, lengths)) + " |"
        assert f"<th colspan={len(lengths)}>{task.title}</th>" in page
        for label, line in zip(LABELS, table[2:], strict=True):
            shown = [rows[label][n][name] for n in lengths]
            texts = [fmt_ppl(v) if task.kind != RETRIEVAL else f"{v:.2f}" for v in shown]
            cells = [cell.strip(" *") for cell in line.split("|")[2:-1]]
            assert [cell.split(" [")[0] for cell in cells] == texts, (name, label)
            assert all(f">{text}</td>" in page or f">{text} (exact " in page for text in texts)
    for name in files:
        assert f"]({name})" in markdown and f"<img alt='{name}' src='data:image/png;base64," in page
    assert "## How these numbers were made" in markdown and "Perplexity windows, each from one document" in markdown
    made = page.split("<h2>How these numbers were made</h2>", 1)[1]
    assert "**" not in made and "`" not in made and "<b>a</b>" in made and "<code>" in made  # Markdown rendered
    runs = [line for line in markdown.split("## How these numbers were made", 1)[1].splitlines() if "` · " in line]
    assert len(runs) == 1 and "a (" in runs[0] and "b (" in runs[0]  # one run, its models listed once
    assert page.count("<tr><td class='txt'>") == len(LABELS)


def test_the_demo_reads_the_real_summary(results, tmp_path):
    from longctx.demo import headline

    folder = results[0]
    (tmp_path / "summary.json").write_text(json.dumps(results[1]))
    text = headline(tmp_path / "summary.json", *LABELS)
    ppl = {n: c[0]["ppl"] for n, c in written_cells(folder / LABELS[0], "ppl").items()}
    assert all(fmt_ppl(value) in text for value in ppl.values() if math.isfinite(value))
    assert "passkey 160" in text
    assert all(f"{m['label']}: {m['verdict']}" in text for m in results[1]["models"])


def test_synthetic_results_use_only_fields_the_eval_writes(results, tmp_path):
    """test_eval_report.py judges hand-written cells: they must stay a subset of what `longctx eval` writes."""
    from test_eval_report import write_synthetic_results

    synthetic = write_synthetic_results(tmp_path)
    for name in [name for name in all_tasks() if name not in OWN_SETTINGS]:  # those have no hand-written cells
        real = {key for cells in written_cells(results[0] / LABELS[0], name).values() for c in cells for key in c}
        made_up = {key for c in read_jsonl(synthetic / "patched" / f"{name}.jsonl", repair=False) for key in c}
        assert made_up and made_up <= real, (name, made_up - real)
