"""The training loop: accelerate for devices, precision, accumulation and scale-out; atomic, resumable checkpoints.

A checkpoint (`longctx.train.checkpoints`) holds model or LoRA-only weights, optimizer, scheduler, RNG states
of every process and the rows of packed data consumed; it is written atomically and loaded without ever
unpickling code. Data order is a function of the seed, so a resumed run skips the consumed rows and
continues exactly as if it had never stopped. A step whose loss or gradient norm is not finite stops the
run before anything is saved, so the newest checkpoint is always a good one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from longctx.errors import UsageError, require
from longctx.files import append_jsonl, kill_point, read_jsonl, write_text_atomic
from longctx.train.checkpoints import (
    CHECKPOINTS,
    checkpoint_dirs,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)

ARGS_FILE = "finetune_args.json"
LOG_FILE = "train_log.jsonl"
# Settings a resumed run must share with the run it continues (anything else, e.g. --max-steps, may change).
RESUME_MUST_MATCH = ("model", "init", "method", "base", "factor", "original_length", "target_length", "finetune",
                     "lora_r", "lora_alpha", "lora_targets", "trainable_extra", "data", "seq_len", "max_docs",
                     "batch_size", "grad_accum", "seed")


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then cosine/linear decay."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def prepare_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to mix runs: an existing OUT needs --resume (continue) or --force (start over). --resume of a
    run killed before its first checkpoint starts it again from step 0."""
    if resume:
        require(checkpoint_dirs(out) or (out / ARGS_FILE).is_file(),
                f"--resume: no checkpoint in {out / CHECKPOINTS} and no earlier run in {out} to resume")
        return
    if out.exists() and any(out.iterdir()):
        require(force, f"output directory {out} exists: pass --resume to continue it or --force to start over")
        require((out / ARGS_FILE).is_file(), f"--force: {out} is not a finetune output (no {ARGS_FILE}); refusing to delete it")


def check_resume_args(out: Path, current: dict) -> None:
    try:
        saved = json.loads((out / ARGS_FILE).read_text()) if (out / ARGS_FILE).is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"--resume: {out / ARGS_FILE} is not valid JSON: start over with --force") from None
    require(isinstance(saved, dict), f"--resume: {out / ARGS_FILE} does not hold the run's settings: start over with --force")
    for key in RESUME_MUST_MATCH:
        if key in saved and saved[key] != current.get(key):
            raise UsageError(f"--resume: --{key.replace('_', '-')} was {saved[key]!r} in {out}, now {current.get(key)!r}; "
                             "a resumed run must use the same settings")


def lora_only_hooks(accelerator) -> None:
    """Checkpoint only trainable weights for LoRA: a 7B base is 13 GB of frozen weights per save otherwise.
    (FSDP and DeepSpeed save their own sharded states; these hooks then see no weights.)"""

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights, strict=False):
            # names from the model as prepared (DDP adds "module."), the same names its state_dict uses
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            kept = {k: v for k, v in state.items() if k in trainable}
            if len(kept) != len(trainable):
                raise RuntimeError(f"LoRA checkpoint: {len(kept)} of {len(trainable)} trainable tensors found in the state dict")
            state.clear()
            state.update(kept)

    accelerator.register_save_state_pre_hook(keep_trainable)


def pick_tracker(report_to: str) -> str | None:
    import importlib.util

    if report_to == "none":
        return None
    have = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    require(have or report_to == "auto", "--report-to tensorboard needs tensorboard: pip install tensorboard")
    return "tensorboard" if have else None


