"""The training loop: accelerate for devices, precision, accumulation and scale-out; atomic, resumable checkpoints.

A checkpoint (`longctx.train.checkpoints`) holds model or LoRA-only weights, optimizer, scheduler, RNG states
of every process and the rows of packed data consumed; it is written atomically and loaded without ever
unpickling code. Data order is a function of the seed, so a resumed run skips the consumed rows and
continues exactly as if it had never stopped. A step whose loss or gradient norm is not finite stops the
run before anything is saved, so the newest checkpoint is always a good one. Logging is a callback
(`longctx.train.callbacks.TrainLog`); callers add theirs through `train(..., callbacks=[...])`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from longctx.errors import UsageError, require
from longctx.files import kill_point
from longctx.train.callbacks import TrainLog, TrainState, call
from longctx.train.checkpoints import (
    checkpoint_dirs,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)

LOG_FILE = "train_log.jsonl"


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then cosine/linear decay."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def lora_only_hooks(accelerator) -> None:
    """Checkpoint only trainable weights for LoRA: a 7B base is 13 GB of frozen weights per save otherwise.
    (FSDP and DeepSpeed save their own sharded states; these hooks then see no weights.)"""

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights, strict=False):
            # names from the model as prepared (DDP adds "module."), the same names its state_dict uses
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            kept = {k: v for k, v in state.items() if k in trainable}
            if len(kept) != len(trainable):
                raise RuntimeError(
                    f"LoRA checkpoint: {len(kept)} of {len(trainable)} trainable tensors found in the state dict"
                )
            state.clear()
            state.update(kept)

    accelerator.register_save_state_pre_hook(keep_trainable)


def fused_adamw_ok(params) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: floating point, all on one CPU or CUDA device.

    It updates each tensor in one pass instead of about seven elementwise ops (lerp, mul, addcmul, sqrt, add,
    addcdiv): 3x faster on a 135M model's parameters on CPU, a quarter of a full fine-tune step there. The
    Trainer's default optimizer (`adamw_torch_fused`) is the same kernel.
    """
    devices = {p.device for p in params}
    return (
        len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    )


def optimizer_and_schedule(params, t):
    """AdamW (fused where `fused_adamw_ok`) without weight decay on biases and norms; the lr follows
    `lr_factor` per optimizer step."""
    import torch

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        fused=fused_adamw_ok(params) or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup=t.warmup_steps, total=t.max_steps, schedule=t.schedule, min_ratio=t.min_lr_ratio))
    return optimizer, scheduler


def prepare(args, accelerator, built):
    """The loss wrapper, optimizer and scheduler, handed to accelerate: (model, optimizer, scheduler, hf model)."""
    from longctx.loss import liger_available
    from longctx.train.loss import CausalLMLoss

    t = args.train
    use_liger = t.liger and accelerator.device.type == "cuda" and liger_available()
    wrapper = CausalLMLoss(built.model, chunk=t.loss_chunk, use_liger=use_liger)
    hf = wrapper.hf_model()
    wrapper._no_split_modules = getattr(hf, "_no_split_modules", None)  # FSDP auto-wrap reads it from the root
    if args.tune.finetune == "lora":
        lora_only_hooks(accelerator)
    optimizer, scheduler = optimizer_and_schedule([p for p in wrapper.parameters() if p.requires_grad], t)
    if accelerator.state.deepspeed_plugin is not None:  # no DataLoader is prepared to tell DeepSpeed the batch size
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size
    model, optimizer = accelerator.prepare(wrapper, optimizer)
    # The scheduler is not prepared (accelerate would step it once per process) nor registered for
    # checkpointing (accelerate would pickle it): its state travels as JSON in trainer_state.json.
    return model, optimizer, scheduler, hf


def resume(args, accelerator, scheduler) -> tuple[int, int]:
    """(step, rows consumed) of the newest checkpoint with --resume, else (0, 0); half-written saves are dropped."""
    out = Path(args.train.out)
    if accelerator.is_main_process:
        remove_partial_checkpoints(out)
    if not (args.train.resume and checkpoint_dirs(out)):
        return 0, 0
    last = checkpoint_dirs(out)[-1]
    state = load_checkpoint(accelerator, last, scheduler=scheduler, strict=args.tune.finetune != "lora")
    accelerator.print(f"resumed from {last} (step {state['step']})")
    return state["step"], state["rows_consumed"]


def check_pose(args, built, hf) -> None:
    pose = args.data.pose_target_length
    require(pose is None or pose > built.seq_len,
            f"--pose-target-length {pose} must exceed the training length {built.seq_len}")
    require(pose is None or not str(hf.config._attn_implementation).startswith("flash"),
            "PoSE needs an attention mask, which flash_attention_2 does not take: use --attn-implementation sdpa")


