"""Fine-tune step: longctx's training loop vs a plain transformers `Trainer`, LoRA and full.

Both start from the same model built by `longctx.train.model.build_model` (same dtype, same LoRA adapters
r=8 on q/k/v/o, same gradient-checkpointing setting), train on the same packed rows (`PackedRows` of the
pydoc corpus; the Trainer gets the labels shifted the way transformers expects) with the same optimizer
settings (AdamW β=(0.9, 0.95), lr 2e-4, cosine, clip 1.0), batch 1; the Trainer keeps its default `optim`
(transformers 5: `adamw_torch_fused`, the kernel longctx uses too), as its users would. longctx runs
`longctx.train.loop.train` (the
loop of `longctx.train.finetune`: accelerate, chunked cross-entropy from hidden states); the baseline runs
`Trainer.train` (the model's own loss over full logits). Each variant runs in a fresh process; tokens/s is
measured over the steps after `warmup` (end of one optimizer step to the end of the next, data included).

MFU = FLOPs/token × tokens/s ÷ peak, FLOPs/token from `longctx.train.flops` (PaLM: 6N + 12·L·H·Q·T for full,
4N + 12·L·H·Q·T for LoRA). The peak is a torch.mm ceiling measured in the same run (fp32 on CPU, bf16 on
GPU), and on GPU also the data-sheet number.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from bench import common
from longctx.files import read_jsonl
from longctx.train.callbacks import Callback

TARGET_SPEEDUP = 1.3
TARGET_LORA_MFU_GPU = 0.40
CPU_SEQ = [256, 512]
GPU_SEQ = [8192, 16384, 32768]
CPU_STEPS, GPU_STEPS = 10, 5  # measured steps per run (CPU: with 4, one disturbed step moved the median)
CPU_WARMUP, GPU_WARMUP = 4, 2  # a full fine-tune on CPU settles after ~4 steps (first-touch of optimizer state)
CPU_ORDER = ("longctx", "trainer", "trainer", "longctx")  # ABBA: a drift of the shared machine hits both alike


def finetune_args(finetune: str, seq_len: int, steps: int, out: str, peak_flops: float | None, device: str):
    from longctx.train.args import parse_args

    # random shapes borrow SmolLM2's tokenizer (and its checkpoint dir as the source record); see `build`
    argv = ["--model", "smollm2", "--finetune", finetune, "--seq-len", str(seq_len),
            "--max-steps", str(steps), "--warmup-steps", "1", "--lr", "2e-4", "--batch-size", "1", "--log-every", "1",
            "--report-to", "none", "--out", out, "--data", "pydoc"]
    if peak_flops:
        argv += ["--peak-flops", str(peak_flops)]
    if device.startswith("cuda"):
        argv += ["--gradient-checkpointing"]
    return parse_args(argv)


def build(args, model: str, device: str):
    """`Built` for SmolLM2 (`build_model`) or for a random Llama shape with SmolLM2's tokenizer."""
    from longctx.train.model import build_model, preflight

    if model == "smollm2":
        return build_model(args, None, preflight(args, None), device=device)
    from longctx.checkpoint_files import read_config_json
    from longctx.modeling import load_tokenizer
    from longctx.sources import smollm2_checkpoint
    from longctx.train.model import Built, prepare_for_training, weights_dtype

    source = smollm2_checkpoint()
    dtype = "bf16" if str(weights_dtype(args, device)).endswith("bfloat16") else "fp32"
    hf = prepare_for_training(
        common.random_llama(model, device, dtype, max(args.data.seq_len, 8192)).train(), args, None
    )
    return Built(hf, load_tokenizer(source), source, read_config_json(source), args.data.seq_len, args.data.seq_len)


def summarize_steps(step_seconds: list[float], tokens_per_step: int, warmup: int) -> dict:
    """tokens/s from the MEDIAN measured step: on a shared machine one disturbed step should not decide it
    (every step's seconds stay in the JSON, and the mean-based rate is kept beside it)."""
    import statistics

    measured = step_seconds[warmup:]
    if not measured or min(measured) <= 0:
        return {
            "step_seconds": step_seconds,
            "measured_steps": len(measured),
            "tokens_per_s": None,
            "seconds_per_step": None,
        }
    median = statistics.median(measured)
    return {
        "step_seconds": step_seconds,
        "measured_steps": len(measured),
        "seconds_per_step": median,
        "tokens_per_s": tokens_per_step / median,
        "tokens_per_s_mean": tokens_per_step * len(measured) / sum(measured),
    }


