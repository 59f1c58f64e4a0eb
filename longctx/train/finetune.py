"""Fine-tune a rope-patched model at its original context length: `finetune(args) -> summary` and its CLI.

    python -m longctx.train.finetune --config CONFIG.yaml [--flag value ...]
    accelerate launch -m longctx.train.finetune --config CONFIG.yaml            # recipes/finetune.py is the same

`setup` rejects every bad request before any weights load; `finetune` builds the Accelerator, trains
(`longctx.train.loop`) and exports (`longctx.train.export`); `cli` turns a UsageError or a full disk into
one line and exit code 2. The configs shipped with the package are in `longctx/train/configs/`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from longctx.errors import UsageError, require
from longctx.train.checkpoints import CHECKPOINTS, checkpoint_dirs, read_state

ARGS_FILE = "finetune_args.json"


def prepare_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to mix runs: an existing OUT needs --resume (continue) or --force (start over). --resume of a
    run killed before its first checkpoint starts it again from step 0."""
    if resume:
        require(checkpoint_dirs(out) or (out / ARGS_FILE).is_file(),
                f"--resume: no checkpoint in {out / CHECKPOINTS} and no earlier run in {out} to resume")
        return
    if out.exists() and any(out.iterdir()):
        require(force, f"output directory {out} exists: pass --resume to continue it or --force to start over")
        require(
            (out / ARGS_FILE).is_file(),
            f"--force: {out} is not a finetune output (no {ARGS_FILE}); refusing to delete it",
        )


def check_resume_args(out: Path, current: dict) -> None:
    try:
        saved = json.loads((out / ARGS_FILE).read_text()) if (out / ARGS_FILE).is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"--resume: {out / ARGS_FILE} is not valid JSON: start over with --force") from None
    require(
        isinstance(saved, dict),
        f"--resume: {out / ARGS_FILE} does not hold the run's settings: start over with --force",
    )
    from longctx.train.args import resume_must_match

    for key in resume_must_match():
        if key in saved and saved[key] != current.get(key):
            raise UsageError(
                f"--resume: --{key.replace('_', '-')} was {saved[key]!r} in {out}, now {current.get(key)!r}; "
                "a resumed run must use the same settings"
            )


def pick_tracker(report_to: str) -> str | None:
    import importlib.util

    if report_to == "none":
        return None
    have = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    require(have or report_to == "auto", "--report-to tensorboard needs tensorboard: pip install tensorboard")
    return "tensorboard" if have else None


def setup(args):
    """Everything that can reject the request, before any weights load: returns (spec, preflight, docs)."""
    from longctx.checkpoint import check_not_source
    from longctx.corpus import load_documents
    from longctx.train.args import check_args, patch_spec
    from longctx.train.model import preflight

    check_args(args)
    spec = patch_spec(args.patch)
    out = Path(args.train.out)
    prepare_out_dir(out, resume=args.train.resume, force=args.train.force)
    docs = load_documents(args.data.data, args.data.text_field)
    if args.data.max_docs:
        import random

        order = list(range(len(docs)))
        random.Random(args.train.seed).shuffle(order)
        docs = [docs[i] for i in sorted(order[:args.data.max_docs])]
    checked = preflight(args, spec)
    check_not_source(checked.source_dir, out)  # --force would delete the model being trained
    if args.data.retrieval_mix or args.data.copy_mix:
        from longctx.train.retrieval_mix import mix_for_training

        docs = mix_for_training(docs, checked.tokenizer, checked.seq_len, retrieval=args.data.retrieval_mix,
                                copy=args.data.copy_mix, seed=args.train.seed)
    if args.train.resume:
        check_resume_args(out, {**args.to_dict(), "seq_len": checked.seq_len})
        if checkpoint_dirs(out):  # format, file sizes, foreign pickles: refused before any weights load
            read_state(checkpoint_dirs(out)[-1])
    return spec, checked, docs


def start_run(args, accelerator, seq_len: int) -> None:
    """OUT emptied with --force, created, and the run's settings recorded (a resumed run keeps those of its start)."""
    import shutil

    from longctx.files import write_text_atomic

    out = Path(args.train.out)
    if accelerator.is_main_process:
        if args.train.force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not (args.train.resume and (out / ARGS_FILE).is_file()):
            write_text_atomic(out / ARGS_FILE, json.dumps({**args.to_dict(), "seq_len": seq_len}, indent=2) + "\n")
    accelerator.wait_for_everyone()


# accelerate launch exports ACCELERATE_USE_<ENGINE>=true from the config file; what it must then give.
ASKED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}