def train(args, *, accelerator, built, docs) -> dict:
    """Run the optimizer steps from the newest checkpoint (or 0) to --max-steps; returns a summary."""
    import torch
    from tqdm.auto import tqdm

    from longctx.loss import CausalLMLoss, liger_available
    from longctx.train import flops
    from longctx.train.data import IGNORE_INDEX, PackedRows, collate

    t, out = args.train, Path(args.train.out)
    use_liger = t.liger and accelerator.device.type == "cuda" and liger_available()
    wrapper = CausalLMLoss(built.model, chunk=t.loss_chunk, use_liger=use_liger)
    hf = wrapper.hf_model()
    wrapper._no_split_modules = getattr(hf, "_no_split_modules", None)  # FSDP auto-wrap reads it from the root
    if args.tune.finetune == "lora":
        lora_only_hooks(accelerator)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=t.lr, betas=(t.adam_beta1, t.adam_beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup=t.warmup_steps, total=t.max_steps, schedule=t.schedule, min_ratio=t.min_lr_ratio))
    if accelerator.state.deepspeed_plugin is not None:  # no DataLoader is prepared to tell DeepSpeed the batch size
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size
    model, optimizer = accelerator.prepare(wrapper, optimizer)
    # The scheduler is not prepared (accelerate would step it once per process) nor registered for
    # checkpointing (accelerate would pickle it): its state travels as JSON in trainer_state.json.

    step, rows_consumed = 0, 0
    if accelerator.is_main_process:
        remove_partial_checkpoints(out)
    if t.resume and checkpoint_dirs(out):
        last = checkpoint_dirs(out)[-1]
        state = load_checkpoint(accelerator, last, scheduler=scheduler, strict=args.tune.finetune != "lora")
        step, rows_consumed = state["step"], state["rows_consumed"]
        accelerator.print(f"resumed from {last} (step {step})")

    world, rank = accelerator.num_processes, accelerator.process_index
    rows_per_micro = world * t.batch_size
    rows_per_step = rows_per_micro * t.grad_accum
    pose = args.data.pose_target_length
    require(pose is None or pose > built.seq_len,
            f"--pose-target-length {pose} must exceed the training length {built.seq_len}")
    require(pose is None or not str(hf.config._attn_implementation).startswith("flash"),
            "PoSE needs an attention mask, which flash_attention_2 does not take: use --attn-implementation sdpa")
    rows = PackedRows(docs, built.tokenizer, built.seq_len, seed=t.seed, pose_target_length=pose,
                      pose_chunks=args.data.pose_chunks).rows(rows_consumed)
    full = args.tune.finetune == "full"
    flops_token = flops.model_flops_per_token(hf, built.seq_len, full=full)
    device_name = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None
    peak = t.peak_flops or flops.peak_flops(device_name)
    accelerator.print(f"MFU: {'6N' if full else '4N'} + 12·L·H·Q·T = {flops_token:.3e} FLOPs/token; "
                      f"peak {peak or 'unknown'} FLOP/s per device")
    log_path = out / LOG_FILE
    if accelerator.is_main_process and log_path.exists():  # drop entries a resumed run will redo (and a torn line)
        kept = [r for r in read_jsonl(log_path) if isinstance(r.get("step"), int) and r["step"] <= step]
        write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept))

    bar = tqdm(total=t.max_steps, initial=step, desc="finetune", disable=not accelerator.is_local_main_process)
    last_loss, started, window_start, window_tokens = None, time.perf_counter(), time.perf_counter(), 0
    model.train()
    while step < t.max_steps:
        step_rows = [next(rows) for _ in range(rows_per_step)]
        n_labels = sum(int((r["labels"] != IGNORE_INDEX).sum()) for r in step_rows)
        loss_sum = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for micro in range(t.grad_accum):
            mine = step_rows[micro * rows_per_micro + rank * t.batch_size:][:t.batch_size]
            batch = {k: v.to(accelerator.device) for k, v in collate(mine).items()}
            with accelerator.accumulate(model):
                summed = model(**batch)
                # accelerate divides by grad_accum and data parallelism averages over processes: undo both, so the
                # gradient is that of the mean loss over every labelled token of the step.
                accelerator.backward(summed * (t.grad_accum * world) / max(1, n_labels))
                loss_sum += summed.detach()
                if accelerator.sync_gradients:  # max_norm inf: no clipping, but the norm is still logged and checked
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step, rows_consumed = step + 1, rows_consumed + rows_per_step
        window_tokens += rows_per_step * built.seq_len
        last_loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(1, n_labels)
        bad = [f"{name} {value}" for name, value in (("loss", last_loss), ("gradient norm", grad_norm))
               if value is not None and not math.isfinite(float(value))]
        if bad:
            kept = checkpoint_dirs(out)
            raise UsageError(f"the {' and '.join(bad)} at step {step} {'is' if len(bad) == 1 else 'are'} not finite: "
                             f"stopped without saving it; the last good checkpoint is "
                             f"{kept[-1] if kept else 'none (no step was saved yet)'}: lower --lr or check the data")
        bar.update(1)
        if step % t.log_every == 0 or step == t.max_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / elapsed if elapsed > 0 else None
            record = {"step": step, "loss": round(last_loss, 6), "lr": lr,
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "tokens": rows_consumed * built.seq_len, "tokens_per_s": tokens_per_s and round(tokens_per_s, 1),
                      "mfu": flops.mfu(flops_token, tokens_per_s or 0, peak, world), "elapsed_s": round(time.perf_counter() - started, 2)}
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens_per_s or 0:.0f}")
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
            if accelerator.is_main_process:
                append_jsonl(log_path, record)
            window_start, window_tokens = time.perf_counter(), 0
        kill_point("train:step")
        if (t.save_every and step % t.save_every == 0) or step == t.max_steps:
            save_checkpoint(accelerator, out, step, rows_consumed, t.keep_last, scheduler)
    bar.close()
    return {"step": step, "final_loss": last_loss, "tokens": rows_consumed * built.seq_len, "model": model}