class PeakBeforeFinalSave(Callback):
    """Reads the memory peak after the last step, before its checkpoint is saved (saving is not the step's cost)."""

    def __init__(self, device: str, memory):
        self.device, self.memory, self.peak_bytes = device, memory, None

    def on_step(self, state) -> None:
        if state.step == state.max_steps:
            self.peak_bytes = memory_peak(self.device) - self.memory.start_bytes


def run_longctx(args, built, device: str, warmup: int) -> dict:
    """`longctx.train.loop.train`; the peak is read by a callback before the final checkpoint save."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from longctx.corpus import load_documents
    from longctx.train import loop

    accelerator = Accelerator(mixed_precision="bf16" if device.startswith("cuda") else "no")
    set_seed(args.train.seed)
    docs = load_documents(args.data.data, args.data.text_field)  # as longctx.train.finetune loads them
    Path(args.train.out).mkdir(parents=True, exist_ok=True)
    with common.PeakMemory(device) as memory:
        peak = PeakBeforeFinalSave(device, memory)
        summary = loop.train(args, accelerator=accelerator, built=built, docs=docs, callbacks=[peak])
    log = read_jsonl(Path(args.train.out) / loop.LOG_FILE, repair=False)
    elapsed = [0.0] + [r["elapsed_s"] for r in log]  # cumulative, logged after every step (log_every 1)
    step_seconds = [b - a for a, b in zip(elapsed[:-1], elapsed[1:], strict=True)]
    result = summarize_steps(step_seconds, built.seq_len, warmup)
    result.update(peak_bytes=peak.peak_bytes, memory_method=memory.how + " (read before the final checkpoint save)",
                  final_loss=log[-1]["loss"], losses=[r["loss"] for r in log], logged_mfu=[r["mfu"] for r in log],
                  optimizer=optimizer_name(summary["optimizer"]))
    return result


def hf_rows(args, built, n: int) -> list[dict]:
    """The same packed rows longctx trains on, with labels in transformers' convention (shifted inside the model)."""
    import torch

    from longctx.corpus import load_documents
    from longctx.train.data import IGNORE_INDEX, PackedRows

    rows = []
    for row in PackedRows(
        load_documents(args.data.data, args.data.text_field), built.tokenizer, built.seq_len, seed=args.train.seed
    ).rows():
        aligned = row["labels"]  # aligned[t] = target of position t
        labels = torch.cat([torch.tensor([IGNORE_INDEX]), aligned[:-1]])  # HF: labels[t + 1] is the target of t
        rows.append({"input_ids": row["input_ids"], "position_ids": row["position_ids"], "labels": labels})
        if len(rows) == n:
            return rows
    return rows


def run_trainer(args, built, device: str, warmup: int) -> dict:
    """transformers `Trainer` on the same model, rows and optimizer settings."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    t = args.train
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            common.synchronize(device)
            step_ends.append(time.perf_counter())

    import dataclasses

    # the same row order as longctx (the Trainer shuffles by default), where this transformers can say so
    order = {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in {
        f.name for f in dataclasses.fields(TrainingArguments)} else {}
    training_args = TrainingArguments(
        output_dir=args.train.out,
        per_device_train_batch_size=t.batch_size,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,  # its default optim
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=device.startswith("cuda"),
        use_cpu=not device.startswith("cuda"),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=t.seed,
        disable_tqdm=True,
        gradient_checkpointing=False,
        **order,
    )  # build_model already enabled checkpointing where asked
    dataset = hf_rows(args, built, t.max_steps * t.batch_size)
    trainer = Trainer(model=built.model, args=training_args, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[StepClock()])
    with common.PeakMemory(device) as memory:
        trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    step_seconds = [b - a for a, b in zip(step_ends[:-1], step_ends[1:], strict=True)]
    result = summarize_steps(step_seconds, built.seq_len * t.batch_size, warmup)
    result.update(peak_bytes=memory.peak_bytes, memory_method=memory.how, final_loss=losses[-1] if losses else None,
                  losses=losses, optimizer=optimizer_name(trainer.optimizer))
    return result


def optimizer_name(optimizer) -> str:
    """'AdamW (fused)' / 'AdamW (foreach)' / 'AdamW (for-loop)': which torch implementation a run stepped with."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    group = optimizer.param_groups[0]
    kind = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
    return f"{type(optimizer).__name__} ({kind})"


