"""Hooks into the training loop, so logging, benchmarks and tests add behaviour instead of patching the loop.

A callback is any object with some of `on_step(state)` (after each optimizer step, before its checkpoint),
`on_save(state, path)` (after a checkpoint is published) and `on_end(summary)` (after the last step); the
loop calls them in order, its own `TrainLog` first. An exception raised by a callback stops the run the way
a crash would: the newest published checkpoint stays resumable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainState:
    """Where the run is after an optimizer step; what callbacks see (they must not change it)."""

    step: int
    max_steps: int
    rows_consumed: int
    seq_len: int
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None

    @property
    def tokens(self) -> int:
        return self.rows_consumed * self.seq_len


class Callback:
    """No-op base: subclass and override what you need (plain objects with these methods work too)."""

    def on_step(self, state: TrainState) -> None:
        pass

    def on_save(self, state: TrainState, path: Path) -> None:
        pass

    def on_end(self, summary: dict) -> None:
        pass


def call(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


class TrainLog(Callback):
    """Every --log-every steps: a line of OUT/train_log.jsonl, the tracker (accelerate's `log`), the progress
    bar's postfix. tokens/s and MFU are measured over the steps since the previous line."""

    def __init__(self, accelerator, path: Path, *, log_every: int, start: TrainState, flops_per_token: float,
                 peak_flops: float | None):
        from tqdm.auto import tqdm

        from longctx.files import read_jsonl, write_text_atomic

        self.accelerator, self.path, self.log_every, self.max_steps = accelerator, path, log_every, start.max_steps
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        if accelerator.is_main_process and path.exists():  # drop lines a resumed run will redo (and a torn one)
            kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= start.step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.bar = tqdm(
            total=start.max_steps, initial=start.step, desc="finetune", disable=not accelerator.is_local_main_process
        )
        self.started = self.window_start = time.perf_counter()
        self.window_rows = start.rows_consumed

    def on_step(self, state: TrainState) -> None:
        from longctx.files import append_jsonl
        from longctx.train import flops

        self.bar.update(1)
        if not (state.step % self.log_every == 0 or state.step == self.max_steps):
            return
        now = time.perf_counter()
        elapsed = now - self.window_start
        tokens_per_s = (state.rows_consumed - self.window_rows) * state.seq_len / elapsed if elapsed > 0 else None
        record = {
            "step": state.step,
            "loss": round(state.loss, 6),
            "lr": state.lr,
            "grad_norm": state.grad_norm,
            "tokens": state.tokens,
            "tokens_per_s": tokens_per_s and round(tokens_per_s, 1),
            "mfu": flops.mfu(self.flops_per_token, tokens_per_s or 0, self.peak_flops, self.accelerator.num_processes),
            "elapsed_s": round(now - self.started, 2),
        }
        self.bar.set_postfix(loss=f"{state.loss:.4f}", tok_s=f"{tokens_per_s or 0:.0f}")
        self.accelerator.log(
            {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=state.step
        )
        if self.accelerator.is_main_process:
            append_jsonl(self.path, record)
        self.window_start, self.window_rows = time.perf_counter(), state.rows_consumed

    def on_end(self, summary: dict) -> None:
        self.bar.close()
