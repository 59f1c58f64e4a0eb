"""Evaluation tasks: perplexity, passkey retrieval, needle in a haystack.

A task is one module of this package that defines `TASK`, an instance of a `longctx.evals.task.Task`
subclass: adding a module adds the task to the suite, the CLI, the report and the bench. `tasks()` finds
them (importing this package's modules, none of which imports torch at the top); `get_task(name)` is one.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil

from longctx.errors import UsageError


@functools.cache
def tasks() -> dict:
    """name -> `Task` of every task module, in their `order` (the report's tables and figures)."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if task is not None:
            found.append(task)
    return {task.name: task for task in sorted(found, key=lambda task: task.order)}


def unknown_name(what: str, name: str, names: list[str]) -> UsageError:
    """"unknown task 'x': did you mean 'y'? valid tasks: ..." for any list of names."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UsageError(f"unknown {what} {name!r}: {hint}valid {what}s: {', '.join(names)}")


def get_task(name: str):
    """The task called `name`; an unknown name answers with the closest valid one."""
    names = list(tasks())
    if name not in names:
        raise unknown_name("task", name, names)
    return tasks()[name]
