"""Files that survive `kill -9`: temporary folders that say what they are, atomic publishing, JSON lines
that tolerate a torn last line.

Every output folder longctx writes is built under `.<name>.longctx-partial.<host>.<pid>` next to it and
renamed into place when complete. A run that dies leaves only such a folder; the next run writing the same
output removes it (when its process is gone), so no hidden copy of a model stays behind. An output replaced
with `--force` is first moved to `.<name>.longctx-old.<host>.<pid>`; if the run dies before the new one is
in place, the next run puts the old one back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
from pathlib import Path

PARTIAL, OLD = "longctx-partial", "longctx-old"


# ---------------------------------------------------------------------------------- temporary folders
def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, failed attempt of this process: nobody else uses that name
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, bool]]:
    """(path, owner alive?) of `.<out.name>.<kind>.<host>.<pid>` folders next to `out`, this host only."""
    prefix = f".{out.name}.{kind}.{_host()}."
    found = []
    if out.parent.is_dir():
        for path in out.parent.iterdir():
            if path.name.startswith(prefix) and path.name[len(prefix):].isdigit():
                found.append((path, _alive(int(path.name[len(prefix):]))))
    return found


def clean_leftovers(out: Path) -> None:
    """Remove what a killed run left next to `out`: its partial folder, or restore the output it had moved
    aside to replace (the run died between the two renames of `publish_dir`)."""
    out = Path(out)
    for old, alive in _leftovers(out, OLD):
        if alive:
            continue
        if not out.exists():
            replace_into_place(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for partial, alive in _leftovers(out, PARTIAL):
        if not alive:
            shutil.rmtree(partial, ignore_errors=True)


def partial_dir(out: Path) -> Path:
    """A new empty folder beside `out` to build it in, after removing leftovers of killed runs. It is created
    with the umask's permissions, as a plain mkdir would (tempfile.mkdtemp makes 0700 folders that others
    on a shared machine cannot read once published)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = out.with_name(f".{out.name}.{PARTIAL}.{_host()}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def shared_partial_dir(out: Path) -> Path:
    """The folder the processes of one run build `out` in together (a training checkpoint: each process saves its
    own shards there): `.<name>.longctx-partial` beside it, the same name in every process, where `partial_dir`
    names one process's. Only for outputs inside a folder the run holds (its lock); `remove_partials` clears
    what a killed run left. Created empty by the caller's main process."""
    out = Path(out)
    return out.with_name(f".{out.name}.{PARTIAL}")


def remove_partials(folder: Path) -> None:
    """Remove every partial output (`.<name>.longctx-partial…`) in `folder`, whoever left it: only for a folder
    that this run alone writes (it holds the lock of the output around it)."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(f".*.{PARTIAL}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an old output (with --force) is moved aside, then removed."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.{OLD}.{_host()}.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)  # moving aside publishes nothing; the next line does
        kill_point("publish:moved-aside")
    replace_into_place(tmp, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


# ---------------------------------------------------------------------------------- JSON and JSON lines
def recorded_path(path) -> str:
    """How a result file names a local path: relative to the current folder when inside it (a committed results
    folder then names no folder of the machine that made it), `~/...` inside the home folder, else absolute."""
    text = str(path)
    if not os.path.exists(text):
        return text  # a Hub id or a name, not a path on this machine
    resolved = Path(text).resolve()
    for base, shown in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        if resolved.is_relative_to(base) and resolved != base and len(base.parts) > 1:
            return shown + str(resolved.relative_to(base))
    return str(resolved)


def sanitize(record, *, inf_as_text: bool = False):
    """JSON has no NaN/inf: NaN becomes null, and so does ±inf unless `inf_as_text` writes it "inf"/"-inf" (a
    report's perplexity that blew up is a result, not a missing one). Tuples become lists."""
    if isinstance(record, float) and not math.isfinite(record):
        return "inf" if inf_as_text and record > 0 else "-inf" if inf_as_text and record < 0 else None
    if isinstance(record, dict):
        return {key: sanitize(value, inf_as_text=inf_as_text) for key, value in record.items()}
    if isinstance(record, (list, tuple)):
        return [sanitize(value, inf_as_text=inf_as_text) for value in record]
    return record


def dumps(record) -> str:
    """One JSON line; NaN/inf become null (json.dumps would write the invalid `NaN`/`Infinity`)."""
    return json.dumps(sanitize(record), ensure_ascii=False, allow_nan=False)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line, flushed and fsynced: a kill loses at most this line, torn (see `read_jsonl`)."""
    line = (dumps(record) + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        if os.environ.get("LONGCTX_KILL_AT"):  # tests: die with half the line on disk
            handle.write(line[: len(line) // 2])
            handle.flush()
            kill_point("jsonl:torn")
            line = line[len(line) // 2:]
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path, *, repair: bool = True, skipped: list[str] | None = None) -> list[dict]:
    """Every JSON object line of `path` ([] if absent); `skipped` gets a message for each other line. A last
    line without its newline is torn when it does not parse (a kill mid-append): with `repair` it is cut off
    the file, and a whole one gets its newline, so later appends start on a fresh line."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.decode("utf-8", errors="replace").splitlines()
    records, tail_kept = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
            tail_kept = number == len(lines)
        elif skipped is not None:
            skipped.append(f"{path.name} line {number} is not valid JSON (interrupted run?): skipped"
                           if record is None else f"{path.name} line {number} is not a JSON object: skipped")
    if repair and data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            if tail_kept:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                handle.truncate(data.rfind(b"\n") + 1)
    return records


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows): the rename itself is the best we get
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_into_place(src: Path, dst: Path) -> None:
    """The one rename that publishes something in longctx: `src` (a finished file or folder beside `dst`)
    becomes `dst` atomically, and the folder entry is fsynced so a power cut keeps either old or new."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write to a uniquely named temporary file in the same folder, fsync it, then `replace_into_place`:
    readers see the old file or the whole new one, never half, even after a crash; two writers never share
    a temporary name."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{PARTIAL}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a plain write would honour the umask
        replace_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data) -> Path:
    return write_text_atomic(path, json.dumps(sanitize(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------- test hooks
_hits: dict[str, int] = {}


def pause_point(name: str) -> None:
    """Tests of concurrency: with LONGCTX_PAUSE_AT=NAME:FILE the process waits at the point NAME until FILE
    exists (60 s at most), so a test decides when a lock holder goes on. Without the variable this does nothing."""
    wanted = os.environ.get("LONGCTX_PAUSE_AT")
    if not wanted or wanted.partition(":")[0] != name:
        return
    import time

    until = time.monotonic() + 60
    while not Path(wanted.partition(":")[2]).exists() and time.monotonic() < until:
        time.sleep(0.05)


def kill_point(name: str) -> None:
    """Tests of `kill -9`: with LONGCTX_KILL_AT=NAME[@N] the process SIGKILLs itself the N-th time (default
    the first) it reaches the point NAME. Without the variable this does nothing."""
    wanted = os.environ.get("LONGCTX_KILL_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
