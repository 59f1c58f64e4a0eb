"""Runs many CLI invocations in one process (torch is imported once) and reports each one's exit code and
output as JSON: `python tests/cli_driver.py CASES.json RESULTS.json`.

Each case: {"id", "tool": "longctx" | "finetune", "argv": [...], "cwd": DIR, "fault": optional}. A fault
simulates what a test cannot arrange for real: "enospc" (the disk fills while files are copied),
"readonly:DIR" (DIR is on a read-only file system); or arranges it for real: "fsize:N" (a file-size limit of
N bytes, `ulimit -f`: writes past it fail with EFBIG), "locked:PATH" (another writer holds PATH's
lock). An exception that escapes the CLI is reported as a traceback: that is always a failure of the case.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def finetune_cli():
    spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli


@contextlib.contextmanager
def fault(name: str | None):
    if not name:
        yield
        return
    if name == "enospc":  # the first file copy hits a full disk (as shutil reports it: source, destination)
        real = shutil.copyfile

        def full(src, dst, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))

        shutil.copyfile = full
        try:
            yield
        finally:
            shutil.copyfile = real
        return
    if name.startswith("readonly:"):  # what access(2) answers for a folder on a read-only file system
        folder, real = os.path.realpath(name.split(":", 1)[1]), os.access

        def access(path, mode, *args, **kwargs):
            inside = os.path.realpath(path) == folder or os.path.realpath(path).startswith(folder + os.sep)
            return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

        os.access = access
        try:
            yield
        finally:
            os.access = real
        return
    if name.startswith("fsize:"):  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(name.split(":", 1)[1]), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return
    if name.startswith("locked:"):  # its own open file description: flock conflicts as with another process
        import fcntl

        from longctx.locks import lock_path

        path = lock_path(Path(name.split(":", 1)[1]))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere", "started": 0}).encode())
        try:
            yield
        finally:
            path.unlink()
            os.close(fd)
        return
    raise ValueError(f"unknown fault {name}")


def run_case(case: dict, tools: dict) -> dict:
    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    code, crashed = None, None
    try:
        os.chdir(case["cwd"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), fault(case.get("fault")):
            try:
                code = tools[case["tool"]](case["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - any escape is what the case reports
        crashed = traceback.format_exc()
    finally:
        os.chdir(old_cwd)
    return {"id": case["id"], "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "traceback": crashed}


def main(cases_path: str, results_path: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from longctx.cli import main as longctx_main

    tools = {"longctx": longctx_main, "finetune": lambda argv: finetune_cli()([*argv, "--report-to", "none"])}
    results = [run_case(case, tools) for case in json.loads(Path(cases_path).read_text())]
    Path(results_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
