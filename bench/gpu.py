"""One-command GPU timing (`make bench-gpu`): a Llama-2-7B shape with random weights, no download.

    python bench/gpu.py                             # on a CUDA machine -> docs/results/bench-<gpu>/ (bench-h100, ...)
    python bench/gpu.py --dry-run --out /tmp/bench  # the same code path on CPU: tiny shape, short lengths, 2 steps

The model is built from a LlamaConfig of Llama-2-7B's shape (32 layers, hidden 4096, 32 heads of 128, MLP 11008,
vocabulary 32,000; `bench.common.SHAPES["7b"]`) with random init, in bf16, with flash_attention_2 when
flash-attn is installed and PyTorch SDPA otherwise (`longctx.modeling.pick_attn_implementation`; `--attn`).
Speed and memory do not depend on the weights' values. Each measured variant runs in its own process
(`bench.common.run_child`), after an untimed warm-up:

- ppl: one forward of `longctx.evals.tasks.perplexity.token_nll` (decoder once, lm_head and fp32 cross-entropy on
  1,024 positions at a time: `longctx.loss`) at 32K and 128K tokens: tokens/s and peak memory above the
  loaded model; beside it the naive `model(ids, labels=ids)` where its [T x vocab] logits fit (its need is
  computed otherwise), the table of `bench/bench_ppl.py`.
- lora: optimizer steps of `longctx.train.loop.train` (the fine-tune loop: accelerate bf16, LoRA r=8 on
  q/k/v/o, gradient checkpointing, chunked loss) on rows of 8K tokens, each row one document (the bytes of
  Python's pydoc prose, `longctx.byte_tokenizer`: no packing mask, the causal fast path). tokens/s from the
  median measured step; MFU counts 4N + 12·L·d·T FLOPs per token (`longctx.train.flops`: N non-embedding
  parameters, d = heads x head dim; recomputation not counted) against the data-sheet bf16 peak and against
  a bf16 matmul ceiling measured in the same run.

Writes OUT/results.json (every number, the environment of each section, and the run record: command,
commit, machine, wall time) and OUT/README.md (the tables). `--dry-run` swaps in the tiny shape (2 layers,
hidden 64) on CPU at 128/256 tokens and 2 steps at 64: the files and code path of the real run, numbers
that mean nothing (tests/test_gpu_study.py runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_ppl, common  # noqa: E402

REAL = dict(shape="7b", device="cuda", ppl_lengths=[32768, 131072], lora_seq_len=8192, steps=5, warmup=2,
            matmul=("bf16", 8192, 2.0))
DRY = dict(shape="tiny", device="cpu", ppl_lengths=[128, 256], lora_seq_len=64, steps=2, warmup=1,
           matmul=("fp32", 256, 0.2))
TARGET_LORA_MFU = 0.40  # LoRA MFU at 8K on one H100
TARGET_TRAINER_SPEEDUP = 1.3  # longctx's loop against transformers' Trainer, same step


# ---------------------------------------------------------------- measured in fresh processes

def measure_ppl(variant: str, shape: str, length: int, device: str, attn: str, chunk_tokens: int = 1024,
                seed: int = 0) -> dict:
    """One perplexity forward (longctx's chunked loss or the naive one) of a random `shape` at `length`."""
    dtype = "bf16" if device.startswith("cuda") else "fp32"
    model = common.random_llama(shape, device, dtype, max(length, 8192), attn_implementation=attn)
    ids = bench_ppl.input_ids(None, model.config.vocab_size, length, seed)
    return {**bench_ppl.timed_forward(variant, model, ids, device, chunk_tokens), "attn_implementation": attn}


def one_document(folder: Path) -> Path:
    """A .txt file holding all of pydoc's prose as ONE document: packed rows are then plain slices of it."""
    from longctx.corpus import load_documents

    path = folder / "pydoc-one-document.txt"
    path.write_text("\n\n".join(load_documents("pydoc")), encoding="utf-8")
    return path


def measure_lora(shape: str, seq_len: int, steps: int, warmup: int, device: str, attn: str,
                 peak_flops: float | None = None, impl: str = "longctx") -> dict:
    """LoRA optimizer steps on a random `shape`: tokens/s, peak memory, FLOPs/token. `impl` longctx: longctx's
    training loop; trainer: transformers' `Trainer` on the same model, rows and optimizer settings (the baseline)."""
    import torch

    from bench.bench_finetune import finetune_args, run_longctx, run_trainer
    from longctx.byte_tokenizer import byte_tokenizer
    from longctx.loss import liger_available
    from longctx.train import flops
    from longctx.train.model import Built, prepare_for_training, weights_dtype

    with tempfile.TemporaryDirectory(prefix="longctx-bench-gpu-") as tmp:
        args = finetune_args("lora", seq_len, warmup + steps, str(Path(tmp) / "out"), peak_flops, device)
        args.data.data = str(one_document(Path(tmp)))
        dtype = "bf16" if str(weights_dtype(args, device)).endswith("bfloat16") else "fp32"
        model = common.random_llama(shape, device, dtype, max(seq_len, 8192), attn_implementation=attn).train()
        trained = prepare_for_training(model, args, None)
        built = Built(trained, byte_tokenizer(), Path(tmp), {}, seq_len, seq_len)
        hf = trained.get_base_model()
        flops_token = flops.model_flops_per_token(hf, seq_len, full=False)
        result = (run_longctx if impl == "longctx" else run_trainer)(args, built, device, warmup)
    result.update(
        impl=impl,
        shape=shape,
        seq_len=seq_len,
        attn_implementation=attn,
        dtype=dtype,
        flops_per_token=flops_token,
        non_embedding_params=flops.non_embedding_params(hf),
        trainable_params=sum(p.numel() for p in trained.parameters() if p.requires_grad),
        lora_r=args.tune.lora_r,
        lora_targets=args.tune.lora_targets,
        gradient_checkpointing=bool(args.model.gradient_checkpointing),
        liger=bool(args.train.liger) and device.startswith("cuda") and liger_available(),
        torch_threads=torch.get_num_threads(),
    )
    return result


# ---------------------------------------------------------------- the two sections

def ppl_section(opts, plan: dict, attn: str) -> dict:
    """The rows of bench_ppl (longctx and naive per length), so `bench_ppl.markdown` renders them."""
    device, shape = plan["device"], plan["shape"]
    vocab = common.SHAPES[shape]["vocab_size"]
    dtype_bytes = 2 if device.startswith("cuda") else 4
    weights = common.parameter_count(shape) * dtype_bytes
    rows = []
    for length in plan["ppl_lengths"]:
        row = {"length": length, "naive_extra_estimate_bytes": bench_ppl.naive_extra_bytes(length, vocab, dtype_bytes)}
        for variant in ("longctx", "naive"):
            if variant == "naive" and opts.naive_max_length and length > opts.naive_max_length:
                row[variant] = {
                    "skipped": f"not run: --naive-max-length {opts.naive_max_length} (its need is computed)"
                }
                continue
            if variant == "naive" and row["naive_extra_estimate_bytes"] + weights > 0.9 * bench_ppl.available_bytes(
                device
            ):
                row[variant] = {
                    "skipped": f"not run: needs ≥ {common.fmt_bytes(row['naive_extra_estimate_bytes'])} for "
                    "logits + fp32 copy + log-softmax (computed), more than is free"
                }
                continue
            print(f"  ppl {variant} {shape} L={length} ...", flush=True)
            row[variant] = common.run_child(
                "bench.gpu:measure_ppl",
                {"variant": variant, "shape": shape, "length": length, "device": device, "attn": attn},
                timeout=opts.timeout,
            )
        rows.append(bench_ppl.compare(row))
    return {"model": shape, "device": device, "attn_implementation": attn, "rows": rows,
            "growth_exponent": bench_ppl.growth(rows), "targets": bench_ppl.targets(rows)}


def matmul_ceiling(plan: dict) -> dict:
    """`common.matmul_ceiling` of the plan; on CUDA the memory it cached goes back, for the measured process."""
    mm_dtype, mm_n, mm_seconds = plan["matmul"]
    ceiling = common.matmul_ceiling(plan["device"], mm_dtype, n=mm_n, seconds=mm_seconds)
    if plan["device"].startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return ceiling


def lora_section(opts, plan: dict, attn: str) -> dict:
    from longctx.train import flops

    device = plan["device"]
    before = matmul_ceiling(plan)
    runs = {}
    for impl in ("longctx", "trainer"):
        print(f"  lora {impl} {plan['shape']} T={plan['lora_seq_len']} ...", flush=True)
        runs[impl] = common.run_child("bench.gpu:measure_lora", {
            "shape": plan["shape"], "seq_len": plan["lora_seq_len"], "steps": plan["steps"], "warmup": plan["warmup"],
            "device": device, "attn": attn, "peak_flops": before["flops_per_s"], "impl": impl}, timeout=opts.timeout)
    result, trainer = runs["longctx"], runs["trainer"]
    after = matmul_ceiling(plan)
    ceiling = max(before, after, key=lambda c: c["flops_per_s"])  # a loaded moment cannot inflate MFU
    ceiling["before_and_after_flops_per_s"] = [before["flops_per_s"], after["flops_per_s"]]
    datasheet = None
    if device.startswith("cuda"):
        import torch

        datasheet = flops.peak_flops(torch.cuda.get_device_name(0))
    for run in runs.values():
        if run.get("tokens_per_s"):
            run["mfu_vs_measured_peak"] = flops.mfu(run["flops_per_token"], run["tokens_per_s"], ceiling["flops_per_s"])
            run["mfu_vs_datasheet"] = flops.mfu(run["flops_per_token"], run["tokens_per_s"], datasheet)
    speedup = (result["tokens_per_s"] / trainer["tokens_per_s"]
               if result.get("tokens_per_s") and trainer.get("tokens_per_s") else None)
    return {
        "model": plan["shape"],
        "device": device,
        "attn_implementation": attn,
        "seq_len": plan["lora_seq_len"],
        "steps": plan["steps"],
        "warmup": plan["warmup"],
        "matmul_ceiling": ceiling,
        "datasheet_peak_flops": datasheet,
        "result": result,
        "trainer": trainer,
        "speedup_vs_trainer": speedup,
        "target_mfu": TARGET_LORA_MFU,
        "target_speedup": TARGET_TRAINER_SPEEDUP,
    }


# ---------------------------------------------------------------- output

def _pct(x: float | None) -> str | None:
    return f"{100 * x:.1f}%" if x is not None else None


def lora_markdown(section: dict) -> str:
    r, ceiling = section["result"], section["matmul_ceiling"]
    trainer = section.get("trainer") or {"error": "not run (a results file from before the Trainer baseline)"}
    out = [
        f"## LoRA step at {section['seq_len']} tokens: longctx's training loop vs transformers' `Trainer`\n",
        f"Model: random `{section['model']}` on `{section['device']}` ({section['attn_implementation']}), batch 1, "
        f"{section['warmup']} warm-up step(s) then {section['steps']} measured steps (tokens/s from the median step), "
        "each row one document (no packing mask), the same model, rows and optimizer settings for both (the Trainer: "
        "its own loss over full logits). MFU counts 4N + 12·L·d·T FLOPs per token (N = non-embedding "
        "parameters, d = heads × head dim; frozen weights get no weight-gradient matmul; recomputation of "
        f"gradient checkpointing not counted) against the data-sheet bf16 peak and against {ceiling['op']} = "
        f"{common.fmt_flops(ceiling['flops_per_s'])} measured in this run (the higher of before and after).\n",
    ]
    if "error" in r:
        out.append(f"failed: {r['error']}\n")
        return "\n".join(out)
    rows = []
    for name, run in (("longctx", r), ("Trainer", trainer)):
        if "error" in run:
            rows.append([name, section["seq_len"], f"failed: {str(run['error']).splitlines()[-1][:200]}"] + [None] * 7)
            continue
        rows.append([name, section["seq_len"], f"{run['tokens_per_s']:.0f}" if run.get("tokens_per_s") else None,
                     common.fmt_seconds(run.get("seconds_per_step")), common.fmt_bytes(run.get("peak_bytes")),
                     f"{run['flops_per_token']:.3e}",
                     _pct(run.get("mfu_vs_datasheet")) or "— (no data-sheet peak for this device)",
                     _pct(run.get("mfu_vs_measured_peak")),
                     f"{run['losses'][0]:.3f} → {run['losses'][-1]:.3f}" if run.get("losses") else None,
                     run.get("optimizer")])
    out.append(common.table(["loop", "seq len", "tokens/s", "s/step (median)", "peak memory", "FLOPs/token",
                             "MFU vs data sheet", "MFU vs measured peak", "first → last loss", "optimizer"], rows))
    out.append(f"\nN (non-embedding) = {r['non_embedding_params']:,}; trainable {r['trainable_params']:,}: LoRA "
               f"r={r['lora_r']} on {r['lora_targets']}, {r['dtype']} weights, gradient checkpointing "
               f"{'on' if r['gradient_checkpointing'] else 'off'}, loss {'Liger fused' if r['liger'] else 'chunked'} "
               f"(longctx); peak memory above the loaded model ({r.get('memory_method')}).")
    mfu, measured, speedup = r.get("mfu_vs_datasheet"), r.get("mfu_vs_measured_peak"), section.get("speedup_vs_trainer")
    out.append(
        f"\nTargets: LoRA MFU ≥ {100 * section['target_mfu']:.0f}% at 8K → "
        + (
            "not evaluated against a data sheet (not a known GPU)"
            if mfu is None
            else f"**{'met' if mfu >= section['target_mfu'] else 'missed'}** against the data sheet ({100 * mfu:.1f}%)"
        )
        + (f", {100 * measured:.1f}% of the matmul ceiling measured here" if measured is not None else "")
        + f"; ≥ {section.get('target_speedup', TARGET_TRAINER_SPEEDUP):g}× the Trainer's tokens/s → "
        + (
            "not evaluated (a run failed)"
            if speedup is None
            else f"**{'met' if speedup >= section.get('target_speedup', TARGET_TRAINER_SPEEDUP) else 'missed'}** "
            f"({speedup:.2f}×)"
        )
    )
    return "\n".join(out) + "\n"


def render(results: dict) -> str:
    run = results["run"]
    dry = run.get("dry_run")
    parts = [
        "# longctx GPU benchmark: Llama-2-7B shape, random weights\n",
        "Written by `bench/gpu.py` (`make bench-gpu`; see `bench/README.md`). Every number below was measured in "
        "the run whose command, device, versions and wall time close its section; nothing is copied from elsewhere.\n",
    ]
    if dry:
        parts.append("**DRY RUN** (`--dry-run`): the tiny shape on CPU at toy lengths, to exercise the code path. "
                     "These numbers say nothing about any GPU.\n")
    for name, render_section in (("ppl", bench_ppl.markdown), ("lora", lora_markdown)):
        section = results.get(name)
        if section is None:
            continue
        parts.append(
            render_section(section) if "error" not in section else f"## {name}\n\nfailed: {section['error']}\n"
        )
        parts.append("Conditions:\n\n" + common.environment_lines(section["environment"])
                     + f"\n- wall time of this benchmark: {section['bench_seconds']:.0f} s\n")
    machine = run["machine"]
    parts.append(f"## Run\n\n- command: `{run['command']}`\n- commit: {run['commit']}"
                 + (" (with uncommitted changes)" if run.get("dirty") else "")
                 + f"\n- machine: {machine.get('gpu') or machine.get('cpu')}, {machine.get('cores')} CPU cores, "
                 f"torch {machine.get('torch')}\n- started {run['started']}, wall time {run['wall_seconds']:.0f} s\n")
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shape on CPU at toy lengths: the code path and files, no meaningful numbers")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default docs/results/bench-<gpu>, e.g. bench-h100; dry run: a temp folder)",
    )
    parser.add_argument("--only", choices=("ppl", "lora"), action="append", help="run one section (the other is kept)")
    parser.add_argument("--attn", default="auto", choices=("auto", "sdpa", "flash_attention_2", "eager"),
                        help="attention implementation (auto: flash_attention_2 when installed, else sdpa)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per measured process")
    parser.add_argument("--naive-max-length", type=int, default=None,
                        help="run the naive perplexity baseline only up to this length (its memory need is computed "
                             "above it): a time-boxed run (make gpu-lease) skips the slowest measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from longctx.files import write_text_atomic
    from longctx.modeling import pick_attn_implementation
    from longctx.provenance import RunRecord

    opts = parse_args(argv)
    record = RunRecord([Path(sys.executable).name, *sys.argv] if argv is None else ["bench/gpu.py", *argv])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LONGCTX_CACHE", str(common.ROOT / ".cache"))
    plan = dict(DRY if opts.dry_run else REAL)
    if opts.dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # toy sizes: threads only contend (children inherit it)
    else:
        import torch

        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA GPU here (--dry-run runs the same code path on CPU with a tiny shape)",
                  file=sys.stderr)
            return 2
    out = Path(opts.out or (Path(tempfile.gettempdir()) / "longctx-bench-gpu-dry-run" if opts.dry_run else
                            common.ROOT / "docs" / "results" / f"bench-{common.device_slug(plan['device'])}"))
    attn = pick_attn_implementation(plan["device"]) if opts.attn == "auto" else opts.attn
    results = common.load_results(out)
    for name, build in (("ppl", ppl_section), ("lora", lora_section)):
        if opts.only and name not in opts.only:
            continue
        print(f"== {name}", flush=True)
        env = common.environment(plan["device"])
        start = time.perf_counter()
        section = build(opts, plan, attn)
        section["environment"] = env
        section["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        section["bench_seconds"] = time.perf_counter() - start
        results[name] = section
        # after every section, so a run stopped in the next one (a lease's time budget) keeps this one
        results["run"] = record.finish(dry_run=opts.dry_run, plan={k: v for k, v in plan.items() if k != "matmul"},
                                       sections=[k for k in ("ppl", "lora") if k in results])
        common.save_results(out, results)
        write_text_atomic(out / "README.md", render(results))
    print(render(results))
    print(f"wrote {out / 'results.json'} and {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
