"""Bring one task's finished cells from staging folders into a study folder.

A task re-run on a new plan (perplexity on 8 windows instead of 2, a control added) runs into a staging folder of
its own, so that its resume never mistakes the study's older cells for its own and the committed folder changes
only here, in one step per model:

    python eval/studies/collect_staged.py --task ppl --replace --into docs/results/smollm2-extension-cpu \\
        .cache/studies/smollm2-extension-cpu-8w .cache/studies/smollm2-extension-cpu-heldout
    python eval/studies/collect_staged.py --task passkey --into docs/results/smollm2-extension-cpu \\
        .cache/studies/smollm2-extension-cpu-controls

Per model folder of the staging folders whose `<task>.jsonl` exists (a model still running has only
`<task>.partial` and is skipped): `--replace` drops the study's cells of the task and takes the staged ones
(every staging folder's, in the order given); without it the staged cells are added, and a key the study already
holds is an error. runs.jsonl keeps the study's runs except, with `--replace`, those that computed only the
replaced task, and gains the staged runs of the task (a run stopped before its first cell journaled windows or
trials the cells use: it stays). model.json is the staged one (it names origin and fingerprint) after a
check that it describes the same model: the same rope, trained and claimed length, and fingerprint where both
have one; its `collected` field records, per task, the staging folders the cells came from. Every file is
replaced atomically; `longctx report FOLDER` renders the page again afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longctx.files import dumps, read_jsonl, write_text_atomic

SAME_MODEL = ("rope", "trained_length", "claimed_length")


class Refused(Exception):
    """A staged folder that would not merge cleanly: said in one line, exit 2, nothing written for its model."""


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path, repair=False) if path.is_file() else []


def _same_model(kept: dict, staged: dict, where: str) -> None:
    for field in SAME_MODEL:
        if kept.get(field) != staged.get(field):
            raise Refused(f"{where}: model.json {field} differs from the study's ({kept.get(field)!r} vs "
                             f"{staged.get(field)!r}): not the same model")
    ids = [(m.get("fingerprint") or {}).get("id") for m in (kept, staged)]
    if all(ids) and ids[0] != ids[1]:
        raise Refused(f"{where}: fingerprint {ids[1]} differs from the study's {ids[0]}: not the same model")


def collect_model(task: str, staged: list[Path], into: Path, replace: bool) -> str:
    """Merge one model's staged cells, runs and model.json into `into` (its folder in the study)."""
    meta = json.loads((into / "model.json").read_text()) if (into / "model.json").is_file() else None
    collected = dict((meta or {}).get("collected") or {})  # task -> the staging folders its cells came from
    collected[task] = [str(folder) for folder in staged]
    cells, runs = [], []
    for folder in staged:
        staged_meta = json.loads((folder / "model.json").read_text())
        if meta is not None:
            _same_model(meta, staged_meta, str(folder))
        meta = {**staged_meta, "label": into.name, "collected": collected}
        cells += _jsonl(folder / f"{task}.jsonl")
        runs += [run for run in _jsonl(folder / "runs.jsonl") if task in (run.get("tasks") or [])]  # stopped too
    kept = [] if replace else _jsonl(into / f"{task}.jsonl")
    clash = {c["key"] for c in kept} & {c["key"] for c in cells}
    if clash:
        raise Refused(f"{into}: the study already holds {sorted(clash)[0]}: use --replace or another plan")
    old_runs = _jsonl(into / "runs.jsonl")
    if replace:
        old_runs = [r for r in old_runs if set(r.get("tasks") or []) != {task}]
    into.mkdir(parents=True, exist_ok=True)
    write_text_atomic(into / f"{task}.jsonl", "".join(dumps(c) + "\n" for c in kept + cells))
    write_text_atomic(into / "runs.jsonl", "".join(dumps(r) + "\n" for r in old_runs + runs))
    write_text_atomic(into / "model.json", json.dumps(meta, indent=2) + "\n")
    return f"{into.name}: {len(cells)} {task} cells from {', '.join(f.parent.name for f in staged)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("staging", nargs="+", type=Path, help="staging results folders (one subfolder per model)")
    parser.add_argument("--task", required=True, help="the task whose cells move (ppl, passkey, ...)")
    parser.add_argument("--into", required=True, type=Path, help="the study's results folder")
    parser.add_argument("--replace", action="store_true", help="drop the study's cells of the task first")
    parser.add_argument("--only", default=None, help="comma-separated model labels to take (default: every one)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    labels: dict[str, list[Path]] = {}
    for root in args.staging:
        for folder in sorted(p for p in root.iterdir() if (p / f"{args.task}.jsonl").is_file()):
            if only is None or folder.name in only:
                labels.setdefault(folder.name, []).append(folder)
    if not labels:
        print(f"no finished {args.task}.jsonl in {', '.join(map(str, args.staging))}", file=sys.stderr)
        return 2
    for label, folders in labels.items():
        try:
            print(collect_model(args.task, folders, args.into / label, args.replace))
        except Refused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
