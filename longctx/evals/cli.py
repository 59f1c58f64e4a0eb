"""`longctx eval ppl|passkey|niah|suite`: evaluate checkpoints, results appended cell by cell.

    longctx eval ppl     --model DIR --lengths 2k,4k,8k,16k,32k [--data FILE|DATASET] [--stride N]
    longctx eval passkey --model DIR --lengths 4k,8k,16k,32k --depths 0:1:5 --trials 5
    longctx eval niah    --model DIR --lengths 4k..64k --depths 11 [--haystack FILE] [--needles 3]
    longctx eval suite   eval/suites/quick.yaml --model ORIG --model PATCHED --out results/

Results go to OUT/<label>/<task>.jsonl (one line per finished cell); rerunning skips finished cells.
"""

from __future__ import annotations

import argparse
import difflib
import re

from longctx.evals.suite import make_config, run_suite, run_tasks

LENGTHS_HELP = "lengths in tokens: 2k,4k or 4096 or 4k..64k (powers of two) or 1.5k"
DEPTHS_HELP = "needle depths: start:stop:count (0:1:5 = 0,.25,.5,.75,1), a count (11) or a list (0,0.5,1)"


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
    parser.add_argument("--base-model", help="base checkpoint of a LoRA adapter dir (default: from adapter_config.json)")


def _add_retrieval_options(parser: argparse.ArgumentParser, *, depths: str, trials: int) -> None:
    parser.add_argument("--lengths", required=True, help=LENGTHS_HELP)
    parser.add_argument("--depths", default=depths, help=f"{DEPTHS_HELP} (default: {depths})")
    parser.add_argument("--trials", type=int, default=trials, help=f"trials per (length, depth) (default: {trials})")
    parser.add_argument("--mode", choices=("forced", "generate"), default="forced",
                        help="forced: one teacher-forced forward, correct iff greedy argmax matches every answer "
                             "token (what greedy decoding would emit); generate: greedy decoding (default: forced)")
    parser.add_argument("--no-prefix-cache", dest="share_prefix", action="store_false",
                        help="a full forward for every depth instead of reusing the KV cache of the shared filler")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate: perplexity, passkey, needle in a haystack, suites",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    _suggest_close_task(parser, ["ppl", "passkey", "niah", "suite"])

    ppl = tasks.add_parser("ppl", help="perplexity and bits per byte by context length")
    _add_run_options(ppl)
    ppl.add_argument("--lengths", required=True, help=LENGTHS_HELP)
    ppl.add_argument("--data", help="pydoc (default, embedded), stdlib, FILE, DIR, *.jsonl or hf:NAME[:CONFIG][:SPLIT]")
    ppl.add_argument("--stride", type=int, help="sliding-window step in tokens (default: non-overlapping windows)")
    ppl.add_argument("--docs", type=int, default=4, help="chunks of each length to score (default: 4)")
    ppl.set_defaults(func=run_ppl)

    passkey = tasks.add_parser("passkey", help="passkey retrieval accuracy by length and depth")
    _add_run_options(passkey)
    _add_retrieval_options(passkey, depths="0:1:5", trials=5)
    passkey.set_defaults(func=run_passkey)

    niah = tasks.add_parser("niah", help="needle in a haystack: lengths × depths grid")
    _add_run_options(niah)
    _add_retrieval_options(niah, depths="11", trials=3)
    niah.add_argument("--haystack", help="haystack text: pydoc (default), stdlib, FILE, DIR or hf:NAME")
    niah.add_argument("--needles", type=int, default=1, help="needles to retrieve, spaced evenly after the first")
    niah.add_argument("--distractors", type=int, default=0, help="needle-like sentences with other cities")
    niah.set_defaults(func=run_niah)

    suite = tasks.add_parser("suite", help="every task of a suite YAML for every --model, then the report")
    suite.add_argument("suite", help="suite YAML, e.g. eval/suites/quick.yaml")
    _add_run_options(suite, suite=True)
    suite.set_defaults(func=run_suite_command)


def _suggest_close_task(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Turn argparse's "invalid choice" for the TASK into "unknown task 'x': did you mean 'y'?"."""
    report = parser.error

    def error(message: str):
        match = re.search(r"invalid choice: '([^']*)'", message)
        if match:
            close = difflib.get_close_matches(match.group(1), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            message = f"unknown task {match.group(1)!r}: {hint}valid tasks: {', '.join(names)}"
        report(message)

    parser.error = error


def _command(args) -> list[str] | None:
    """The `longctx ...` command line as asked (main() records it), for the run record."""
    argv = getattr(args, "argv", None)
    return ["longctx", *argv] if argv is not None else None


def _run_one(task: str, args, settings: dict) -> int:
    cfg = make_config(task, {"lengths": args.lengths, "seed": args.seed, **settings})
    run_tasks(args.model, {task: cfg}, args.out, label=args.label, device=args.device, dtype=args.dtype,
              base_model=args.base_model, command=_command(args))
    return 0


def run_ppl(args) -> int:
    return _run_one("ppl", args, {"data": args.data, "stride": args.stride, "docs": args.docs})


def _retrieval_settings(args) -> dict:
    return {"depths": args.depths, "trials": args.trials, "mode": args.mode, "share_prefix": args.share_prefix}


def run_passkey(args) -> int:
    return _run_one("passkey", args, _retrieval_settings(args))


def run_niah(args) -> int:
    return _run_one("niah", args, {**_retrieval_settings(args), "haystack": args.haystack, "needles": args.needles,
                                   "distractors": args.distractors})


def run_suite_command(args) -> int:
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    run_suite(args.suite, args.model, args.out, labels=labels, seed=args.seed, device=args.device, dtype=args.dtype,
              base_model=args.base_model, command=_command(args))
    return 0