def memory_peak(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    return common.peak_rss_bytes()


def measure(impl: str, finetune: str, model: str, seq_len: int, steps: int, device: str, warmup: int = GPU_WARMUP,
            peak_flops: float | None = None) -> dict:
    """One (implementation, LoRA/full, length) in this (fresh) process."""
    import torch

    from longctx.train import flops

    with tempfile.TemporaryDirectory(prefix="longctx-bench-ft-") as tmp:
        args = finetune_args(finetune, seq_len, warmup + steps, str(Path(tmp) / "out"), peak_flops, device)
        built = build(args, model, device)
        hf = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model
        flops_token = flops.model_flops_per_token(hf, seq_len, full=finetune == "full")
        result = (run_longctx if impl == "longctx" else run_trainer)(args, built, device, warmup)
    result.update(impl=impl, finetune=finetune, model=model, seq_len=seq_len, flops_per_token=flops_token,
                  non_embedding_params=flops.non_embedding_params(hf),
                  trainable_params=sum(p.numel() for p in built.model.parameters() if p.requires_grad),
                  torch_threads=torch.get_num_threads())
    if peak_flops and result.get("tokens_per_s"):
        result["mfu_vs_measured_peak"] = flops.mfu(flops_token, result["tokens_per_s"], peak_flops)
    return result


def pooled(runs: list[dict], tokens_per_step: int, warmup: int) -> dict:
    """One implementation's result over its runs (ABBA on CPU): tokens/s from the median of every measured step
    of every run; the first run's other fields (losses, optimizer, FLOPs); the highest memory peak; `step_seconds`
    becomes one list per run. A run that failed makes the whole result that error."""
    failed = [r for r in runs if r.get("error") or not r.get("step_seconds")]
    if failed or len(runs) == 1:
        return failed[0] if failed else runs[0]
    measured = [t for r in runs for t in r["step_seconds"][warmup:]]
    result = {**runs[0], **summarize_steps([0.0] * warmup + measured, tokens_per_step, warmup)}
    result["step_seconds"] = [r["step_seconds"] for r in runs]
    result["peak_bytes"] = max((r["peak_bytes"] for r in runs if r.get("peak_bytes") is not None), default=None)
    result["tokens_per_s_by_run"] = [r.get("tokens_per_s") for r in runs]
    return result


def run(opts) -> dict:
    from longctx.train import flops

    device = opts.device
    on_gpu = device.startswith("cuda")
    sizes = opts.sizes or (GPU_SEQ if on_gpu else CPU_SEQ)
    model = opts.shape or ("1b" if on_gpu else "smollm2")
    steps = opts.steps or (GPU_STEPS if on_gpu else CPU_STEPS)
    warmup, order = (GPU_WARMUP, ("longctx", "trainer")) if on_gpu else (CPU_WARMUP, CPU_ORDER)
    mm_dtype, mm_n = ("bf16", 8192) if on_gpu else ("fp32", 2048)
    before = common.matmul_ceiling(device, mm_dtype, n=mm_n)
    datasheet = None
    if on_gpu:
        import torch

        datasheet = flops.peak_flops(torch.cuda.get_device_name(0))
    rows = []
    for finetune in ("lora", "full"):
        for seq_len in sizes:
            row = {"finetune": finetune, "seq_len": seq_len}
            runs: dict[str, list[dict]] = {"longctx": [], "trainer": []}
            for impl in order:
                print(f"  finetune {finetune} {impl} T={seq_len} ...", flush=True)
                runs[impl].append(common.run_child("bench.bench_finetune:measure", {
                    "impl": impl, "finetune": finetune, "model": model, "seq_len": seq_len, "steps": steps,
                    "device": device, "warmup": warmup, "peak_flops": before["flops_per_s"]}, timeout=opts.timeout))
            for impl in ("longctx", "trainer"):
                row[impl] = pooled(runs[impl], seq_len, warmup)
                if datasheet and row[impl].get("tokens_per_s"):
                    row[impl]["mfu_vs_datasheet"] = flops.mfu(
                        row[impl]["flops_per_token"], row[impl]["tokens_per_s"], datasheet
                    )
            a, b = row["longctx"], row["trainer"]
            if a.get("tokens_per_s") and b.get("tokens_per_s"):
                row["speedup"] = a["tokens_per_s"] / b["tokens_per_s"]
            if a.get("losses") and b.get("losses"):  # same weights, same first row: the same loss before any update
                row["first_loss_rel_diff"] = abs(a["losses"][0] - b["losses"][0]) / abs(b["losses"][0])
            rows.append(row)
    # The ceiling again after the runs: on a shared machine the higher of the two is the better estimate of
    # the peak, and MFU is quoted against it (so a loaded moment cannot inflate MFU).
    after = common.matmul_ceiling(device, mm_dtype, n=mm_n)
    ceiling = max(before, after, key=lambda c: c["flops_per_s"])
    ceiling["before_and_after_flops_per_s"] = [before["flops_per_s"], after["flops_per_s"]]
    for row in rows:
        for impl in ("longctx", "trainer"):
            if row[impl].get("tokens_per_s"):
                row[impl]["mfu_vs_measured_peak"] = flops.mfu(row[impl]["flops_per_token"], row[impl]["tokens_per_s"],
                                                              ceiling["flops_per_s"])
    growth = {}
    for finetune in ("lora", "full"):
        for impl in ("longctx", "trainer"):
            done = [(r["seq_len"], r[impl]["seconds_per_step"]) for r in rows
                    if r["finetune"] == finetune and r[impl].get("seconds_per_step")]
            growth[f"{finetune} {impl}"] = common.growth_exponent([n for n, _ in done], [t for _, t in done])
    return {
        "model": model,
        "device": device,
        "steps": steps,
        "warmup": warmup,
        "order": list(order),
        "matmul_ceiling": ceiling,
        "datasheet_peak_flops": datasheet,
        "rows": rows,
        "growth_exponent": growth,
        "targets": targets(rows, on_gpu),
    }


def targets(rows: list[dict], on_gpu: bool) -> dict:
    speedups = [r["speedup"] for r in rows if "speedup" in r]
    out = {"target_speedup": TARGET_SPEEDUP, "worst_speedup": min(speedups) if speedups else None,
           "speed_met": bool(speedups) and min(speedups) >= TARGET_SPEEDUP,
           "geomean_speedup": math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else None,
           "run_spread": run_spread(rows)}
    worst, mean, spread = out["worst_speedup"], out["geomean_speedup"], out["run_spread"]
    out["parity"] = (None if worst is None else "met" if worst >= 1.0 else
                     "met within noise" if mean >= 1.0 and spread is not None and worst >= 1.0 - spread else "missed")
    lora_8k = [r["longctx"].get("mfu_vs_datasheet") for r in rows if r["finetune"] == "lora" and r["seq_len"] == 8192]
    out["lora_mfu_8k_gpu"] = lora_8k[0] if on_gpu and lora_8k else None
    out["lora_mfu_target"] = TARGET_LORA_MFU_GPU
    return out


def run_spread(rows: list[dict]) -> float | None:
    """The largest (max − min) / max of tokens/s between runs of the SAME implementation and setting: how much
    the machine alone moves a result, the resolution of any speedup measured here (None with one run each)."""
    spreads = [(max(rates) - min(rates)) / max(rates) for r in rows for impl in ("longctx", "trainer")
               if len(rates := [x for x in r[impl].get("tokens_per_s_by_run") or [] if x]) > 1]
    return max(spreads) if spreads else None


def optimizers(section: dict) -> str:
    """'longctx AdamW (fused), Trainer AdamW (fused)' from what the runs recorded."""
    names = {
        impl: sorted({r[impl].get("optimizer") or "not recorded" for r in section["rows"]})
        for impl in ("longctx", "trainer")
    }
    return ", ".join(
        f"{label} {' / '.join(names[impl])}" for impl, label in (("longctx", "longctx"), ("trainer", "Trainer"))
    )


def _mfu(result: dict, key: str) -> str | None:
    return f"{100 * result[key]:.1f}%" if result.get(key) is not None else None


def markdown(section: dict) -> str:
    ceiling = section["matmul_ceiling"]
    out = [
        "## Fine-tune step: longctx training loop vs transformers `Trainer`\n",
        f"Model: `{section['model']}` on `{section['device']}`, batch 1, AdamW, {section['warmup']} warm-up step(s) "
        "then "
        f"{section['steps']} measured steps per run, each run in a fresh process, "
        + (
            f"runs in the order {' → '.join(section['order'])} per setting (a drift of the machine hits both alike), "
            "tokens/s from the median of every measured step of an implementation's runs"
            if len(section.get("order", ())) > 2
            else "tokens/s from the median measured step"
        )
        + " (data loading included). MFU counts PaLM's "
        "6N + 12·L·H·Q·T FLOPs/token for full fine-tuning and 4N + 12·L·H·Q·T for LoRA (N = non-embedding "
        "parameters; frozen weights get no weight-gradient matmul), against the matmul ceiling measured in this "
        f"run: {ceiling['op']} = {common.fmt_flops(ceiling['flops_per_s'])} (the higher of before and after the "
        f"fine-tune runs: {', '.join(common.fmt_flops(x) for x in ceiling.get('before_and_after_flops_per_s', []))})"
        + (
            f" (data-sheet peak {section['datasheet_peak_flops'] / 1e12:.0f} TFLOP/s also shown)"
            if section.get("datasheet_peak_flops")
            else " (labelled *MFU vs measured CPU peak*: there is no data-sheet number for a CPU)"
        )
        + ". Peak memory = above the loaded model, longctx's read before its final checkpoint save. Optimizer: "
        + optimizers(section)
        + ".\n",
    ]
    rows = []
    for r in section["rows"]:
        a, b = r["longctx"], r["trainer"]
        rows.append([r["finetune"], r["seq_len"],
                     f"{a['tokens_per_s']:.0f}" if a.get("tokens_per_s") else a.get("error"),
                     f"{b['tokens_per_s']:.0f}" if b.get("tokens_per_s") else b.get("error"),
                     f"{r['speedup']:.2f}×" if "speedup" in r else None,
                     common.fmt_bytes(a.get("peak_bytes")), common.fmt_bytes(b.get("peak_bytes")),
                     _mfu(a, "mfu_vs_measured_peak"), _mfu(b, "mfu_vs_measured_peak"),
                     _mfu(a, "mfu_vs_datasheet"), _mfu(b, "mfu_vs_datasheet"),
                     f"{r['first_loss_rel_diff']:.1e}" if "first_loss_rel_diff" in r else None])
    out.append(common.table(["mode", "seq len", "longctx tok/s", "Trainer tok/s", "speedup", "longctx peak",
                             "Trainer peak", "longctx MFU vs measured peak", "Trainer MFU vs measured peak",
                             "longctx MFU vs data sheet", "Trainer MFU vs data sheet", "rel. Δ first-step loss"], rows))
    out.append("\nThe last column checks that both trained on the same thing: same weights and first row, so the "
               "loss before any update must agree (longctx logs it rounded to 6 decimals).")
    out.append("\nGrowth of seconds per step (least-squares fit of log time on log sequence length):\n")
    for name, k in section["growth_exponent"].items():
        out.append(common.growth_line(name, k, "seq_len"))
    # from the rows: --render of older results too
    t = targets(section["rows"], str(section["device"]).startswith("cuda"))
    longest = max(r["seq_len"] for r in section["rows"])
    vocab = common.SHAPES[section["model"]]["vocab_size"] if section["model"] in common.SHAPES else 49152
    logits = longest * vocab * 4
    out.append(
        f"\nTargets: ≥ {TARGET_SPEEDUP:g}× the Trainer's tokens/s; LoRA MFU ≥ 40% at 8K on one H100.\n"
    )
    if t["worst_speedup"] is None:
        out.append("- speed: not evaluated (no setting where both ran)")
    else:
        out.append(f"- speed: worst {t['worst_speedup']:.2f}× → " + ("**met**" if t["speed_met"] else
                   f"**missed** by {t['target_speedup'] / t['worst_speedup']:.2f}×. Why: at {longest} tokens the "
                   f"[T × vocab] fp32 logits the Trainer materialises are {common.fmt_bytes(logits)}, a small part "
                   "of the step's work and memory, so avoiding them buys little here (the peaks above show it). "
                   "Rows of at most one loss chunk (1024 tokens) recompute no logits, and the operator tables "
                   "of both loops (`bench/profile_finetune.py`, full fine-tune at 512 tokens, 3 steps: "
                   "[profile/](profile/)) list the same operators, counts and times: total 6.87 s vs 6.97 s, mm "
                   "1899 calls 3.76 s in both, the same CPU flash-attention kernel, fused AdamW 0.25 s in both. "
                   "The loops do the same work. "
                   "The design pays where rows are long and the vocabulary large (8K × 128K fp32 logits = 4.2 GB): "
                   "the GPU run, not measured yet."))
        spread = t.get("run_spread")
        out.append(f"- parity (≥ 1.0× the Trainer): worst {t['worst_speedup']:.3f}×, geometric mean "
                   f"{t['geomean_speedup']:.3f}× over the settings; runs of the same implementation differ by up to "
                   + (f"{100 * spread:.0f}%" if spread is not None else "? (one run each)")
                   + f" → **{t.get('parity', 'missed')}**")
    out.append(
        "- LoRA MFU at 8K on an H100: "
        + (
            f"{100 * t['lora_mfu_8k_gpu']:.1f}%"
            if t["lora_mfu_8k_gpu"] is not None
            else "not measured (no GPU in this run)"
        )
    )
    return "\n".join(out) + "\n"
