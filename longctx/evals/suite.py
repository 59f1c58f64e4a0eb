"""Running tasks on models: argument syntax, task configs from flags or YAML, model.json, suites.

A suite YAML names the tasks and their settings once and runs them for several models, e.g.

    seed: 0
    tasks:
      ppl:     {lengths: 2k..32k, docs: 4}
      passkey: {lengths: 4k..32k, depths: "0:1:5", trials: 5}
      niah:    {lengths: 4k..32k, depths: 11, needles: 1, distractors: 0, trials: 3}

    longctx eval suite longctx/evals/suites/quick.yaml --model ORIG --model PATCHED --out results/
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
from pathlib import Path

from longctx.errors import UsageError
from longctx.evals.tasks import get_task
from longctx.lengths import MAX_CONTEXT, parse_tokens

MAX_DEPTHS = 1001  # a count above is a typo (`0:1:1000000000` would build a billion-entry list)


def _one_length(text: str) -> int:
    try:
        value = parse_tokens(text)
    except ValueError as exc:
        raise UsageError(f"bad length {text!r}: {exc} (lengths: a list 2k,4k or a range 4k..64k)") from None
    if value < 1:
        raise UsageError(f"bad length {text!r}: it must be a whole number of tokens")
    if value > MAX_CONTEXT:
        raise UsageError(
            f"bad length {text!r}: above {MAX_CONTEXT:,} tokens (2^24), the longest context longctx handles"
        )
    return value


def parse_lengths(spec) -> list[int]:
    """'2k,4k' -> [2048, 4096]; '4096'; '1.5k' -> [1536]; '4k..32k' -> powers of two 4096 … 32768.

    A YAML list of numbers or such strings also works. Sorted, without duplicates.
    """
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    lengths = []
    for item in items:
        text = str(item).strip()
        if ".." in text:
            low, high = (_one_length(part) for part in text.split("..", 1))
            if low > high:
                raise UsageError(f"bad length range {text!r}: the start is above the end")
            value = low
            while value <= high:
                lengths.append(value)
                value *= 2
        elif text:
            lengths.append(_one_length(text))
    if not lengths:
        raise UsageError(f"no lengths in {spec!r}: use e.g. 2k,4k or 4k..64k")
    return sorted(set(lengths))


def parse_depths(spec) -> list[float]:
    """'0:1:5' -> start:stop:count inclusive (0, .25, .5, .75, 1); '11' -> 11 evenly from 0 to 1;
    '0,0.5,1' -> those (a single value such as '0.5' too). Depth 0 is the start of the context."""
    def bad():
        return UsageError(f"bad depths {spec!r}: use start:stop:count (0:1:5), a count (11) or a list (0,0.5,1)")

    text = ",".join(str(x) for x in spec) if isinstance(spec, (list, tuple)) else str(spec).strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            start, stop, n = float(start), float(stop), int(count)
            if not 1 <= n <= MAX_DEPTHS:
                raise bad()
            depths = [start + (stop - start) * i / (n - 1) for i in range(n)] if n > 1 else [start]
        elif text.isdigit() and 2 <= int(text) <= MAX_DEPTHS:
            n = int(text)
            depths = [i / (n - 1) for i in range(n)]
        else:
            depths = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise bad() from None
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise UsageError(f"bad depths {spec!r}: every depth must lie in [0, 1]")
    return sorted({round(d, 6) for d in depths})


def make_config(task: str, settings: dict, *, where: str = ""):
    """The task's Config from a mapping (YAML or flags): lengths/depths parsed, unknown keys refused. What each
    key takes comes from the Config's fields: a null is kept where the field's type admits None (`stride: null`)
    and means "the default" elsewhere; a field typed int takes whole numbers only."""
    config = get_task(task).Config
    fields = {f.name: str(f.type) for f in dataclasses.fields(config)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} for task {task}{where}: valid keys: {', '.join(sorted(fields))}")
    values = {k: v for k, v in settings.items() if v is not None or "None" in fields[k]}
    if "lengths" not in values:
        raise UsageError(f"task {task}{where} needs lengths")
    values["lengths"] = parse_lengths(values["lengths"])
    if "depths" in values:
        values["depths"] = parse_depths(values["depths"])
    if values.get("mode", "forced") not in ("forced", "generate"):
        raise UsageError(f"bad mode {values['mode']!r} for task {task}{where}: use forced or generate")
    for field in dataclasses.fields(config):  # a switch (share_prefix, context_parallel) takes true or false
        if field.type == "bool" and not isinstance(values.get(field.name, field.default), bool):
            raise UsageError(f"{field.name} of task {task}{where} must be true or false, not {values[field.name]!r}")
    for name in (name for name, kind in fields.items() if kind in ("int", "int | None")):
        if values.get(name) is not None and (isinstance(values[name], bool) or not isinstance(values[name], int)):
            raise UsageError(f"{name} of task {task}{where} must be an integer, not {values[name]!r}")
    return config(**values)


def default_label(source: str) -> str:
    """The model directory's (or GGUF file's, or Hub id's) last name."""
    name = Path(str(source).rstrip("/")).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name or "model"


