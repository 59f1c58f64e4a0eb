"""`longctx eval TASK|suite`: evaluate checkpoints, results appended cell by cell.

    longctx eval ppl     --model DIR --lengths 2k,4k,8k,16k,32k [--data FILE|DATASET] [--stride N]
    longctx eval passkey --model DIR --lengths 4k,8k,16k,32k --depths 0:1:5 --trials 5
    longctx eval niah    --model DIR --lengths 4k..64k --depths 11 [--haystack FILE] [--needles 3]
    longctx eval suite   longctx/evals/suites/quick.yaml --model ORIG --model PATCHED --out results/

Results go to OUT/<label>/<task>.jsonl (one line per finished cell); rerunning skips finished cells.

Several processes share the work (data parallel, one model copy each; see longctx/evals/run/parallel.py):
    accelerate launch --num_processes 8 -m longctx eval suite ...
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 -m longctx eval suite ...   (CPU)
`ppl --context-parallel` splits each window's sequence across them instead (longctx/evals/run/nll.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from functools import partial

from longctx.errors import unknown_name
from longctx.evals.suite import make_config, run_suite, run_tasks
from longctx.evals.tasks import all_tasks

LENGTHS_HELP = "lengths in tokens: 2k,4k or 4096 or 4k..64k (powers of two) or 1.5k"


def _add_run_options(parser: argparse.ArgumentParser, *, suite: bool = False) -> None:
    if suite:
        parser.add_argument("--model", action="append", required=True,
                            help="checkpoint dir, GGUF, Hub id or LoRA adapter dir; repeat for several models")
        parser.add_argument("--labels", help="comma-separated labels, one per --model (default: each dir's name)")
        parser.add_argument("--seed", type=int, default=None, help="overrides the suite's seed")
    else:
        parser.add_argument("--model", required=True, help="checkpoint dir, GGUF, Hub id or LoRA adapter dir")
        parser.add_argument("--label", help="name of the results folder (default: the model dir's name)")
        parser.add_argument("--seed", type=int, default=0, help="fixes documents, haystacks and passkeys")
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: cuda when available)")
    parser.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument(
        "--base-model", help="base checkpoint of a LoRA adapter dir (default: from adapter_config.json)"
    )
    parser.add_argument("--force", action="store_true",
                        help="start the label's results over (delete OUT/<label> first), e.g. after the model changed")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate: perplexity, passkey, needle in a haystack, suites",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="eval_task", metavar="TASK", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    _suggest_close_task(parser, [*all_tasks(), "suite"])
    for task in all_tasks().values():
        command = commands.add_parser(task.name, help=task.help)
        _add_run_options(command)
        command.add_argument("--lengths", required=True, help=LENGTHS_HELP)
        task.add_arguments(command)
        command.set_defaults(func=partial(run_task, task))

    suite = commands.add_parser("suite", help="every task of a suite YAML for every --model, then the report")
    suite.add_argument("suite", help="suite YAML, e.g. longctx/evals/suites/quick.yaml")
    _add_run_options(suite, suite=True)
    suite.set_defaults(func=run_suite_command)


def _suggest_close_task(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Turn argparse's "invalid choice" for the TASK into "unknown task 'x': did you mean 'y'?"."""
    report = parser.error

    def error(message: str):
        match = re.search(r"invalid choice: '([^']*)'", message)
        if match:
            message = str(unknown_name("task", match.group(1), names))
        report(message)

    parser.error = error


def _command(args) -> list[str] | None:
    """The `longctx ...` command line as asked (main() records it), for the run record."""
    argv = getattr(args, "argv", None)
    return ["longctx", *argv] if argv is not None else None


def run_task(task, args) -> int:
    """One task for one model; every flag named after a field of the task's Config is a setting."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(task.Config) if hasattr(args, f.name)}
    run_tasks(
        args.model,
        {task.name: make_config(task.name, settings)},
        args.out,
        label=args.label,
        device=args.device,
        dtype=args.dtype,
        base_model=args.base_model,
        command=_command(args),
        force=args.force,
    )
    return 0


def run_suite_command(args) -> int:
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    run_suite(args.suite, args.model, args.out, labels=labels, seed=args.seed, device=args.device, dtype=args.dtype,
              base_model=args.base_model, command=_command(args), force=args.force)
    return 0
