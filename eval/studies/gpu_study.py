"""Helpers of eval/studies/smollm2-extension-gpu.sh that are easier in Python than in bash.

    python eval/studies/gpu_study.py tiny-model DIR --trained-length 128   # the dry run's stand-in for SmolLM2
    python eval/studies/gpu_study.py run -- COMMAND...                     # run COMMAND (in process if it can)

`tiny-model` writes `longctx.testing`'s tiny random Llama with the byte tokenizer
(`longctx.byte_tokenizer`): no download, no tokenizer training, and any text tokenizes. `run` runs a command;
a command `PYTHON SCRIPT.py ARGS` whose PYTHON is this interpreter runs in this process, as `python SCRIPT.py`
would run it (`runpy`, `__name__ == "__main__"`): no second interpreter start and torch import per fine-tune
of the dry run. The recipe itself records each run (command, commit, machine, wall time) in OUT/runs.jsonl.
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path


def tiny_model(out: Path, trained_length: int, seed: int = 0) -> Path:
    """`longctx.testing`'s tiny random Llama with the byte tokenizer, trained length `trained_length`."""
    from longctx.byte_tokenizer import byte_tokenizer
    from longctx.testing import write_tiny_llama

    return write_tiny_llama(out, byte_tokenizer(), max_position_embeddings=trained_length, seed=seed)


def same_interpreter(command: list[str]) -> bool:
    """`PYTHON SCRIPT.py ...` with PYTHON this very interpreter (a venv's python is a link: compare as given)."""
    if len(command) < 2 or not command[1].endswith(".py"):
        return False
    return os.path.abspath(command[0]) == os.path.abspath(sys.executable)


def run_here(command: list[str]) -> int:
    """Run `python SCRIPT.py ARGS` in this process; its exit status."""
    saved = sys.argv
    sys.argv = command[1:]
    try:
        runpy.run_path(command[1], run_name="__main__")
    except SystemExit as stop:  # what the interpreter would do with it
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def run(command: list[str]) -> int:
    """Run `command` (in this process when it is `PYTHON SCRIPT.py ...` with this interpreter)."""
    return run_here(command) if same_interpreter(command) else subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_study.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tiny = sub.add_parser("tiny-model", help="write the dry run's tiny random Llama")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--trained-length", type=int, default=128)
    rec = sub.add_parser("run", help="run a command, in this process when it is a script of this interpreter")
    rec.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.what == "tiny-model":
        print(tiny_model(args.out, args.trained_length))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())
