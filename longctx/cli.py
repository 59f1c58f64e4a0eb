"""The `longctx` console script: a table of verbs, each a module with `add_parser(subparsers)`.

Command modules keep heavy imports (torch, transformers) inside their run functions so `--help` is instant.
Every UsageError becomes one line on stderr and exit code 2; argparse errors, a full disk and a read-only
output folder do the same.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from longctx import __version__
from longctx.errors import OneLineParser, UsageError, run_in_one_line

# verb -> module whose add_parser(subparsers) registers it (and sets `func` on its parser)
COMMANDS = {
    "patch": "longctx.patch_cli",
    "analyze": "longctx.analyze",
    "eval": "longctx.evals.cli",
    "report": "longctx.evals.report.page",
    "demo": "longctx.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="longctx", description="Extend the context of RoPE language models and prove it worked."
    )
    parser.add_argument("--version", action="version", version=f"longctx {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:  # a bad flag: one line naming the verb's --help
        sys.stderr.write(f"longctx: error: {exc}\n")
        return 2
    args.argv = argv  # what was asked, for records such as longctx_patch.json
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return run_in_one_line("longctx", lambda: args.func(args), lambda name: (
        f"longctx: stopped by {name}: every finished result is kept (nothing half-written); "
        "rerun the same command to resume"))


if __name__ == "__main__":
    raise SystemExit(main())