def require_asked_engine(accelerator) -> None:
    """Refuse to train when the launch config asks for FSDP or DeepSpeed and accelerate silently fell back to
    plain (or DDP) training: accelerate (≤ 1.15 at least) turns FSDP on only for accelerator devices, never
    for MULTI_CPU, and DeepSpeed never with `use_cpu`, so a CPU run of fsdp.yaml would train unsharded."""
    for variable, engine in ASKED_ENGINES.items():
        asked = os.environ.get(variable, "false").lower() in ("1", "true", "yes")
        given = accelerator.distributed_type.name
        require(not asked or given == engine,
                f"the accelerate config asks for {engine} but accelerate runs "
                f"{ {'NO': 'one plain process', 'MULTI_CPU': 'DDP on CPU'}.get(given, given)} here ({engine} needs "
                f"GPUs/accelerators, not CPU): launch with longctx/train/accelerate/cpu.yaml (or torchrun with "
                f"ACCELERATE_USE_CPU=true for DDP on CPU), or on GPUs")


def finetune(args, *, callbacks=()) -> dict:
    """Patch, train and export as `args` (a FinetuneArgs from `longctx.train.args.parse_args`) says; returns the
    summary (step, final_loss, tokens, world). `callbacks`: see `longctx.train.callbacks`."""
    from longctx.locks import output_lock
    from longctx.provenance import RunRecord

    record = RunRecord(["python", *sys.argv] if sys.argv and sys.argv[0].endswith(".py") else None)
    spec, checked, docs = setup(args)
    out = Path(args.train.out)
    with output_lock(out):  # one writer per OUT for the whole run (a second run exits 2 at once)
        prepare_out_dir(out, resume=args.train.resume, force=args.train.force)  # again, now that OUT is ours
        return _finetune(args, spec, checked, docs, record, callbacks)


def _finetune(args, spec, checked, docs, record, callbacks) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from longctx.files import append_jsonl, read_jsonl
    from longctx.train.export import export
    from longctx.train.loop import LOG_FILE, train
    from longctx.train.model import build_model

    out = Path(args.train.out)
    tracker = pick_tracker(args.train.report_to)
    try:
        accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no",
                                  gradient_accumulation_steps=args.train.grad_accum, log_with=tracker,
                                  project_config=ProjectConfiguration(project_dir=str(out),
                                                                      logging_dir=str(out / "tensorboard")))
    except ImportError as exc:  # the launch config names an engine that is not installed (DeepSpeed)
        raise UsageError(f"accelerate cannot start: {exc}") from None
    require_asked_engine(accelerator)
    set_seed(args.train.seed)
    built = build_model(args, spec, checked, device=str(accelerator.device))
    start_run(args, accelerator, built.seq_len)
    if tracker:
        hparams = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("finetune", config=hparams)
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in built.model.parameters())
    accelerator.print(
        f"{args.tune.finetune}: {trainable:,} of {total:,} parameters trainable; seq_len {built.seq_len}; "
        f"{len(docs)} documents; patch {spec.to_dict() if spec else 'none'}"
    )
    summary = train(args, accelerator=accelerator, built=built, docs=docs, callbacks=callbacks)
    model = summary.pop("model")
    if summary["final_loss"] is None:  # resumed at --max-steps already: report the logged loss
        lines = read_jsonl(out / LOG_FILE)
        summary["final_loss"] = lines[-1].get("loss") if lines else None
    summary["world"] = accelerator.num_processes
    export(args, spec, built, summary, accelerator, model)
    if accelerator.is_main_process:  # OUT/runs.jsonl: command, commit, machine, wall time of each (resumed) run
        append_jsonl(out / "runs.jsonl", record.finish(step=summary["step"], final_loss=summary["final_loss"],
                                                       tokens=summary.get("tokens"), world=summary["world"],
                                                       stopped_by_time=summary.get("stopped_by_time", False)))
    accelerator.end_training()
    accelerator.print(f"done: {summary['step']} steps, final loss {summary['final_loss']}, saved to {out}")
    return summary


def stopped_message(args, signal_name: str, argv: list[str]) -> str:
    """What a signal leaves behind and how to go on, for the line the recipe prints when stopped."""
    import shlex

    if args is None:
        return f"finetune: stopped by {signal_name} before the run started; nothing was written"
    out = Path(args.train.out)
    kept = checkpoint_dirs(out)
    flags = [a for a in argv if a not in ("--resume", "--force")]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "recipes/finetune.py"
    command = shlex.join(["python", script, *flags, "--resume"])
    saved = (
        f"the last checkpoint is {kept[-1]}"
        if kept
        else "no checkpoint was saved yet (--resume starts again at step 0)"
    )
    return f"finetune: stopped by {signal_name}; {saved}; continue with: {command}"


def cli(argv: list[str] | None = None, *, callbacks=()) -> int:
    """Parse the flags (YAML first, flags override) and fine-tune; bad input is one line on stderr, exit 2.
    SIGTERM stops the run like Ctrl-C: one line on its own says what was saved and how to resume."""
    from longctx.errors import run_in_one_line
    from longctx.train.args import parse_args

    parsed = {}

    def work() -> int:
        parsed["args"] = parse_args(argv)
        finetune(parsed["args"], callbacks=callbacks)
        return 0

    asked = sys.argv[1:] if argv is None else list(argv)
    return run_in_one_line("finetune", work, lambda name: stopped_message(parsed.get("args"), name, asked))


if __name__ == "__main__":
    raise SystemExit(cli())