def check_label(label: str, flag: str = "--label") -> None:
    """A label names one folder inside --out: no path separators, no `..`, nothing absolute or hidden."""
    if not label or label in (".", "..") or "/" in label or "\\" in label or "\0" in label or label.startswith("."):
        raise UsageError(f"{flag} {label!r} must name one folder inside --out (no '/', '..' or leading '.'): "
                         f"pass {flag} with a plain name")


def check_out_outside_models(out_dir, label: str, model_dirs) -> None:
    """Results never go into (or over) a model folder: the source is only read."""
    out = Path(out_dir).expanduser().resolve()
    results = out / label  # --force replaces it: it may not contain a model either
    for folder in model_dirs:
        folder = Path(folder).resolve()
        if (
            out == folder
            or folder in out.parents
            or results == folder
            or folder in results.parents
            or results in folder.parents
        ):
            raise UsageError(f"--out {out_dir} (label {label!r}) would write into the model folder {folder} (or over "
                             "it): write the results elsewhere")


def start_results(out_dir, label: str, info: dict, source: str, *, force: bool) -> None:
    """Under the lock of --out: refuse OUT/<label> holding another model's results (`longctx.fingerprint`), or
    empty it first with --force (only a results folder longctx wrote)."""
    import shutil

    from longctx.fingerprint import check_same_model

    folder = Path(out_dir) / label
    if force and folder.exists():
        ours = (folder / "model.json").is_file() or all(p.suffix in (".jsonl", ".partial") for p in folder.iterdir())
        if not folder.is_dir() or not ours:
            raise UsageError(
                f"--force: {folder} is not a longctx results folder (no model.json); refusing to delete it"
            )
        shutil.rmtree(folder)
    check_same_model(folder, info, source)


def model_info(model, rope, source: str, model_dir: Path, label: str, warnings: list[str]) -> dict:
    """The model.json record: where the model came from and what its rotary config (`rope`, a
    `rope_config.ModelRope`) claims."""
    from longctx import __version__, sources
    from longctx.files import recorded_path

    return {
        "label": label, "source": recorded_path(source), "model_dir": recorded_path(model_dir),
        "origin": sources.origin(source, model_dir),
        "rope": rope.params, "trained_length": rope.trained_length,
        "claimed_length": rope.claimed_length, "longctx_version": __version__,
        "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
        "attn_implementation": getattr(model.config, "_attn_implementation", None), "warnings": warnings,
    }


def run_tasks(source: str, configs: dict, out_dir, *, label: str | None = None, device: str | None = None,
              dtype: str | None = None, base_model: str | None = None, after_append=None,
              command: list[str] | None = None, force: bool = False) -> dict[str, list[dict]]:
    """Load one model and run each {task: Config}; writes OUT/<label>/model.json, <task>.jsonl and a line of
    runs.jsonl (`command`, default sys.argv: how to rerun it; git commit, machine, wall time, `world`: processes).

    Launched as several processes (`longctx.evals.run.parallel`), each loads the model on its own device and
    computes a share of every task; process 0 alone writes model.json, the cells and runs.jsonl. --out is
    locked for the run (`longctx.locks`), and OUT/<label> must hold this model's results or none (`force`:
    start them over).
    """
    from longctx.evals.tasks.data import check_spec, data_specs
    from longctx.fingerprint import fingerprint
    from longctx.locks import output_lock
    from longctx.modeling import pick_device, source_dirs

    label = label or default_label(source)
    check_label(label)
    for cfg in configs.values():  # every text a task reads (a Config field marked DATA_SPEC) is checked now
        for spec in data_specs(cfg):
            check_spec(spec)
    pick_device(device)
    dirs = source_dirs(source, base_model=base_model)
    check_out_outside_models(out_dir, label, [d for d in dirs if d is not None])
    with output_lock(out_dir):
        try:
            return _run_tasks(source, configs, out_dir, label=label, device=device, dtype=dtype, base_model=base_model,
                              after_append=after_append, command=command, force=force, identity=fingerprint(*dirs),
                              dirs=dirs)
        except BaseException:
            with contextlib.suppress(OSError):
                (Path(out_dir) / label).rmdir()  # a run that failed before its first result leaves no empty folder
            raise


