"""Perplexity eval: `longctx.evals.tasks.perplexity.token_nll` vs a naive `model(ids, labels=ids)` pass.

Both score the same tokens (the seeded pydoc stream the eval uses, BOS first) with the same weights, each
in a fresh process: wall time, tokens/s, peak memory above the loaded model, and the perplexity, whose
relative difference should be ≤ 1e-4. The naive pass materialises [T × vocab] logits (and the loss upcasts
them to fp32 and takes a log-softmax of the same size); longctx runs lm_head on 1024 positions at a time.

CPU default: SmolLM2-135M (vocab 49,152) at 2K/4K/8K. GPU default: a random Llama-3-8B shape (vocab 128,256)
in bf16 at 32K and 128K; the naive pass runs only where its logits fit, otherwise its need is computed.
"""

from __future__ import annotations

import math
import time

from bench import common

TARGET_MEMORY_RATIO = 0.5  # longctx peak / naive peak at the longest length
TARGET_REL_DIFF = 1e-4
CPU_LENGTHS = [2048, 4096, 8192]
GPU_LENGTHS = [32768, 131072]


def naive_extra_bytes(length: int, vocab: int, dtype_bytes: int) -> int:
    """Lower bound of what `model(ids, labels=ids)` adds for its loss: logits in the model dtype, their fp32
    copy (when the model is not fp32) and cross-entropy's fp32 log-softmax, each [T × vocab]."""
    n = length * vocab
    return n * dtype_bytes + (n * 4 if dtype_bytes != 4 else 0) + n * 4


def load(model: str, device: str, dtype: str | None, max_length: int):
    """(model, tokenizer or None): 'smollm2' is the real checkpoint, anything else a random shape."""
    if model == "smollm2":
        from longctx.modeling import load_model
        from longctx.sources import smollm2_checkpoint

        loaded, tokenizer, _ = load_model(smollm2_checkpoint(), device=device, dtype=dtype, attn_implementation="sdpa")
        return loaded, tokenizer
    return common.random_llama(
        model, device, dtype or ("bf16" if device.startswith("cuda") else "fp32"), max_length
    ), None


def input_ids(tokenizer, vocab: int, length: int, seed: int):
    """[1, length]: BOS + the eval's seeded pydoc token stream, or random ids for a random-weight model."""
    import torch

    if tokenizer is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (1, length), generator=generator)
    from longctx.evals.tasks.data import load_texts, special_prefix, token_stream

    prefix = special_prefix(tokenizer)
    tokens = prefix + token_stream(tokenizer, load_texts("pydoc"), length - len(prefix), seed)
    if len(tokens) < length:
        raise ValueError(f"pydoc holds only {len(tokens)} tokens, fewer than {length}")
    return torch.tensor([tokens])


def mean_nll(variant: str, model, ids, chunk_tokens: int) -> float:
    import torch

    if variant == "longctx":
        from longctx.evals.tasks.perplexity import token_nll

        return float(token_nll(model, ids, chunk_tokens=chunk_tokens).double().mean())
    with torch.inference_mode():  # the naive baseline: what most eval scripts do
        return float(model(input_ids=ids.to(model.device), labels=ids.to(model.device), use_cache=False).loss)


def measure(variant: str, model: str, length: int, device: str, dtype: str | None = None,
            chunk_tokens: int = 1024, seed: int = 0) -> dict:
    """One variant at one length, in this (fresh) process."""

    loaded, tokenizer = load(model, device, dtype, max(length, 8192))
    return timed_forward(variant, loaded, input_ids(tokenizer, loaded.config.vocab_size, length, seed), device,
                         chunk_tokens)


def timed_forward(variant: str, model, ids, device: str, chunk_tokens: int) -> dict:
    """One perplexity forward of `ids` [1, length] after a short warm-up: its time, peak memory and loss (what
    this bench and bench/gpu.py's perplexity section record)."""
    import torch

    length = ids.shape[1]
    mean_nll(variant, model, ids[:, :128], chunk_tokens)  # warm-up: kernels, allocator, thread pool
    with common.PeakMemory(device) as memory:
        common.synchronize(device)
        start = time.perf_counter()
        nll = mean_nll(variant, model, ids, chunk_tokens)
        common.synchronize(device)
        seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "length": length,
        "seconds": seconds,
        "tokens_per_s": length / seconds,
        "peak_bytes": memory.peak_bytes,
        "resident_before_bytes": memory.start_bytes,
        "memory_method": memory.how,
        "nll": nll,
        "ppl": math.exp(nll),
        "vocab": model.config.vocab_size,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
    }


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # not Linux: assume the naive pass fits, and let it fail visibly if it does not


def run(opts) -> dict:
    device = opts.device
    lengths = opts.sizes or (GPU_LENGTHS if device.startswith("cuda") else CPU_LENGTHS)
    model = opts.shape or ("8b" if device.startswith("cuda") else "smollm2")
    vocab = common.SHAPES[model]["vocab_size"] if model in common.SHAPES else 49152
    dtype_bytes = 2 if device.startswith("cuda") else 4
    rows = []
    for length in lengths:
        row = {"length": length, "naive_extra_estimate_bytes": naive_extra_bytes(length, vocab, dtype_bytes)}
        for variant in ("longctx", "naive"):
            weights = common.parameter_count(model) * dtype_bytes if model in common.SHAPES else 0
            if variant == "naive" and row["naive_extra_estimate_bytes"] + weights > 0.9 * available_bytes(device):
                row[variant] = {
                    "skipped": f"not run: needs ≥ {common.fmt_bytes(row['naive_extra_estimate_bytes'])} for "
                    f"logits + fp32 copy + log-softmax (computed), more than is free"
                }
                continue
            print(f"  ppl {variant} L={length} ...", flush=True)
            row[variant] = common.run_child("bench.bench_ppl:measure", {
                "variant": variant, "model": model, "length": length, "device": device}, timeout=opts.timeout)
        rows.append(compare(row))
    return {"model": model, "device": device, "rows": rows, "growth_exponent": growth(rows), "targets": targets(rows)}


