"""The stage table of a GPU lease (eval/studies/gpu-lease.sh), from the records the lease wrote.

    python eval/studies/lease_report.py docs/results/bench-h200 docs/results/smollm2-extension-h200

Each folder's `lease-stages.jsonl` (one line per stage: exit status, seconds against its budget, device, torch and
CUDA versions, command, commit) becomes `lease.md` beside it, so a reader sees what ran where, for how long, and
what was cut, without typing any of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_stages(folder: Path) -> list[dict]:
    path = folder / "lease-stages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def render(folder: Path, stages: list[dict]) -> str:
    machine = stages[0]["machine"] if stages else {}
    commits = sorted({str(s.get("commit")) for s in stages})
    commands = sorted({f"`{s.get('lease_command')}`" for s in stages})
    lines = [f"# GPU lease: the stages that wrote `{folder.name}`\n",
             "Written by `eval/studies/lease_report.py` from `lease-stages.jsonl` (one record per stage of "
             "`eval/studies/gpu-lease.sh`). A stage runs under its own time budget; one cut at it says so.\n",
             f"- device: {machine.get('gpu') or machine.get('cpu')}, CUDA {machine.get('cuda')}, torch "
             f"{machine.get('torch')}, Python {machine.get('python')}, {machine.get('cores')} CPU cores, "
             f"host {machine.get('host')}",
             f"- commit: {', '.join(commits)}" + (" (given by LONGCTX_COMMIT: the copy had no .git)"
                                                   if any(s.get("commit_from") for s in stages) else ""),
             f"- lease commands: {', '.join(commands)}\n",
             "| stage | ended (UTC) | exit | seconds | budget | command |",
             "|---|---|---|---|---|---|"]
    for s in stages:
        status = f"{s['exit_status']}" + (" (cut at its budget)" if s.get("cut_at_budget") else "")
        lines.append(
            f"| {s['stage']} | {s.get('ended', '')} | {status} | {s['wall_seconds']} | {s.get('budget_seconds', '')} "
            f"| `{s['command']}` |"
        )
    total = sum(s["wall_seconds"] for s in stages)
    lines.append(f"\nWall time of these stages: {total} s (stages that ran side by side are counted each).\n")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for name in argv:
        folder = Path(name)
        stages = read_stages(folder)
        if stages:
            (folder / "lease.md").write_text(render(folder, stages))
            print(f"wrote {folder / 'lease.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
