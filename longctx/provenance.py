"""Where a number came from: the command, the code's git commit, the machine, and the wall time.

Every published result must be reproducible by someone else; these records travel with the results
(`OUT/<label>/runs.jsonl` for evaluations) and the reports print them.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

_RUNNING_CODE: dict | None = None


def git_commit() -> dict:
    """The commit of the longctx source that is running, and whether its files differ from it (None outside git).

    Read once per process: the code in memory is what the checkout held when the process started, and a
    suite that evaluates model after model for hours would otherwise name commits that landed while it ran."""
    global _RUNNING_CODE
    if _RUNNING_CODE is None:
        _RUNNING_CODE = _read_git_commit()
    return dict(_RUNNING_CODE)


def _read_git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        # a copy of a checkout without its .git (the working tree a GPU lease runs in): the commit it was copied
        # from, as the one who copied it says; whether the copy differs from it is then unknown
        given = os.environ.get("LONGCTX_COMMIT") or None
        return {"commit": given, "dirty": None, **({"commit_from": "LONGCTX_COMMIT"} if given else {})}
    status = git("status", "--porcelain", "--untracked-files=no", "--", "longctx")
    return {"commit": commit, "dirty": bool(status)}


def machine() -> dict:
    """What the work ran on, in enough detail to compare timings: CPU, cores, threads, accelerator."""
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
        info["cpu"] = model or info["cpu"]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


class RunRecord:
    """The one record of where a result came from (evaluations' runs.jsonl, `longctx patch`'s longctx_patch.json,
    the bench's results.json, the demo). Start it when work begins; `finish(**extra)` returns the record with the
    wall time. `command`: the argv to rerun it (default: this process's) or that line already joined."""

    def __init__(self, command: list[str] | str | None = None):
        program = Path(sys.argv[0]).name
        program = "longctx" if program == "__main__.py" else program  # `python -m longctx` runs the same command
        if not isinstance(command, str):
            command = shlex.join(command if command is not None else [program, *sys.argv[1:]])
        self.command = command
        self.started = time.time()
        self._clock = time.perf_counter()
        self.code = git_commit()  # the code that starts the work: a later commit may land while it runs

    def origin(self) -> dict:
        """The code (commit, dirty) and the machine, without the command and the times."""
        return {**self.code, "machine": machine()}

    def finish(self, **extra) -> dict:
        return {"command": self.command, **self.origin(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "wall_seconds": round(time.perf_counter() - self._clock, 1), **extra}
