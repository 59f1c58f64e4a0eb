"""Evaluation tasks: perplexity, passkey retrieval, needle in a haystack.

Every task module exposes a `Config` dataclass and `run(model, tokenizer, cfg, writer) -> list[cell dicts]`
(writer: `longctx.evals.results.ResultsWriter`). The registry maps task names to module paths so that
importing it costs nothing; `get_task(name)` imports the module.
"""

from __future__ import annotations

import difflib
import importlib

from longctx.errors import UsageError

TASKS = {
    "ppl": "longctx.evals.perplexity",
    "passkey": "longctx.evals.passkey",
    "niah": "longctx.evals.niah",
}


def get_task(name: str):
    """The task module for `name`; an unknown name answers with the closest valid one."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"unknown task {name!r}: {hint}valid tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