def _run_tasks(source: str, configs: dict, out_dir, *, label: str, device, dtype, base_model, after_append, command,
               force: bool, identity: dict, dirs) -> dict[str, list[dict]]:
    from longctx import rope_config
    from longctx.evals.run.parallel import current_world
    from longctx.evals.run.results import ResultsWriter, append_run, write_model_json
    from longctx.modeling import load_model
    from longctx.provenance import RunRecord

    record = RunRecord(command)
    world = current_world(device)
    with world.main_first():
        model, tokenizer, model_dir = load_model(source, device=world.device or device, dtype=dtype,
                                                 base_model=base_model, dirs=dirs)
    rope = rope_config.model_rope(model.config)  # parsed once; the tasks get it through their writer
    claimed = rope.claimed_length
    too_long = sorted({n for cfg in configs.values() for n in cfg.lengths if n > claimed})
    warnings = [f"length {n} exceeds the {claimed} tokens the config claims (rope_config.max_length); ran anyway"
                for n in too_long]
    info = {**model_info(model, rope, source, model_dir, label, warnings), "fingerprint": identity}
    if world.main:
        start_results(out_dir, label, info, str(source), force=force)
    results, computed = {}, {}

    def write_model():
        write_model_json(out_dir, label, info)

    try:
        for task, cfg in configs.items():
            # model.json comes with a task's first result line: a task refused before any cell leaves nothing
            writer = ResultsWriter(out_dir, label, task, after_append=after_append, world=world, rope=rope,
                                   before_first_write=write_model if world.main else None)
            before = len(writer.cells())
            computed[task] = 0
            results[task] = get_task(task).run(model, tokenizer, cfg, writer)
            computed[task] = len(writer.cells()) - before
            if world.main:
                print(f"{label} {task}: {len(results[task])} cells in {writer.path}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (longctx.cli): the cells written so far are results too
        computed[task] = len(writer.cells()) - before
        if world.main:
            append_run(out_dir, label, record.finish(tasks=list(configs), cells_computed=computed, interrupted=True,
                                                     world=world.size, model=identity["id"]))
        raise
    if any(computed.values()) and world.main:  # a rerun that found every cell done adds no number, so no record
        append_run(out_dir, label, record.finish(tasks=list(configs), cells_computed=computed, world=world.size,
                                                 model=identity["id"]))
    del model
    gc.collect()
    return results


def load_suite(path) -> tuple[dict, int]:
    """({task: settings}, seed) from a suite YAML, checked."""
    import yaml

    path = Path(path)
    from longctx.checkpoint_files import require_regular_file

    require_regular_file(path, "suite file")
    if path.is_dir():
        raise UsageError(f"suite file {path} is a folder: give a YAML file")
    try:
        suite = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("tasks"), dict) or not suite["tasks"]:
        raise UsageError(f"{path} needs a 'tasks' mapping, e.g. tasks: {{ppl: {{lengths: 2k,4k}}}}")
    unknown = set(suite) - {"tasks", "seed", "description"}
    if unknown:
        raise UsageError(
            f"unknown top-level key {sorted(unknown)[0]!r} in {path}: valid keys: tasks, seed, description"
        )
    for task, settings in suite["tasks"].items():
        get_task(task)
        if not isinstance(settings, dict):
            raise UsageError(f"tasks.{task} in {path} must be a mapping of settings")
    seed = 0 if suite.get("seed") is None else suite["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed in {path} must be a whole number ≥ 0, got {seed!r}")
    return suite["tasks"], seed


def run_suite(path, models: list[str], out_dir, *, labels: list[str] | None = None, seed: int | None = None,
              device: str | None = None, dtype: str | None = None, base_model: str | None = None,
              command: list[str] | None = None, force: bool = False) -> list[Path]:
    """Every task of the suite for every model, then the report when `longctx.evals.report.page` is there; --out
    stays locked from the first model to the report."""
    tasks, suite_seed = load_suite(path)
    seed = suite_seed if seed is None else seed
    configs = {
        task: make_config(task, {"seed": seed, **settings}, where=f" in {path}") for task, settings in tasks.items()
    }
    labels = labels or [default_label(m) for m in models]
    if len(labels) != len(models):
        raise UsageError(f"--labels names {len(labels)} models but --model gives {len(models)}")
    if len(set(labels)) != len(labels):
        raise UsageError(
            f"two models share the label {next(x for x in labels if labels.count(x) > 1)!r}: pass --labels a,b,..."
        )
    for label in labels:
        check_label(label, "--labels")
    from longctx.locks import output_lock

    with output_lock(out_dir):
        return _run_suite(configs, models, labels, out_dir, device=device, dtype=dtype, base_model=base_model,
                          command=command, force=force)


def _run_suite(configs, models, labels, out_dir, *, device, dtype, base_model, command, force) -> list[Path]:
    for source, label in zip(models, labels, strict=True):
        run_tasks(source, configs, out_dir, label=label, device=device, dtype=dtype, base_model=base_model,
                  command=command, force=force)
    from longctx.evals.run.parallel import current_world

    if not current_world(device).main:  # process 0 writes the report
        return []
    try:
        from longctx.evals.report.page import write_report
    except ImportError:
        print(f"results in {out_dir} (no report module installed)", file=sys.stderr)
        return []
    paths = [Path(p) for p in write_report(out_dir)]
    for p in paths:
        print(p)
    return paths


__all__ = ["parse_lengths", "parse_depths", "make_config", "run_tasks", "run_suite", "load_suite"]
