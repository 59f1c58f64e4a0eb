"""`longctx report`: verdicts, effective length and figures from synthetic results of three models.

original: fine to its trained 8K, then perplexity explodes and retrieval fails.
patched:  perplexity stays low beyond 8K but retrieval fails -> must be flagged SUPERFICIAL.
tuned:    perplexity and retrieval both hold -> "extends to 32K".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from longctx import cli
from longctx.errors import UsageError
from longctx.evals.report.judge import SEPARATION, effective_length, judge_length
from longctx.evals.report.load import load_results, read_cells
from longctx.evals.report.page import write_report
from longctx.evals.tasks import get_task
from longctx.evals.tasks.intervals import (
    separated,
    t95,
    trials_to_decide,
    trials_to_separate,
    wilson_interval,
    windows_to_decide,
)
from longctx.lengths import fmt_len

LENGTHS = [2048, 4096, 8192, 16384, 32768]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
# label -> (rope, claimed length, ppl per length, passkey accuracy per length by depth, niah score per length)
MODELS = {
    "original": ({"rope_type": "default", "rope_theta": 100000.0}, 8192,
                 [10.0, 9.5, 9.2, 60.0, 900.0], [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.9, 0.0, 0.0]),
    "patched": ({"rope_type": "yarn", "rope_theta": 100000.0, "factor": 4.0}, 32768,
                [10.2, 9.7, 9.4, 9.8, 10.6], [1.0, 1.0, 1.0, 0.2, 0.0], [1.0, 1.0, 0.9, 0.1, 0.0]),
    "tuned": ({"rope_type": "yarn", "rope_theta": 100000.0, "factor": 4.0}, 32768,
              [9.8, 9.3, 9.0, 8.9, 9.1], [1.0, 1.0, 1.0, 1.0, 0.96], [1.0, 1.0, 1.0, 0.93, 0.9]),
}
EXPECTED_EFFECTIVE = {"original": 8192, "patched": 8192, "tuned": 32768}
TRIALS = 40  # per (length, depth): enough that every verdict below is decided by its interval


def _by_depth(mean: float, depth: float) -> float:
    """Scores that vary with depth but average to `mean`: retrieval near the end (depth 1) survives longest."""
    if mean in (0.0, 1.0):
        return mean
    return round(min(1.0, max(0.0, mean + (depth - 0.5) * 0.4)), 2)


def _buckets(length: int, nll: float, in_distribution_nll: float, trained: int = 8192) -> list[dict]:
    """Eight position buckets averaging to `nll`: flat inside the trained length, climbing beyond it."""
    starts = range(0, length, length // 8)
    beyond = [max(0.0, start + length / 16 - trained) / trained for start in starts]
    slope = (nll - in_distribution_nll) * len(beyond) / sum(beyond) if sum(beyond) else 0.0
    flat = in_distribution_nll if sum(beyond) else nll
    return [{"start": start, "end": start + length // 8, "nll": flat + slope * over}
            for start, over in zip(starts, beyond, strict=True)]


def write_synthetic_results(root: Path) -> Path:
    """RESULTS_DIR/<label>/{model.json, ppl.jsonl, passkey.jsonl, niah.jsonl} in the schema `longctx eval` writes
    (tests/test_report_contract.py checks that these cells hold only fields real cells hold)."""
    for label, (rope, claimed, ppls, passkeys, niahs) in MODELS.items():
        folder = root / label
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps({
            "label": label, "source": f"/ckpt/{label}", "model_dir": f"/ckpt/{label}", "rope": rope,
            "trained_length": 8192, "claimed_length": claimed, "longctx_version": "0.1.0", "device": "cpu",
            "dtype": "float32", "attn_implementation": "sdpa",
            "warnings": ["evaluated beyond the claimed context (8K)"] if claimed < max(LENGTHS) else []}))
        ppl_lines, passkey_lines, niah_lines = [], [], []
        for length, ppl, passkey, niah in zip(LENGTHS, ppls, passkeys, niahs, strict=True):
            nll = math.log(ppl)
            buckets = _buckets(length, nll, in_distribution_nll=math.log(ppls[2]))
            # four windows read at every length from the same starts (prefix evaluation): the ratios pair them
            windows = [{"doc": f"book{i}.txt", "start": 100 * i, "tokens": length, "n_tokens": length - 1,
                        "nll_sum": (nll + offset + 0.002 * ((i * length) % 3)) * (length - 1)}
                       for i, offset in enumerate((-0.2, -0.05, 0.05, 0.2))]
            ppl_lines.append({"task": "ppl", "key": f"ppl|L={length}|stride=none|data=pydoc", "length": length,
                              "stride": None, "data": "pydoc", "n_docs": 4, "n_windows": 4, "windows": windows,
                              "n_tokens": 4 * length, "nll": nll, "ppl": ppl, "ppl_ci95": [ppl * 0.93, ppl * 1.08],
                              "bpb": nll / 2.4, "buckets": buckets, "seconds": 1.0, "warnings": []})
            for depth in DEPTHS:
                accuracy = _by_depth(passkey, depth)
                passkey_lines.append({"task": "passkey", "key": f"passkey|L={length}|depth={depth}|mode=forced",
                                      "length": length, "depth": depth, "mode": "forced", "trials": TRIALS,
                                      "correct": round(accuracy * TRIALS), "accuracy": accuracy, "samples": [],
                                      "seconds": 1.0, "warnings": []})
                for needles, distractors in ((1, 0), (3, 2)):
                    score = _by_depth(niah, depth) if needles == 1 else _by_depth(niah, depth) * 0.8
                    retrieved, questions = round(score * TRIALS * needles), TRIALS * needles
                    niah_lines.append({"task": "niah", "length": length, "depth": depth, "needles": needles,
                                       "key": f"niah|L={length}|depth={depth}|needles={needles}|"
                                              f"distractors={distractors}|mode=forced",
                                       "distractors": distractors, "mode": "forced", "trials": TRIALS,
                                       "score": retrieved / questions, "retrieved": retrieved,
                                       "questions": questions, "samples": [], "seconds": 1.0,
                                       "warnings": ["length beyond max_position_embeddings"]
                                       if length > claimed else []})
        for name, lines in (("ppl", ppl_lines), ("passkey", passkey_lines), ("niah", niah_lines)):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    # a stale line superseded by a rerun of the same key, and a half line left by a killed run
    passkey_path = root / "patched" / "passkey.jsonl"
    lines = passkey_path.read_text().splitlines()
    stale = json.loads(lines[15])
    stale["accuracy"] = 1.0
    passkey_path.write_text(json.dumps(stale) + "\n" + "\n".join(lines) + "\n" + lines[0][:37])
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = write_synthetic_results(tmp_path_factory.mktemp("results"))
    out = results.parent / "out"
    paths = write_report(results, out, title="synthetic")
    return results, out, paths


def test_writes_every_file(report):
    _, out, paths = report
    names = {p.name for p in paths}
    assert names == {"report.html", "report.md", "summary.json", "ppl_vs_length.png", "passkey_heatmaps.png",
                     "niah_heatmaps.png", "ppl_buckets.png"}
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in names)


@pytest.mark.parametrize("name", ["ppl_vs_length.png", "passkey_heatmaps.png", "niah_heatmaps.png", "ppl_buckets.png"])
def test_figures_are_real_images(report, name):
    from matplotlib.image import imread

    pixels = imread(report[1] / name)
    height, width = pixels.shape[:2]
    assert 300 <= height <= 3000 and 500 <= width <= 4000, (height, width)
    assert pixels[..., :3].std() > 0.05  # not blank
    # red and green cells both appear in the heatmaps (failed and retrieved)
    if "heatmaps" in name:
        rgb = pixels[..., :3]
        assert ((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35)).any() and ((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.3)).any()


def test_summary_json_effective_lengths_and_verdicts(report):
    summary = json.loads((report[1] / "summary.json").read_text())
    models = {m["label"]: m for m in summary["models"]}
    assert {label: m["effective_length"] for label, m in models.items()} == EXPECTED_EFFECTIVE
    assert [label for label, m in models.items() if m["superficial"]] == ["patched"]
    assert models["patched"]["verdict"].startswith(
        "SUPERFICIAL at 16K: ppl ×1.04 [1.04, 1.05] of in-distribution (paired, 4 windows) but retrieval 64/400 "
        "[0.13, 0.20] vs 376/400 [0.91, 0.96] at 8K in the window")
    assert models["patched"]["flags"][0]["length"] == 16384
    assert models["tuned"]["verdict"] == "extends to 32K"
    assert models["original"]["verdict"].startswith("breaks at 16K")
    by_length = {row["length"]: row for row in models["original"]["by_length"]}
    assert by_length[8192]["status"] == "in-distribution" and by_length[32768]["status"] == "breaks"
    assert by_length[4096]["passkey"] == 1.0 and by_length[16384]["retrieval"] == 0.0


def test_last_line_of_a_key_wins_and_half_lines_are_skipped(report):
    summary = json.loads((report[1] / "summary.json").read_text())
    patched = next(m for m in summary["models"] if m["label"] == "patched")
    by_length = {row["length"]: row for row in patched["by_length"]}
    assert by_length[16384]["passkey"] == pytest.approx(0.2)  # the stale 1.0 written first was superseded
    assert any("not valid JSON" in w for w in patched["warnings"])
    warnings: list[str] = []
    variants = read_cells(report[0] / "patched" / "passkey.jsonl", get_task("passkey"), warnings)
    records = [record for records in variants.values() for record in records]
    assert len(records) == len(LENGTHS) * len(DEPTHS) and len(warnings) == 1


def test_pages_name_every_model_and_flag_only_the_patched_one(report):
    out = report[1]
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for label in MODELS:
        assert f"**{label}**" in markdown and f"<b>{label}</b>" in page
    summary_rows = [line for line in markdown.splitlines() if line.startswith("| **")]
    flagged_rows = {line.split("**")[1] for line in summary_rows if "SUPERFICIAL" in line}
    assert flagged_rows == {"patched"}
    html_rows = [row.rsplit("<tr>", 1)[-1] for row in page.split("</tr>") if "<td" in row]
    assert {row.split("<b>")[1].split("</b>")[0] for row in html_rows if "SUPERFICIAL" in row} == {"patched"}
    alerts = [line for line in page.splitlines() if "class='alert'" in line]
    assert len(alerts) == 1 and "<b>patched</b>" in alerts[0]
    assert page.count("data:image/png;base64,") == 4  # mailable: figures embedded
    for name in ("ppl_vs_length.png", "niah_heatmaps.png"):
        assert f"]({name})" in markdown
    assert "evaluated beyond the claimed context (8K)" in page
    assert "niah: length beyond max_position_embeddings (20 cells)" in markdown  # collapsed, not repeated


def test_missing_tasks_skip_their_figures(tmp_path):
    folder = tmp_path / "results" / "only-ppl"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"label": "only-ppl", "trained_length": 4096}))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({
        "task": "ppl", "key": f"ppl|L={n}", "length": n, "data": "pydoc", "stride": None, "ppl": ppl,
        "ppl_ci95": None}) + "\n" for n, ppl in ((2048, 12.0), (4096, 11.0), (8192, 12.5))))
    paths = write_report(tmp_path / "results")
    assert {p.name for p in paths} == {"report.html", "report.md", "summary.json", "ppl_vs_length.png"}
    model = json.loads((tmp_path / "results" / "summary.json").read_text())["models"][0]
    assert model["effective_length"] is None  # no interval on 11.0 -> 12.5: perplexity decides nothing either
    assert model["verdict"].startswith("inconclusive at 8K: ppl ×1.14 (no interval) of in-distribution")


@pytest.fixture
def main(monkeypatch):
    """`longctx.cli.main` with only the report verb registered, so these tests do not depend on other verbs."""
    monkeypatch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})
    return cli.main


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing"])
def test_no_results_is_a_one_line_usage_error(tmp_path, capsys, main, make):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results in" in err and "longctx eval suite" in err


def test_cli_prints_verdicts(report, tmp_path, capsys, main):
    assert main(["report", str(report[0]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "!! patched: SUPERFICIAL at 16K" in out and "tuned: extends to 32K" in out
    assert (tmp_path / "report.html").is_file()


def test_effective_length_needs_every_shorter_length():
    assert effective_length({1024: 0.9, 2048: 0.6, 4096: 0.95}) == 1024
    assert effective_length({1024: 0.5, 2048: 0.9}) is None
    assert effective_length({}) is None


def _ratio(value: float, low: float, high: float) -> dict:
    """A paired ratio over 8 windows, with the per-window spread its interval implies."""
    return {"ratio": value, "ci95": [low, high], "paired": True, "n": 8,
            "sd": math.log(high / low) / 2 / t95(7) * math.sqrt(8)}


CONTROL = {"length": 8192, "counts": (14, 15)}  # Wilson [0.70, 0.99]


@pytest.mark.parametrize(("ratio", "counts", "control", "status"), [
    # SUPERFICIAL: ppl interval <= 1.25 and retrieval's upper bound 0.1 below the control's lower bound ...
    (_ratio(1.05, 0.98, 1.12), (0, 15), CONTROL, "superficial"),      # [0, 0.20] vs [0.70, 0.99]
    # ... not when the ppl interval reaches past 1.25, nor when the two retrieval intervals are close
    (_ratio(1.05, 0.90, 1.30), (0, 15), CONTROL, "inconclusive"),
    (_ratio(1.05, 0.98, 1.12), (6, 15), CONTROL, "inconclusive"),     # [0.20, 0.64]: 0.64 + 0.1 > 0.70
    (_ratio(1.05, 0.98, 1.12), (0, 15), None, "inconclusive"),        # no control, no flag
    (_ratio(1.05, 0.98, 1.12), (0, 15), {"length": 8192, "counts": (6, 15)}, "inconclusive"),  # control too weak
    # extends: lower bound >= 0.85 (22/22 clears it, 15/15 does not)
    (_ratio(1.05, 0.98, 1.12), (22, 22), CONTROL, "extends"),
    (_ratio(1.05, 0.98, 1.12), (15, 15), CONTROL, "inconclusive"),
    (_ratio(1.05, 0.98, 1.30), (22, 22), CONTROL, "inconclusive"),
    (None, (22, 22), CONTROL, "extends"),
    (_ratio(2.5, 2.2, 2.8), (22, 22), CONTROL, "breaks"),             # the interval lies above 2
    (_ratio(2.5, 1.9, 2.8), (22, 22), CONTROL, "degrades"),           # ... above 1.25 but not surely above 2
    (_ratio(1.5, 1.3, 1.7), (22, 22), CONTROL, "degrades"),
    (_ratio(1.1, 1.0, 1.2), None, CONTROL, "ppl only"),
    # retrieval no worse than the window's, both below 0.85: nothing degraded (it was "degrades" before) ...
    (_ratio(1.05, 0.98, 1.12), (10, 15), {"length": 8192, "counts": (6, 15)}, "inconclusive"),
    (None, (4, 10), {"length": 8192, "counts": (3, 10)}, "inconclusive"),
    # ... and without perplexity, a drop the intervals do not show yet is undecided, a clear one degrades
    (None, (4, 15), {"length": 8192, "counts": (9, 15)}, "inconclusive"),
    (None, (0, 15), CONTROL, "degrades"),
    (None, None, None, "untested")])
def test_judge_length_decides_only_where_the_interval_does(ratio, counts, control, status):
    assert judge_length(ratio, counts, control)[0] == status


def test_inconclusive_says_how_many_more_trials_would_settle_it():
    status, reason = judge_length(_ratio(1.05, 0.98, 1.12), (15, 15), CONTROL)
    assert status == "inconclusive" and reason.endswith("inconclusive at n = 15: run 7 more trials; ppl ×1.05 [0.98, "
                                                         "1.12] of in-distribution (paired, 8 windows)")
    assert trials_to_decide(15, 15, 0.85) == 7 and wilson_interval(22, 22)[0] >= 0.85 > wilson_interval(21, 21)[0]
    status, reason = judge_length(_ratio(1.05, 0.98, 1.12), (4, 15), {"length": 8192, "counts": (9, 15)})
    more = trials_to_separate((4, 15), (9, 15), SEPARATION)  # 0.27 vs 0.60 at the observed rates
    assert status == "inconclusive" and f"run {more} more trials at 8K and at this length" in reason
    def at(k: int, n: int, more: int) -> tuple[float, int]:
        return k / n * (n + more), n + more

    assert not separated(at(4, 15, more - 1), at(9, 15, more - 1), SEPARATION)
    assert separated(at(4, 15, more), at(9, 15, more), SEPARATION)
    assert trials_to_separate((6, 15), (6, 15), SEPARATION) is None  # equal rates never separate
    ratio = _ratio(1.2, 1.1, 1.3)
    status, reason = judge_length(ratio, None, None)
    more = windows_to_decide(ratio, 1.25)
    assert status == "inconclusive" and reason.endswith(f"inconclusive at n = 8 windows: run {more} more windows")
    narrower = {**ratio, "n": 8 + more, "ci95": [1.2 * math.exp(-t95(7 + more) * ratio["sd"] / math.sqrt(8 + more)),
                                                 1.2 * math.exp(t95(7 + more) * ratio["sd"] / math.sqrt(8 + more))]}
    assert 15 < more < 40 and judge_length(narrower, None, None)[0] == "ppl only"  # then it holds


def test_help_lists_the_options(capsys, main):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


def test_fmt_len():
    assert [fmt_len(n) for n in (1000, 1536, 4096, 131072)] == ["1000", "1.5K", "4K", "128K"]


def test_model_folder_order_is_by_name(tmp_path):
    for label in ("b", "a"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "model.json").write_text(json.dumps({"label": label}))
    assert [m.label for m in load_results(tmp_path)] == ["a", "b"]


def test_missing_matplotlib_names_the_extra(report, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'longctx\[eval\]'"):
        write_report(report[0], tmp_path)


def test_infinite_perplexity_breaks_and_summary_stays_strict_json(tmp_path):
    folder = tmp_path / "blowup"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label": "blowup", "trained_length": 4096}))
    (folder / "ppl.jsonl").write_text(
        "".join(
            json.dumps({"key": f"ppl|L={n}", "length": n, "ppl": ppl}) + "\n"
            for n, ppl in ((4096, 7.5), (16384, float("inf")), (32768, float("nan")))
        )
    )
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    model = json.loads(text)["models"][0]
    assert model["verdict"] == "breaks at 16K (ppl inf vs 7.50)"
    assert [row["status"] for row in model["by_length"]] == ["in-distribution", "breaks", "breaks"]


def test_no_superficial_flag_when_retrieval_fails_even_within_the_trained_length(tmp_path):
    """A random model has flat (high) perplexity and zero retrieval everywhere: that is not an extension trap."""
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label": "random", "trained_length": 256}))
    lines = [{"key": f"ppl|L={n}", "length": n, "ppl": 515.0, "ppl_ci95": [510.0, 520.0], "n_windows": 8}
             for n in (256, 512)]
    lines_pk = [{"key": f"pk|L={n}", "length": n, "depth": 0.5, "accuracy": 0.0, "correct": 0, "trials": 15}
                for n in (256, 512)]
    (folder / "ppl.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "passkey.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines_pk))
    write_report(tmp_path, tmp_path / "out")
    model = json.loads((tmp_path / "out" / "summary.json").read_text())["models"][0]
    assert not model["superficial"]
    assert model["verdict"] == ("retrieval fails within the trained length (0/15 [0.00, 0.20] at 256, passkey), so "
                                "it cannot judge the extension on that task; ppl holds at 512")


def test_no_superficial_flag_for_a_model_that_retrieves_at_no_length(tmp_path):
    """Retrieval measured only past the trained length and failing everywhere (linear interpolation without
    training, whose perplexity is poor at every length) is no evidence of superficial long context."""
    folder = tmp_path / "linear"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label": "linear", "trained_length": 8192}))
    lines = [{"key": f"ppl|L={n}", "length": n, "ppl": ppl} for n, ppl in ((8192, 57.7), (12288, 51.4))]
    lines_pk = [{"key": f"pk|L=12288|{d}", "length": 12288, "depth": d, "accuracy": 0.0} for d in (0.0, 0.5, 1.0)]
    (folder / "ppl.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "passkey.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines_pk))
    write_report(tmp_path, tmp_path / "out")
    model = json.loads((tmp_path / "out" / "summary.json").read_text())["models"][0]
    assert not model["superficial"]
    assert model["verdict"].startswith("retrieval fails at every evaluated length (at best 0.00, at 12K)")


def _model(root: Path, label: str, rope: dict, ppl: dict[int, float], passkey: dict[int, tuple[int, int]]) -> None:
    folder = root / label
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"label": label, "rope": rope, "trained_length": 8192,
                                                   "source": f"/ckpt/{label}", "model_dir": f"/ckpt/{label}"}))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({
        "key": f"ppl|L={n}", "length": n, "ppl": p, "nll": math.log(p), "n_windows": 2,
        "windows": [{"doc": f"d{i}", "start": 0, "tokens": n, "n_tokens": n - 1,
                     "nll_sum": (math.log(p) + (0.01 if i else -0.01)) * (n - 1)} for i in range(2)]}) + "\n"
        for n, p in ppl.items()))
    (folder / "passkey.jsonl").write_text("".join(json.dumps({
        "key": f"pk|L={n}", "length": n, "depth": 0.5, "accuracy": k / t, "correct": k, "trials": t}) + "\n"
        for n, (k, t) in passkey.items()))


def test_a_rope_equal_within_the_window_shares_the_control_and_nothing_is_flagged_without_one(tmp_path):
    """Dynamic NTK is the original up to its trained length: one in-window reading serves both. YaRN, measured
    only beyond the window, has no control and is not flagged, however badly it retrieves."""
    flat = {8192: 10.0, 16384: 10.2}
    _model(tmp_path, "original", {"rope_type": "default", "rope_theta": 1e5}, flat, {8192: (30, 30)})
    _model(tmp_path, "dynamic", {"rope_type": "dynamic", "rope_theta": 1e5, "factor": 2.0}, flat, {16384: (0, 30)})
    _model(tmp_path, "yarn", {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0,
                              "original_max_position_embeddings": 8192}, flat, {16384: (0, 30)})
    _model(tmp_path, "yarn-tuned", {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0,
                                    "original_max_position_embeddings": 8192}, flat, {8192: (30, 30)})
    write_report(tmp_path, tmp_path / "out")
    models = {m["label"]: m for m in json.loads((tmp_path / "out" / "summary.json").read_text())["models"]}
    assert models["dynamic"]["control"] == {"length": 8192, "counts": [30, 30], "from": "original", "strict": None,
                                            "grading": "content", "tasks": ["passkey"],
                                            "units": {"passkey": [30, 30]}, "strict_units": {}}
    assert models["dynamic"]["verdict"].startswith("dynamic θ=1e5 ×2 is original up to 8K: its in-window reading is "
                                                   "original's; SUPERFICIAL at 16K")
    # yarn-tuned: same config, other weights
    assert models["yarn"]["control"] is None and not models["yarn"]["superficial"]
    assert "not measured within the trained length" in models["yarn"]["verdict"]
    assert [label for label, m in models.items() if m["superficial"]] == ["dynamic"]


def test_a_control_graded_by_content_meets_token_exact_cells_on_their_grade(tmp_path):
    """Cells written before content grading hold only the token-exact grade; a control graded by content (higher:
    it forgives a newline before the key) would make the stricter grade beyond the window read as a drop. Both
    sides are then weighed token-exact, and the decision says so."""
    _model(tmp_path, "yarn", {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0,
                              "original_max_position_embeddings": 8192}, {8192: 10.0, 16384: 10.2}, {})

    def cell(n, correct, strict=None):
        record = {"key": f"pk|L={n}", "length": n, "depth": 0.5, "mode": "forced", "key_digits": "5-7",
                  "accuracy": correct / 15, "correct": correct, "trials": 15}
        return record | ({} if strict is None else {"correct_strict": strict, "accuracy_strict": strict / 15})

    passkey = tmp_path / "yarn" / "passkey.jsonl"
    passkey.write_text(json.dumps(cell(8192, 15, strict=6)) + "\n" + json.dumps(cell(16384, 4)) + "\n")
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["control"]["counts"] == [15, 15] and model["control"]["strict"] == [6, 15]
    at_16k = model["by_length"][-1]
    # 4/15 against 6/15, not against 15/15: no SUPERFICIAL flag from a change of grading
    assert not model["superficial"] and at_16k["status"] == "inconclusive"
    assert at_16k["decision"].startswith("graded token-exact on both sides (one has only that): retrieval 4/15")
    assert "vs 6/15 [" in at_16k["decision"]
    # both graded by content: compared as they are
    passkey.write_text(json.dumps(cell(8192, 15, strict=6)) + "\n" + json.dumps(cell(16384, 4, strict=2)) + "\n")
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["superficial"] and "vs 15/15 [" in model["by_length"][-1]["decision"]


def test_a_patch_of_the_same_weights_shares_the_control_and_other_weights_do_not(tmp_path):
    """Fingerprints differ by config.json whenever a patch did its work: only the weight files tell whether dynamic
    NTK is the original's weights (it shares the control) or a fine-tune's (it does not)."""
    flat = {8192: 10.0, 16384: 10.2}
    _model(tmp_path, "original", {"rope_type": "default", "rope_theta": 1e5}, flat, {8192: (30, 30)})
    _model(tmp_path, "dynamic", {"rope_type": "dynamic", "rope_theta": 1e5, "factor": 2.0}, flat, {16384: (0, 30)})

    def stamp(label, config, weights):
        path = tmp_path / label / "model.json"
        meta = json.loads(path.read_text())
        meta["fingerprint"] = {"model": {"config.json": config, "model.safetensors": weights}, "id": config + weights}
        path.write_text(json.dumps(meta))

    stamp("original", "c0", "538090408:w0")
    stamp("dynamic", "c1", "538090408:w0")
    write_report(tmp_path, tmp_path / "out")
    models = {m["label"]: m for m in json.loads((tmp_path / "out" / "summary.json").read_text())["models"]}
    assert models["dynamic"]["control"]["from"] == "original" and models["dynamic"]["same_rope_as"] == "original"
    stamp("dynamic", "c1", "538090408:w1")  # other weights under the same patch
    write_report(tmp_path, tmp_path / "out")
    models = {m["label"]: m for m in json.loads((tmp_path / "out" / "summary.json").read_text())["models"]}
    assert models["dynamic"]["control"] is None and models["dynamic"]["same_rope_as"] is None


def test_a_control_weighs_only_the_tasks_it_measured(tmp_path):
    """Passkey inside the window and NIAH beyond it: the passkey control says nothing about NIAH, so it is not used
    (no SUPERFICIAL flag from a task change), and the decision says why."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path, "yarn", yarn, {8192: 10.0, 16384: 10.2}, {8192: (30, 30)})
    (tmp_path / "yarn" / "niah.jsonl").write_text(json.dumps({
        "key": "niah|L=16384", "length": 16384, "depth": 0.5, "score": 0.0, "accuracy": 0.0, "retrieved": 0,
        "questions": 30, "correct": 0, "trials": 30}) + "\n")
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    at_16k = {r["length"]: r for r in model["by_length"]}[16384]
    assert not model["superficial"] and at_16k["status"] != "superficial"
    assert at_16k["decision"].startswith("no length inside the window measured every task of this one (niah; the "
                                         "control at 8K: passkey), so none is used: ")