def compare(row: dict) -> dict:
    """A length's row with longctx against the naive loss: perplexity agreement, memory ratio, speedup."""
    a, b = row["longctx"], row["naive"]
    if "ppl" in a and "ppl" in b:
        row["ppl_rel_diff"] = abs(a["ppl"] - b["ppl"]) / b["ppl"]
        row["memory_ratio"] = a["peak_bytes"] / b["peak_bytes"] if b["peak_bytes"] > 0 else None
        row["speedup"] = b["seconds"] / a["seconds"]
    return row


def growth(rows: list[dict]) -> dict:
    """Per variant, the exponent of seconds against length over the lengths it ran."""
    exponents = {}
    for variant in ("longctx", "naive"):
        done = [(r["length"], r[variant]["seconds"]) for r in rows if "seconds" in r[variant]]
        exponents[variant] = common.growth_exponent([n for n, _ in done], [t for _, t in done])
    return exponents


def targets(rows: list[dict]) -> dict:
    """The bench's targets (memory ratio, perplexity agreement) at the longest length where both variants ran."""
    both = [r for r in rows if "memory_ratio" in r]
    if not both:
        return {"met": None, "why": "no length where both variants ran"}
    last = both[-1]
    worst_diff = max(r["ppl_rel_diff"] for r in both)
    memory_ok = last["memory_ratio"] is not None and last["memory_ratio"] <= TARGET_MEMORY_RATIO
    return {"length": last["length"], "memory_ratio": last["memory_ratio"], "memory_target": TARGET_MEMORY_RATIO,
            "memory_met": memory_ok, "worst_ppl_rel_diff": worst_diff, "ppl_target": TARGET_REL_DIFF,
            "ppl_met": worst_diff <= TARGET_REL_DIFF, "met": memory_ok and worst_diff <= TARGET_REL_DIFF}


def markdown(section: dict) -> str:
    method = next((r["longctx"].get("memory_method") for r in section["rows"] if "memory_method" in r["longctx"]), "—")
    out = [
        "## Perplexity eval: longctx `token_nll` vs naive `model(ids, labels=ids)`\n",
        f"Model: `{section['model']}` on `{section['device']}`; one forward per variant per length, each in a fresh "
        "process after a 128-token warm-up. Peak = memory above the loaded model during the pass "
        f"({method}).\n",
    ]
    rows = []
    for r in section["rows"]:
        a, b = r["longctx"], r["naive"]
        rows.append(
            [
                r["length"],
                common.fmt_seconds(a.get("seconds")),
                common.fmt_seconds(b.get("seconds")),
                f"{a['tokens_per_s']:.0f}" if "tokens_per_s" in a else None,
                f"{b['tokens_per_s']:.0f}" if "tokens_per_s" in b else None,
                common.fmt_bytes(a.get("peak_bytes")),
                common.fmt_bytes(b.get("peak_bytes")) if "peak_bytes" in b else (b.get("skipped") or b.get("error")),
                f"{r['memory_ratio']:.3f}" if r.get("memory_ratio") is not None else None,
                f"{a['ppl']:.6f}" if "ppl" in a else a.get("error"),
                f"{b['ppl']:.6f}" if "ppl" in b else None,
                f"{r['ppl_rel_diff']:.1e}" if "ppl_rel_diff" in r else None,
                common.fmt_bytes(r["naive_extra_estimate_bytes"]),
            ]
        )
    out.append(
        common.table(
            [
                "length",
                "longctx time",
                "naive time",
                "longctx tok/s",
                "naive tok/s",
                "longctx peak",
                "naive peak",
                "peak ratio",
                "longctx ppl",
                "naive ppl",
                "rel. Δ ppl",
                "naive logits need (computed)",
            ],
            rows,
        )
    )
    g = section["growth_exponent"]
    out.append("\nGrowth (least-squares fit of log time on log length):\n")
    out.append(common.growth_line("longctx", g.get("longctx"), "length"))
    out.append(common.growth_line("naive", g.get("naive"), "length"))
    t = section["targets"]
    out.append("\nTarget: peak ≤ 0.5× naive at the longest length, same ppl to 1e-4 relative.\n")
    if t.get("met") is None:
        out.append(f"- not evaluated: {t['why']}")
    else:
        out.append(f"- memory at {t['length']}: {t['memory_ratio']:.3f}× naive → "
                   + ("**met**" if t["memory_met"] else f"**missed** by {t['memory_ratio'] / t['memory_target']:.2f}×"))
        out.append(
            f"- worst relative ppl difference {t['worst_ppl_rel_diff']:.1e} → "
            + (
                "**met**"
                if t["ppl_met"]
                else f"**missed** ({t['worst_ppl_rel_diff'] / t['ppl_target']:.1f}× the tolerance)"
            )
        )
    return "\n".join(out) + "\n"
