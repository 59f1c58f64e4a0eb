"""One writer per output: an exclusive lock held for the whole run of patch, eval, report and fine-tune.

The lock is `.<name>.longctx-lock` beside the output (the output itself may not exist yet, and patch renames
it into place), locked with `flock`: the kernel drops the lock when the process dies however it dies, so a
lock of a killed run is stale by construction and the next run simply takes it. The file says who holds it
(pid, host, start time) for the message the second writer gets; it is removed on release. `flock` does not
reach across machines on every network file system: two hosts writing one output over NFS are not stopped.

A lock is re-entrant within a process (the suite's report and the fine-tune's patched base run under the lock
of their caller); folders the lock had to create are removed again when the run fails with them empty.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path

from longctx.errors import UsageError
from longctx.files import pause_point

LOCK = "longctx-lock"
_held: dict[str, int] = {}  # lock path -> depth, in this process


def lock_path(out: Path) -> Path:
    out = Path(out).expanduser().absolute()
    return out.with_name(f".{out.name}.{LOCK}")


def main_launch_process() -> bool:
    """Process 0 of an accelerate/torchrun launch (or a plain run): only it takes the output's lock."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info['host']} since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(out, flag: str = "--out"):
    """Hold the exclusive lock of `out` until the block ends (any exit); a second writer gets a one-line
    UsageError at once. The block is run only by process 0 of a launch; the others pass through."""
    import fcntl
    import socket

    if not main_launch_process():
        yield
        return
    path = lock_path(out)
    key = str(path)
    if key in _held:  # re-entered by the same run
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    target = Path(out).expanduser().absolute()
    created = [target] if not target.exists() else []
    created += [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                _remove_created(created[1:] if created and created[0] == target else created)
                raise UsageError(f"{flag} {out} is in use by {_holder(path)}: wait for that run to finish, or "
                                 "write elsewhere") from None
            raise
        try:  # the file may have been released and removed between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _held[key] = 1
    failed = False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        pause_point("lock-held")
        yield
    except BaseException:
        failed = True
        raise
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing drops the flock
        if failed:
            _remove_created(created)


def _remove_created(folders: list[Path]) -> None:
    """rmdir (empty only) the folders a failed run created, innermost first."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
