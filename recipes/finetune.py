"""Fine-tune a rope-patched model at its ORIGINAL context length (LoRA or full), with accelerate.

    # CPU demo: SmolLM2-135M, base 1e5 -> 1e6, LoRA at 256 tokens, a few steps (a couple of minutes on 2 cores)
    accelerate launch recipes/finetune.py --config recipes/configs/smollm2-135m-base1e6.yaml
    python recipes/finetune.py --config recipes/configs/smollm2-135m-base1e6.yaml          # same, no launcher
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/finetune.py --config recipes/configs/smollm2-135m-base1e6.yaml

    # Llama-2-7B, LoRA at 4K with base 1e6, FSDP over the GPUs of one node
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/finetune.py \
        --config recipes/configs/llama2-7b-lora-4k.yaml --model meta-llama/Llama-2-7b-hf --base 1e6

    # Llama-3-8B, full fine-tune at 8K on H100s with DeepSpeed ZeRO-3
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml recipes/finetune.py \
        --config recipes/configs/llama3-8b-full-8k.yaml

    # continue a stopped run exactly where it stopped (same data order, optimizer, RNG)
    accelerate launch recipes/finetune.py --config recipes/configs/smollm2-135m-base1e6.yaml --resume

Every YAML key is also a flag (`--seq-len 512` or `--seq_len 512`); flags override the YAML. `--help` lists
them. The rope patch takes the same options as `longctx patch` (--method, --base, --factor, ...); without
them the model is used as it is (already patched). Output layout: see `longctx/train/export.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from longctx.errors import UsageError


def setup(args):
    """Everything that can reject the request, before any weights load: returns (spec, preflight, docs)."""
    from longctx.checkpoint import check_not_source
    from longctx.corpus import load_documents
    from longctx.train.args import check_args, patch_spec
    from longctx.train.loop import check_resume_args, prepare_out_dir
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
    if args.train.resume:
        from longctx.train.checkpoints import checkpoint_dirs, read_state

        check_resume_args(out, {**args.to_dict(), "seq_len": checked.seq_len})
        if checkpoint_dirs(out):  # format, file sizes, foreign pickles: refused before any weights load
            read_state(checkpoint_dirs(out)[-1])
    return spec, checked, docs


def main(args) -> dict:
    import shutil

    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from longctx.files import read_jsonl, write_text_atomic
    from longctx.train.export import export
    from longctx.train.loop import ARGS_FILE, LOG_FILE, pick_tracker, train
    from longctx.train.model import build_model

    spec, checked, docs = setup(args)
    out = Path(args.train.out)
    on_gpu = torch.cuda.is_available()
    tracker = pick_tracker(args.train.report_to)
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", gradient_accumulation_steps=args.train.grad_accum,
                              log_with=tracker, project_config=ProjectConfiguration(
                                  project_dir=str(out), logging_dir=str(out / "tensorboard")))
    set_seed(args.train.seed)
    built = build_model(args, spec, checked, device=str(accelerator.device))
    if accelerator.is_main_process:
        if args.train.force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not (args.train.resume and (out / ARGS_FILE).is_file()):  # a resumed run keeps the record of its start
            write_text_atomic(out / ARGS_FILE, json.dumps({**args.to_dict(), "seq_len": built.seq_len}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if tracker:
        hparams = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("finetune", config=hparams)
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in built.model.parameters())
    accelerator.print(f"{args.tune.finetune}: {trainable:,} of {total:,} parameters trainable; seq_len {built.seq_len}; "
                      f"{len(docs)} documents; patch {spec.to_dict() if spec else 'none'}")
    summary = train(args, accelerator=accelerator, built=built, docs=docs)
    model = summary.pop("model")
    if summary["final_loss"] is None:  # resumed at --max-steps already: report the logged loss
        lines = read_jsonl(out / LOG_FILE)
        summary["final_loss"] = lines[-1].get("loss") if lines else None
    summary["world"] = accelerator.num_processes
    export(args, spec, built, summary, accelerator, model)
    accelerator.end_training()
    accelerator.print(f"done: {summary['step']} steps, final loss {summary['final_loss']}, saved to {out}")
    return summary


def cli(argv: list[str] | None = None) -> int:
    from longctx.errors import close_progress_bars, environment_error
    from longctx.train.args import parse_args

    try:
        main(parse_args(argv))
    except UsageError as exc:
        close_progress_bars()
        sys.stderr.write(f"finetune: error: {exc}\n")
        return 2
    except OSError as exc:  # a full disk or a read-only folder: one line; the last checkpoint stays resumable
        if environment_error(exc) is None:
            raise
        close_progress_bars()
        sys.stderr.write(f"finetune: error: {environment_error(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("finetune: interrupted; rerun with --resume to continue from the last checkpoint\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
