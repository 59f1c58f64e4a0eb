"""A short results table, generated from a report's summary.json, for pages that quote a study (the README).

A page asks for one between two marker comments; the first marker says which summary, which models and which
lengths, so the block can be regenerated and checked without anything else:

    <!-- compact-table summary=docs/results/STUDY/summary.json rows=original,yarn-x2 ppl=8K,16K passkey=12K,16K -->
    ...the table: written by `python -m longctx.evals.report.compact PAGE.md`...
    <!-- /compact-table -->

Each row names the model's rope settings (`text.rope_text`); perplexity is formatted as the report formats it
(`text.fmt_ppl`), with ‡ where the model's perplexity was read on other documents than the rest of the column
(summary.json's `off_series`, the report's mark); passkey as k/n, the trials that retrieved the key over all
trials at that length (summary.json's `retrieval_counts`, used only where passkey is the one retrieval task
measured there). "–" is a cell that was not measured. `--check` exits 1 when a block differs from what the
summary gives (the README's test asks that).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from longctx.evals.report.text import fmt_ppl, rope_text
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import RETRIEVAL
from longctx.files import write_text_atomic
from longctx.lengths import fmt_len, parse_tokens

BLOCK = re.compile(r"(<!-- compact-table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /compact-table -->)", re.S)
NOT_MEASURED = "–"


def parse_spec(spec: str) -> dict:
    """'summary=PATH rows=a,b ppl=8K,16K passkey=12K' -> {summary, rows, ppl, passkey} (lengths in tokens)."""
    fields = dict(part.split("=", 1) for part in spec.split())
    missing = {"summary", "rows", "ppl", "passkey"} - set(fields)
    if missing:
        raise ValueError(f"compact-table marker lacks {', '.join(sorted(missing))}: {spec!r}")
    return {"summary": fields["summary"], "rows": fields["rows"].split(","),
            "ppl": [parse_tokens(n) for n in fields["ppl"].split(",")],
            "passkey": [parse_tokens(n) for n in fields["passkey"].split(",")]}


def passkey_cell(row: dict | None) -> str:
    """k/n of the passkey trials at one length, or "–" where none ran."""
    if row is None or row.get("passkey") is None:
        return NOT_MEASURED
    others = [name for name, task in all_tasks().items()
              if task.kind == RETRIEVAL and name != "passkey" and row.get(name) is not None]
    if others:  # retrieval_counts pools every retrieval task: it would not be passkey's count
        raise ValueError(f"at {fmt_len(row['length'])} retrieval pools passkey with {', '.join(others)}")
    correct, trials = row["retrieval_counts"]
    return f"{correct}/{trials}"


def compact_table(summary: dict, rows: list[str], ppl: list[int], passkey: list[int]) -> str:
    """The Markdown table: one line per model of `rows`, perplexity at `ppl` and passkey at `passkey` lengths."""
    models = {model["label"]: model for model in summary["models"]}
    unknown = [label for label in rows if label not in models]
    if unknown:
        raise ValueError(f"not in the summary: {', '.join(unknown)}")
    head = ["model", "RoPE", *(f"ppl {fmt_len(n)}" for n in ppl), *(f"passkey {fmt_len(n)}" for n in passkey)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for label in rows:
        by_length = {row["length"]: row for row in models[label]["by_length"]}
        mark = "‡" if "ppl" in models[label].get("off_series", []) else ""
        cells = [fmt_ppl(value) + mark if (value := (by_length.get(n) or {}).get("ppl")) is not None else NOT_MEASURED
                 for n in ppl]
        cells += [passkey_cell(by_length.get(n)) for n in passkey]
        lines.append(f"| {label} | {rope_text(models[label].get('rope'))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def refresh(text: str, root: Path) -> str:
    """`text` with every compact-table block rewritten from its summary (a path relative to `root`)."""
    def block(match: re.Match) -> str:
        spec = parse_spec(match["spec"])
        summary = json.loads((root / spec["summary"]).read_text())
        return match[1] + compact_table(summary, spec["rows"], spec["ppl"], spec["passkey"]) + match[4]

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.evals.report.compact", description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="+", type=Path, help="Markdown files holding compact-table blocks")
    parser.add_argument("--root", type=Path, default=Path("."), help="where the markers' summary paths start")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    stale = []
    for page in args.pages:
        text = page.read_text(encoding="utf-8")
        if not BLOCK.search(text):
            print(f"{page}: no compact-table block", file=sys.stderr)
            return 2
        new = refresh(text, args.root)
        if new != text:
            stale.append(page)
            if not args.check:
                write_text_atomic(page, new)
    for page in stale:
        print(f"{page}: {'out of date' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
