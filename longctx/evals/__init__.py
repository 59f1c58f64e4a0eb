"""Evaluation: what is measured, how it runs, how results are read and shown.

- `tasks/`: the tasks (perplexity, passkey, NIAH), their protocol (`tasks.base`) and the registry
  (`tasks.all_tasks()`, `tasks.get_task(name)`): a module of `tasks/` that defines `TASK` is a task.
- `run/`: how cells run: processes sharing work (`parallel`), the results journal (`results`), the
  per-token NLL of one sequence on one process or split across several (`nll`).
- `report/`: reading a results folder (`load`), judging each model (`judge`), its words and numbers (`text`),
  figures (`plots`) and the page (`page`, the `longctx report` verb).
- `suite.py` runs a suite YAML (tasks over models, then the report); `cli.py` is `longctx eval`.

Arrows go one way: suite/cli -> report -> tasks -> run.
"""
