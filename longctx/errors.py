"""The one error type users see: a one-line message, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import errno
import os
import re


class UsageError(Exception):
    """Bad input the user can fix. The CLI prints `longctx: error: <message>` and exits with 2."""


def unknown_name(what: str, name: str, names, where: str = "", *, list_valid: bool = True) -> UsageError:
    """"unknown task 'pasky': did you mean 'passkey'? valid tasks: ..." for any list of names (raise it)."""
    import difflib

    names = [str(n) for n in names]
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else ""
    valid = f"valid {what}s: {', '.join(names)}" if list_valid or not close else ""
    return UsageError(f"unknown {what} {name!r}{where}: " + " ".join(x for x in (hint, valid) if x))


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose bad flags are a UsageError pointing at --help (one line, exit 2 where it is caught)
    instead of a usage dump: `longctx` and the fine-tune recipe parse with it."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see {self.prog} --help)")


# Failures of the machine rather than of longctx, reported in one line like a UsageError: errno -> advice.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "that file system is read-only: write elsewhere",
    errno.EACCES: "check who may read and write it",
    errno.EPERM: "check who may read and write it",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EFBIG: "a file-size limit (ulimit -f) or the file system's largest file stopped the write: raise it or "
                 "write elsewhere",
    errno.EIO: "the disk reported an I/O error: check it or write elsewhere",
}
_OS_CODE = re.compile(r"(?:Os \{ code: |\[Errno |errno )(\d+)")


def environment_error(exc: BaseException) -> str | None:
    """The one-line message for a full disk, a file-size limit, a read-only or forbidden path (None for any
    other error, which stays a traceback: that is a bug to report). safetensors (`SafetensorError`) and torch
    (`PytorchStreamWriter failed writing`) report the same failures of the machine as their own errors."""
    if not isinstance(exc, OSError):
        return library_write_error(exc)
    if exc.errno not in _ENVIRONMENT_ERRNOS:
        return None
    target = exc.filename2 or exc.filename  # shutil's copies put the destination second
    where = f"{target}: " if target else ""
    return f"{where}{exc.strerror or errno.errorcode[exc.errno]}; {_ENVIRONMENT_ERRNOS[exc.errno]}"


def library_write_error(exc: BaseException) -> str | None:
    """safetensors' and torch's wrapping of an OS write error, as one line (None for anything else)."""
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" or (isinstance(exc, RuntimeError) and (
            "PytorchStreamWriter failed" in text or "file write failed" in text or "unexpected pos" in text)):
        match = _OS_CODE.search(text)
        code = int(match.group(1)) if match else None
        advice = _ENVIRONMENT_ERRNOS.get(
            code, "free some space, check the file-size limit (ulimit -f) or write elsewhere"
        )
        what = os.strerror(code) if code else (text.splitlines() or ["write failed"])[0][:120]
        return f"saving weights failed ({what}); {advice}"
    return None


def run_in_one_line(prog: str, work, stopped) -> int:
    """`work()`'s exit code, with every way it can end said in one line on stderr: a UsageError or a failure of
    the machine (full disk, file-size limit, read-only folder) is `{prog}: error: ...` and exit 2; Ctrl-C or
    SIGTERM (which stops the work like Ctrl-C, so finished work is recorded) is the line `stopped(signal name)`
    and exit 130 / 143. Anything else is a bug: its traceback stays. `longctx` and the fine-tune recipe run in it."""
    import signal
    import sys
    import threading

    signalled: list[str] = []

    def terminate(signum, frame):
        signalled.append("SIGTERM")
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        return int(work() or 0)
    except UsageError as exc:
        message = str(exc)
    except Exception as exc:
        message = environment_error(exc)
        if message is None:
            raise
    except KeyboardInterrupt:
        close_progress_bars()
        sys.stderr.write(stopped(signalled[0] if signalled else "SIGINT") + "\n")
        return 143 if signalled else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    close_progress_bars()
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 2


def close_progress_bars() -> None:
    """A progress bar may own the current stderr line (tqdm redraws it with \\r): close every live bar so an
    error message starts on a line of its own."""
    import sys

    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)  # only if something imported tqdm
    for bar in list(getattr(tqdm, "_instances", None) or []):
        bar.close()