def test_a_control_weighs_only_the_ruler_subtasks_the_longer_length_ran(tmp_path):
    """RULER at 8K on an easy task and a hard one, at 16K on the hard one only: the 8K control pooled over both
    would make 16K's failure on the hard task read as a drop (SUPERFICIAL). It is weighed on the hard task alone,
    which fails inside the window too, so it cannot judge, and nothing is flagged."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path, "yarn", yarn, {8192: 10.0, 16384: 10.2}, {})

    def cell(name, n, found, refs):
        return json.dumps({"task": "ruler", "key": f"ruler|name={name}|L={n}", "subtask": name, "length": n,
                           "score": found / refs, "ruler_score": 100 * found / refs, "found": found, "refs": refs,
                           "samples": refs, "chat_template": "on", "haystack": "none"}) + "\n"  # 1 string each

    ruler = tmp_path / "yarn" / "ruler.jsonl"
    ruler.write_text(cell("niah_single_1", 8192, 40, 40) + cell("vt", 8192, 1, 10) + cell("vt", 16384, 0, 10))
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["control"]["counts"] == [41, 50] and model["control"]["units"] == {
        "ruler/niah_single_1": [40, 40], "ruler/vt": [1, 10]}
    assert not model["superficial"]
    assert "retrieval fails within the trained length (1/10" in model["verdict"]
    assert "ruler/vt), so it cannot judge the extension on that task" in model["verdict"]
    # the hard task retrieved inside the window: the 16K failure is a drop on that task, and is flagged
    ruler.write_text(cell("niah_single_1", 8192, 40, 40) + cell("vt", 8192, 10, 10) + cell("vt", 16384, 0, 10))
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["superficial"]
    assert model["flags"][0]["control"]["counts"] == [10, 10] and model["flags"][0]["control"]["tasks"] == ["ruler/vt"]


def test_a_report_takes_the_tasks_it_lacks_from_another_folder_of_the_same_models(tmp_path, capsys):
    """Retrieval in one study, perplexity of the same checkpoints in another: `--ppl-from` joins them, so the
    SUPERFICIAL check can run; the page names where the cells came from (perplexity only: the other folder's
    passkey stays there), re-renders keep it, and a label that names another model there is refused in one
    line."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path / "ruler", "yarn", yarn, {}, {8192: (30, 30), 16384: (0, 30)})
    _model(tmp_path / "ppl", "yarn", yarn, {8192: 10.0, 16384: 10.2}, {12288: (3, 30)})
    (tmp_path / "ppl" / "yarn" / "runs.jsonl").write_text(
        json.dumps({"command": "longctx eval ppl --out ppl", "tasks": ["ppl"]}) + "\n"
        + json.dumps({"command": "longctx eval passkey --out ppl", "tasks": ["passkey"]}) + "\n")
    for study in ("ruler", "ppl"):
        path = tmp_path / study / "yarn" / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "fingerprint": {"id": "f1"}}))
    write_report(tmp_path / "ruler")
    (model,) = json.loads((tmp_path / "ruler" / "summary.json").read_text())["models"]
    assert not model["superficial"]
    assert "SUPERFICIAL check not run" in (tmp_path / "ruler" / "report.md").read_text()

    assert cli.main(["report", str(tmp_path / "ruler"), "--ppl-from", str(tmp_path / "ppl")]) == 0
    summary = json.loads((tmp_path / "ruler" / "summary.json").read_text())
    assert summary["joined_from"] == ["../ppl"] and summary["models"][0]["superficial"]
    markdown = (tmp_path / "ruler" / "report.md").read_text()
    assert "Cells read from other results folders (the same models: label, rope and checkpoint fingerprint " \
           "checked): ppl of **yarn** from `../ppl`." in markdown
    assert "longctx eval ppl --out ppl" in markdown and "longctx eval passkey --out ppl" not in markdown
    assert "| 12K |" not in markdown  # the other folder's passkey at 12K is not taken
    write_report(tmp_path / "ruler")  # a re-render keeps the folder it joined
    assert json.loads((tmp_path / "ruler" / "summary.json").read_text())["models"][0]["superficial"]
    write_report(tmp_path / "ruler", joined=["none"])
    assert not json.loads((tmp_path / "ruler" / "summary.json").read_text())["models"][0]["superficial"]

    path = tmp_path / "ppl" / "yarn" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "fingerprint": {"id": "f2"}}))
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "ruler"), "--ppl-from", str(tmp_path / "ppl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not the model of that label here" in err


def test_a_length_is_weighed_against_the_longest_in_window_length_that_ran_its_tasks(tmp_path):
    """RULER's vt at 4K and 16K, Kamradt alone at 8K: 16K's vt is weighed against 4K's vt, not left without a
    control because 8K, the longest length inside the window, did not run it."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path, "yarn", yarn, {4096: 10.0, 8192: 10.0, 16384: 10.2}, {})
    (tmp_path / "yarn" / "ruler.jsonl").write_text("".join(json.dumps({
        "task": "ruler", "key": f"ruler|vt|{n}", "subtask": "vt", "length": n, "score": k / 50,
        "ruler_score": 2 * k, "found": k, "refs": 50, "samples": 50, "chat_template": "on", "haystack": "none"}) + "\n"
        for n, k in ((4096, 50), (16384, 0))))
    (tmp_path / "yarn" / "kamradt.jsonl").write_text(json.dumps({
        "task": "kamradt", "key": "kamradt|8192", "length": 8192, "depth": 0.5, "samples": 1, "score": 1.0,
        "found": 2, "refs": 2, "chat_template": "on", "haystack": "h", "judge": None}) + "\n")
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["control"]["length"] == 8192  # the longest in-window reading, shown as the control
    assert model["superficial"] and model["flags"][0]["control"]["length"] == 4096
    assert model["flags"][0]["control"]["counts"] == [50, 50]


def test_a_failing_control_says_nothing_where_no_retrieval_ran(tmp_path):
    """Perplexity alone beyond the window: the verdict is about perplexity; that retrieval fails inside the window
    is no caveat for a length where none was measured."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path, "yarn", yarn, {8192: 10.0, 12288: 10.1}, {8192: (1, 10)})
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert model["verdict"] == "ppl holds at 12K but retrieval was not run there"


def test_the_verdict_goes_on_past_a_ppl_only_length_to_one_that_measured_retrieval(tmp_path):
    """Perplexity alone at 12K (another study's), retrieval at 16K: the one-line verdict does not stop at 12K's
    'retrieval was not run there' but also gives 16K's decision."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "original_max_position_embeddings": 8192}
    _model(tmp_path, "yarn", yarn, {8192: 10.0, 12288: 10.1, 16384: 10.2}, {8192: (9, 10), 16384: (5, 10)})
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    by_length = {r["length"]: r for r in model["by_length"]}
    assert by_length[12288]["status"] == "ppl only" and by_length[16384]["status"] == "inconclusive"
    assert model["verdict"] == ("ppl holds at 12K but retrieval was not run there; inconclusive at 16K: "
                                + by_length[16384]["decision"])


def test_a_length_whose_retrieval_cannot_judge_says_so_and_the_verdict_spans_every_ppl_only_length(tmp_path):
    """Retrieval fails inside the window (1/10 at 8K): 16K's 0/10 cannot judge the extension, so 16K's row says why
    it rests on perplexity alone instead of reading as if retrieval never ran, and the one-line verdict names both
    lengths where perplexity holds, not only the first."""
    from longctx.evals.report.text import counts_text

    _model(tmp_path, "base", {"rope_type": "default", "rope_theta": 1e6}, {8192: 10.0, 12288: 10.1, 16384: 10.2},
           {8192: (1, 10), 16384: (0, 10)})
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    by_length = {r["length"]: r for r in model["by_length"]}
    assert by_length[12288]["status"] == by_length[16384]["status"] == "ppl only"
    assert by_length[16384]["decision"].startswith(
        f"retrieval {counts_text((0, 10))} here, but {counts_text((1, 10))} at 8K inside the window is too low to "
        "judge it; ppl ×")
    assert by_length[12288]["decision"].startswith("ppl ×")  # no retrieval there: nothing set aside
    assert model["verdict"] == (f"retrieval fails within the trained length ({counts_text((1, 10))} at 8K, passkey), "
                                "so it cannot judge the extension on that task; ppl holds at 12K and 16K")


def test_summary_json_gives_the_pooled_rate_its_interval_belongs_to(tmp_path):
    """RULER's 50 answers at 0.40 and Kamradt's 5 at 0.00: the tasks' mean (0.20) lies outside the Wilson interval
    of the 55 answers pooled ([0.25, 0.50]); summary.json names the pooled rate (20/55) that interval belongs to."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label": "m", "trained_length": 8192}))
    (folder / "ruler.jsonl").write_text(json.dumps({
        "task": "ruler", "key": "ruler|vt|8192", "subtask": "vt", "length": 8192, "score": 0.4, "ruler_score": 40.0,
        "found": 100, "refs": 250, "samples": 50, "chat_template": "on", "haystack": "none"}) + "\n")
    (folder / "kamradt.jsonl").write_text("".join(json.dumps({
        "task": "kamradt", "key": f"kamradt|8192|{d}", "length": 8192, "depth": d, "samples": 1, "score": 0.0,
        "found": 0, "refs": 2, "chat_template": "on", "haystack": "h", "judge": None}) + "\n" for d in range(5)))
    write_report(tmp_path, tmp_path / "out")
    (model,) = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    (row,) = model["by_length"]
    low, high = row["retrieval_ci95"]
    assert row["retrieval"] == pytest.approx(0.2) and not low <= row["retrieval"] <= high
    assert row["retrieval_counts"] == [20, 55] and row["retrieval_pooled"] == pytest.approx(20 / 55)
    assert low <= row["retrieval_pooled"] <= high
