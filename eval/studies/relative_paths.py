"""One-off: the raw result files committed before reports wrote paths relative to the checkout name the producing
machine's checkout (`/work/main/.cache/...`). This rewrites that prefix to repository-relative paths, and nothing
else: every number, key and line stays as it was (checked before a file is replaced).

    python eval/studies/relative_paths.py docs/results/smollm2-extension-cpu --root /work/main --root /work/wt
    python eval/studies/relative_paths.py docs/results/smollm2-cpu-4k --root /work/main --home /root

A path in the producing user's home folder (`--home`, e.g. longctx's cache ~/.cache/longctx) is written `~/...`.

Reads the .json, .jsonl and .md files below each folder except the report's own outputs (report.md, report.html,
summary.json: `longctx report FOLDER` renders those again).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longctx.files import write_text_atomic

RENDERED = {"report.md", "report.html", "summary.json"}


def relative(text: str, roots: list[str], home: str | None = None) -> str:
    """`text` with `ROOT/` removed for every root (the paths inside that checkout become relative to it) and
    `HOME/` written `~/`."""
    for root in roots:
        text = text.replace(root.rstrip("/") + "/", "")
    return text.replace(home.rstrip("/") + "/", "~/") if home else text


def same_but_paths(before: str, after: str, roots: list[str], suffix: str, home: str | None = None) -> bool:
    """Whether `after` is `before` with only its strings made relative: JSON (lines) parsed and compared with the
    same rewrite applied to every string of `before`; other text compared line for line."""
    if suffix not in (".json", ".jsonl"):
        return relative(before, roots, home) == after

    def rewrite(value):
        if isinstance(value, str):
            return relative(value, roots, home)
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, dict):
            return {relative(k, roots, home): rewrite(v) for k, v in value.items()}
        return value

    def parse(text: str):
        if suffix == ".json":
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    return rewrite(parse(before)) == parse(after)


def rewrite_folder(folder: Path, roots: list[str], home: str | None = None) -> list[Path]:
    """Rewrite every raw file below `folder`; returns the files changed."""
    changed = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in (".json", ".jsonl", ".md") or path.name in RENDERED:
            continue
        before = path.read_text(encoding="utf-8")
        after = relative(before, roots, home)
        if after == before:
            continue
        if not same_but_paths(before, after, roots, path.suffix, home):
            raise SystemExit(f"{path}: the rewrite would change more than paths; nothing written")
        write_text_atomic(path, after)
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relative_paths.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders to rewrite")
    parser.add_argument("--root", action="append", default=[],
                        help="a checkout folder of the machine that produced them (repeat for several)")
    parser.add_argument("--home", help="the home folder of the user who produced them")
    args = parser.parse_args(argv)
    for folder in args.folders:
        for path in rewrite_folder(folder, args.root, args.home):
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
