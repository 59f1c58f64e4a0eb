"""The evaluation tasks and their registry.

A task is one module of this package that defines `TASK`, an instance of a `longctx.evals.tasks.base.Task`
subclass: adding a module here adds the task to the suite, the CLI, the report and the bench. `all_tasks()`
finds them (importing this package's modules, none of which imports torch at the top); `get_task(name)` is one.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from longctx.errors import unknown_name


@functools.cache
def all_tasks() -> dict:
    """name -> `Task` of every task module, in their `order` (the report's tables and figures)."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if task is not None:
            found.append(task)
    return {task.name: task for task in sorted(found, key=lambda task: task.order)}


def get_task(name: str):
    """The task called `name`; an unknown name answers with the closest valid one."""
    tasks = all_tasks()
    if name not in tasks:
        raise unknown_name("task", name, list(tasks))
    return tasks[name]