def mfu_inputs(args, accelerator, built, hf) -> tuple[float, float | None]:
    """(model FLOPs per token, peak FLOP/s per device or None), announced once."""
    import torch

    from longctx.train import flops

    full = args.tune.finetune == "full"
    flops_token = flops.model_flops_per_token(hf, built.seq_len, full=full)
    device_name = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None
    peak = args.train.peak_flops or flops.peak_flops(device_name)
    accelerator.print(f"MFU: {'6N' if full else '4N'} + 12·L·H·Q·T = {flops_token:.3e} FLOPs/token; "
                      f"peak {peak or 'unknown'} FLOP/s per device")
    return flops_token, peak


def optimizer_step(model, optimizer, step_rows: list[dict], *, accelerator, t) -> tuple[float, float | None]:
    """One optimizer step over the rows of every process and micro-batch; returns (mean loss per labelled
    token of the whole step, gradient norm)."""
    import torch

    from longctx.train.data import IGNORE_INDEX, collate

    world, rank = accelerator.num_processes, accelerator.process_index
    rows_per_micro = world * t.batch_size
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
    loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(1, n_labels)
    return loss, None if grad_norm is None else float(grad_norm)


def stop_if_not_finite(out: Path, state: TrainState) -> None:
    """Before anything of this step is logged or saved, so the newest checkpoint stays a good one."""
    bad = [f"{name} {value}" for name, value in (("loss", state.loss), ("gradient norm", state.grad_norm))
           if value is not None and not math.isfinite(float(value))]
    if bad:
        kept = checkpoint_dirs(out)
        raise UsageError(f"the {' and '.join(bad)} at step {state.step} {'is' if len(bad) == 1 else 'are'} not finite: "
                         f"stopped without saving it; the last good checkpoint is "
                         f"{kept[-1] if kept else 'none (no step was saved yet)'}: lower --lr or check the data")


def out_of_time(accelerator, deadline: float | None) -> bool:
    """Whether the run's --max-minutes is spent; every process takes the same decision (any one's clock says so)."""
    if deadline is None:
        return False
    import torch

    late = torch.tensor(float(time.monotonic() >= deadline), device=accelerator.device)
    return bool(accelerator.reduce(late, reduction="sum") > 0)


def train(args, *, accelerator, built, docs, callbacks=()) -> dict:
    """Run the optimizer steps from the newest checkpoint (or 0) to --max-steps; returns a summary
    {step, final_loss, tokens, model, optimizer, stopped_by_time}. `callbacks` (see longctx.train.callbacks) run
    after the loop's log. With --max-minutes the loop also stops after the step that spends the budget, saved
    like a last step, so a time-boxed run (a GPU lease) still ends with a checkpoint and an export."""
    from longctx.train.data import PackedRows

    t, out = args.train, Path(args.train.out)
    model, optimizer, scheduler, hf = prepare(args, accelerator, built)
    step, rows_consumed = resume(args, accelerator, scheduler)
    check_pose(args, built, hf)
    rows_per_step = accelerator.num_processes * t.batch_size * t.grad_accum
    rows = PackedRows(
        docs,
        built.tokenizer,
        built.seq_len,
        seed=t.seed,
        pose_target_length=args.data.pose_target_length,
        pose_chunks=args.data.pose_chunks,
    ).rows(rows_consumed)
    flops_token, peak = mfu_inputs(args, accelerator, built, hf)
    state = TrainState(step=step, max_steps=t.max_steps, rows_consumed=rows_consumed, seq_len=built.seq_len)
    hooks = [TrainLog(accelerator, out / LOG_FILE, log_every=t.log_every, start=state, flops_per_token=flops_token,
                      peak_flops=peak), *callbacks]
    deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else None
    stopped_by_time = False
    model.train()
    while state.step < t.max_steps and not stopped_by_time:
        step_rows = [next(rows) for _ in range(rows_per_step)]
        loss, grad_norm = optimizer_step(model, optimizer, step_rows, accelerator=accelerator, t=t)
        state = TrainState(
            step=state.step + 1,
            max_steps=t.max_steps,
            rows_consumed=state.rows_consumed + rows_per_step,
            seq_len=built.seq_len,
            loss=loss,
            lr=scheduler.get_last_lr()[0],
            grad_norm=grad_norm,
        )
        scheduler.step()
        stop_if_not_finite(out, state)
        call(hooks, "on_step", state)
        kill_point("train:step")
        stopped_by_time = state.step < t.max_steps and out_of_time(accelerator, deadline)
        if (t.save_every and state.step % t.save_every == 0) or state.step == t.max_steps or stopped_by_time:
            path = save_checkpoint(accelerator, out, state.step, state.rows_consumed, t.keep_last, scheduler)
            call(hooks, "on_save", state, path)
    if stopped_by_time:
        accelerator.print(f"stopped at step {state.step} of {t.max_steps}: --max-minutes {t.max_minutes:g} spent")
    summary = {
        "step": state.step,
        "final_loss": state.loss,
        "tokens": state.tokens,
        "model": model,
        "optimizer": optimizer,
        "stopped_by_time": stopped_by_time,
    }
    call(hooks, "on_end", summary)
    return summary
