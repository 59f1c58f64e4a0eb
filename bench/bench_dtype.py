"""bf16 against fp32 (the baseline) on one device, CPU by default: the speed of the eval's perplexity forward, its
perplexity, and whether bf16 grades retrieval the same as fp32 on a checked sample of passkey trials.

Why: a CPU with native bf16 (x86 `avx512_bf16` or AMX, ARM `bf16`) may run SmolLM2 faster in bf16 than in fp32.
Where bf16 grades retrieval the same as fp32 on a checked sample, CPU studies can use it; this section measures
both halves of that condition in the same run.

Each dtype runs in its own process (`common.run_child`) that loads the model as `longctx eval --dtype` does
(`longctx.modeling.load_model(source, device=..., dtype=...)`; SmolLM2-135M-Instruct, `smollm2_checkpoint`), then:

- perplexity: the same single-document windows in both dtypes (`perplexity.plan_windows`, seed 0, one window per
  length; `../shared/data/books` when that folder is present, else the embedded pydoc text), each scored by the
  eval's own path (`perplexity.score_windows` → `token_nll`: the decoder once, lm_head + fp32 cross-entropy on
  1024 positions at a time). One untimed forward of the shortest window first (kernels, allocator, threads), then
  `REPEATS` timed forwards per length: the median is the seconds per forward.
- retrieval: the passkey task's own `run` (forced grading: its content grade `correct` and the token-exact
  `correct_strict`) on lengths × depths × trials from fixed seeds, so both dtypes see the same prompts; each
  trial's grades are set side by side (`compare_grades`) and every trial whose grades differ is listed with both
  answers.

Reported: seconds per forward, tokens/s, perplexity in each dtype, the relative perplexity difference
(bf16 − fp32) / fp32, the speed ratio (bf16 tokens/s ÷ fp32 tokens/s: above 1, bf16 is faster), the grades side by
side, and one verdict line built only from those numbers. The CPU's bf16 flags (/proc/cpuinfo) and torch's view of
them are recorded: without native bf16 the matmuls are emulated and the ratio can be below 1.
"""

from __future__ import annotations

import math
import statistics
import tempfile

from bench import bench_ruler, common

DTYPES = ("fp32", "bf16")  # the baseline first
CPU_LENGTHS = [2048, 4096]
PASSKEY_LENGTHS = [2048, 3072, 4096]
PASSKEY_DEPTHS = [0.25, 0.75]
SAMPLE_TRIALS = 6  # the checked sample holds at least this many passkey trials
REPEATS = 3  # timed forwards per length (median), after one untimed warm-up forward
SEED = 0
BOOKS = bench_ruler.BOOKS  # relative to the checkout, as results.json records it
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "bf16")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, Intel AMX, ARM BF16


# ---------------------------------------------------------------- what this machine offers

def cpu_bf16_support(cpuinfo: str | None = None) -> dict:
    """Which bf16-relevant flags this CPU reports (/proc/cpuinfo `flags`, ARM `Features`), whether any of them is
    native bf16, and torch's own view (capability, oneDNN bf16, AVX-512 BF16, AMX) where this torch says."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    line = next((line for line in cpuinfo.splitlines() if line.split(":")[0].strip() in ("flags", "Features")), None)
    present = set(line.split(":", 1)[1].split()) if line else None
    flags = None if present is None else {flag: flag in present for flag in CPU_FLAGS}
    out = {"source": "/proc/cpuinfo", "flags": flags,
           "native_bf16": None if flags is None else any(flags[f] for f in NATIVE_BF16)}
    import torch

    probes = {"torch_capability": lambda: torch.backends.cpu.get_cpu_capability(),
              "torch_mkldnn_bf16": lambda: bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "torch_avx512_bf16": lambda: bool(torch.cpu._is_avx512_bf16_supported()),
              "torch_amx_tile": lambda: bool(torch.cpu._is_amx_tile_supported())}
    for name, probe in probes.items():
        try:
            out[name] = probe()
        except (AttributeError, RuntimeError):  # private probes: absent from some torch builds
            out[name] = None
    return out


def ppl_data() -> str:
    """The perplexity text: the books folder (named relative to the checkout) when present, else pydoc."""
    return BOOKS if (common.ROOT / BOOKS).is_dir() else "pydoc"


def plan(sizes: list[int] | None) -> dict:
    """Perplexity lengths and the passkey sample. With --sizes the passkey runs at those lengths too, with enough
    trials per (length, depth) for at least SAMPLE_TRIALS trials."""
    if not sizes:
        return {"lengths": list(CPU_LENGTHS),
                "passkey": {"lengths": list(PASSKEY_LENGTHS), "depths": list(PASSKEY_DEPTHS), "trials": 1}}
    sizes = [int(s) for s in sizes]
    trials = math.ceil(SAMPLE_TRIALS / (len(sizes) * len(PASSKEY_DEPTHS)))
    return {"lengths": sizes, "passkey": {"lengths": sizes, "depths": list(PASSKEY_DEPTHS), "trials": trials}}


# ---------------------------------------------------------------- one dtype, in a fresh process

def measure(dtype: str, lengths: list[int], device: str, data: str, passkey: dict, repeats: int = REPEATS,
            model: str | None = None, chunk_tokens: int = 1024, seed: int = SEED) -> dict:
    """Perplexity forwards and passkey grades of one dtype, in this (fresh) process. `model`: a checkpoint
    (default SmolLM2-135M-Instruct)."""
    import torch

    from longctx.evals.tasks import perplexity
    from longctx.evals.tasks.data import special_prefix
    from longctx.modeling import load_model
    from longctx.sources import smollm2_checkpoint

    if repeats < 2:
        raise ValueError("repeats must be at least 2 (the median of the timed forwards)")
    loaded, tokenizer, _ = load_model(model or smollm2_checkpoint(), device=device, dtype=dtype)
    cfg = perplexity.Config(lengths=lengths, data=data, docs=1, seed=seed, chunk_tokens=chunk_tokens)
    windows = {n: w[0] for n, w in perplexity.plan_windows(tokenizer, cfg, lengths).items()}
    prefix = special_prefix(tokenizer)

    def forward(length: int) -> tuple[float, int]:
        body = length - len(prefix)
        scored = perplexity.score_windows(loaded, prefix, windows[length].tokens, body, body,
                                          chunk_tokens=chunk_tokens)
        return sum(nll for _, _, nll in scored), len(scored)

    forward(min(lengths))  # warm-up, untimed
    rows = []
    for length in lengths:
        seconds, sums = [], []
        for _ in range(repeats):
            (total, count), elapsed = common.timed(device, forward, length)
            seconds.append(elapsed)
            sums.append(total)
        median = statistics.median(seconds)
        nll = sums[0] / count
        rows.append({"length": length, "doc": windows[length].doc, "start": windows[length].start,
                     "scored_tokens": count, "seconds": median, "seconds_all": seconds, "tokens_per_s": length / median,
                     "nll": nll, "ppl": math.exp(nll), "repeats_agree": len(set(sums)) == 1})
    try:
        grades = passkey_grades(loaded, tokenizer, passkey, seed, device)
    except Exception as exc:  # reported in the section; the perplexity numbers above are kept
        grades = {"error": f"{type(exc).__name__}: {exc}"}
    return {"dtype": dtype, "torch_dtype": str(next(loaded.parameters()).dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(), "data": data, "ppl": rows, "passkey": grades}


def passkey_grades(model, tokenizer, settings: dict, seed: int, device: str) -> dict:
    """Each passkey trial's content and strict grade and answer, keyed length|depth|trial seed, by the task's
    own `run`, and its wall time."""
    from longctx.evals.run.results import ResultsWriter
    from longctx.evals.tasks import get_task

    task = get_task("passkey")
    cfg = task.Config(lengths=settings["lengths"], depths=settings["depths"], trials=settings["trials"], seed=seed,
                      control=False)
    trials = {}
    with tempfile.TemporaryDirectory(prefix="longctx-bench-dtype-") as tmp:
        cells, seconds = common.timed(device, task.run, model, tokenizer, cfg, ResultsWriter(tmp, "dtype", task.name))
    for cell in cells:
        for sample in cell["samples"]:
            trials[f"{cell['length']}|{cell['depth']:g}|{sample['seed']}"] = {
                "passkey": sample["passkey"], "correct": bool(sample["correct"]),
                "correct_strict": bool(sample["correct_strict"]), "answer": sample["answer"]}
    return {"trials": trials, "seconds": seconds}


# ---------------------------------------------------------------- comparisons

def compare_grades(base: dict, other: dict, names: tuple[str, str] = DTYPES) -> dict:
    """Trials {key: {correct, correct_strict, answer}} of the baseline and the other dtype: every trial side by
    side, whether both grades (content and strict) agree on every trial, and the trials where they do not (a trial
    missing on one side differs)."""
    a, b = names
    rows, differ = [], []
    for key in sorted(set(base) | set(other), key=_trial_order):
        x, y = base.get(key), other.get(key)
        same = x is not None and y is not None and all(x[g] == y[g] for g in ("correct", "correct_strict"))
        row = {"trial": key, "passkey": (x or y)["passkey"], a: x, b: y, "same": same}
        rows.append(row)
        if not same:
            differ.append(row)
    return {"trials": len(rows), "rows": rows, "identical": not differ and bool(rows), "differences": differ,
            "correct": {a: sum(bool(t["correct"]) for t in base.values()),
                        b: sum(bool(t["correct"]) for t in other.values())},
            "correct_strict": {a: sum(bool(t["correct_strict"]) for t in base.values()),
                               b: sum(bool(t["correct_strict"]) for t in other.values())},
            "answers_differ": [r["trial"] for r in rows if r[a] and r[b] and r[a]["answer"] != r[b]["answer"]]}


def _trial_order(key: str) -> tuple:
    length, depth, seed = key.split("|")
    return int(length), float(depth), int(seed)


def compare_ppl(base: list[dict], other: list[dict]) -> list[dict]:
    """Per length: the speed ratio (bf16 tokens/s ÷ fp32 tokens/s) and the relative perplexity difference
    (bf16 − fp32) / fp32, and whether both scored the same window."""
    by_length = {r["length"]: r for r in other}
    rows = []
    for x in base:
        y = by_length.get(x["length"])
        if y is None:
            continue
        rows.append({"length": x["length"], "speed_ratio": y["tokens_per_s"] / x["tokens_per_s"],
                     "ppl_rel_diff": (y["ppl"] - x["ppl"]) / x["ppl"],
                     "same_window": (x["doc"], x["start"], x["scored_tokens"]) == (y["doc"], y["start"],
                                                                                   y["scored_tokens"])})
    return rows


def verdict(ppl: list[dict], grades: dict | None) -> dict:
    """The section's one line, from the measured numbers only: same grades yes/no, the speed ratio at the longest
    length (the others beside it), the largest relative perplexity difference; "not measured" for a part whose
    process failed."""
    same = None if grades is None else grades["identical"]
    said = "not measured (a dtype's passkey run failed)" if grades is None else (
        f"{'yes' if same else 'no'} ({grades['trials']} passkey trials, content and strict grades)")
    out = {"same_grades": same}
    if ppl:
        last = max(ppl, key=lambda r: r["length"])
        worst = max(ppl, key=lambda r: abs(r["ppl_rel_diff"]))
        others = "; ".join(f"×{r['speed_ratio']:.2f} at {r['length']}" for r in ppl if r is not last)
        speed = (f"speed ×{last['speed_ratio']:.2f} (bf16 tokens/s ÷ fp32 at {last['length']} tokens"
                 f"{'; ' + others if others else ''}); ppl Δ {worst['ppl_rel_diff']:+.2e} relative (largest over "
                 f"lengths, at {worst['length']})")
        out.update(speed_ratio=last["speed_ratio"], speed_ratio_length=last["length"],
                   ppl_rel_diff=worst["ppl_rel_diff"], ppl_rel_diff_length=worst["length"],
                   same_windows=all(r["same_window"] for r in ppl))
    else:
        speed = "speed and ppl Δ not measured (a dtype's process failed)"
    return {**out, "line": f"bf16 grades the checked sample the same as fp32: {said}; {speed}"}


# ---------------------------------------------------------------- the section

def run(opts) -> dict:
    device = opts.device
    settings, data = plan(opts.sizes), getattr(opts, "data", None) or ppl_data()
    model = getattr(opts, "model", None)  # a checkpoint instead of SmolLM2 (the tests' tiny model)
    repeats = getattr(opts, "repeats", None) or REPEATS
    variants = {}
    for dtype in DTYPES:
        print(f"  dtype {dtype} ppl {settings['lengths']} passkey {settings['passkey']} ...", flush=True)
        variants[dtype] = common.run_child("bench.bench_dtype:measure", {
            "dtype": dtype, "lengths": settings["lengths"], "device": device, "data": data,
            "passkey": settings["passkey"], "repeats": repeats, "model": model}, timeout=opts.timeout)
    base, other = (variants[d] for d in DTYPES)
    ppl = compare_ppl(base["ppl"], other["ppl"]) if "ppl" in base and "ppl" in other else []
    grades = (compare_grades(base["passkey"]["trials"], other["passkey"]["trials"])
              if "trials" in base.get("passkey", {}) and "trials" in other.get("passkey", {}) else None)
    result = {"model": model or "smollm2", "device": device, "data": data, "lengths": settings["lengths"],
              "passkey": settings["passkey"], "repeats": repeats, "cpu": cpu_bf16_support(), "variants": variants,
              "comparison": {"ppl": ppl, "grades": grades}, "verdict": verdict(ppl, grades)}
    print(f"  {result['verdict']['line']}", flush=True)
    return result


def _cpu_line(cpu: dict) -> str:
    flags = cpu.get("flags")
    said = "unknown (no /proc/cpuinfo flags)" if flags is None else ", ".join(
        f"{f} {'yes' if flags[f] else 'no'}" for f in CPU_FLAGS if f != "bf16" or flags[f])
    native = {True: "yes", False: "**no**", None: "unknown"}[cpu.get("native_bf16")]
    return (f"CPU bf16 support: native bf16 {native} ({said}); torch capability {cpu.get('torch_capability')}, "
            f"oneDNN bf16 {cpu.get('torch_mkldnn_bf16')}, AMX tiles {cpu.get('torch_amx_tile')}.")


def markdown(section: dict) -> str:
    model = "SmolLM2-135M-Instruct" if section["model"] == "smollm2" else f"`{section['model']}`"
    pk = section["passkey"]
    out = ["## bf16 vs fp32: perplexity forward speed and passkey grades\n",
           f"Model: {model} on `{section['device']}`, loaded in each dtype as `longctx eval --dtype` loads it, each "
           "dtype in a fresh process. Perplexity: the eval's `token_nll` path (chunked lm_head + fp32 "
           f"cross-entropy) on the same single-document window per length (data `{section['data']}`, seed {SEED}); "
           f"one untimed forward, then the median of {section['repeats']} timed forwards. Passkey: the task's own "
           f"forced grading at {pk['lengths']} × depths {pk['depths']} × {pk['trials']} trial(s), fixed seeds.\n",
           _cpu_line(section["cpu"]) + "\n"]
    variants = section["variants"]
    failed = [f"- {d} failed: {v['error']}" for d, v in variants.items() if "error" in v]
    failed += [f"- {d} passkey failed: {v['passkey']['error']}" for d, v in variants.items()
               if "error" in v.get("passkey", {})]
    if failed:
        out += failed + [""]
    a, b = (variants[d] for d in DTYPES)
    rows = []
    for c in section["comparison"]["ppl"]:
        x = next(r for r in a["ppl"] if r["length"] == c["length"])
        y = next(r for r in b["ppl"] if r["length"] == c["length"])
        rows.append([c["length"], common.fmt_seconds(x["seconds"]), common.fmt_seconds(y["seconds"]),
                     f"{x['tokens_per_s']:.0f}", f"{y['tokens_per_s']:.0f}", f"×{c['speed_ratio']:.2f}",
                     f"{x['ppl']:.3f}", f"{y['ppl']:.3f}", f"{c['ppl_rel_diff']:+.2e}",
                     f"{x['doc']}@{x['start']}" + ("" if c["same_window"] else " (**windows differ**)")])
    if rows:
        out.append(common.table(["length", "fp32 s/forward", "bf16 s/forward", "fp32 tok/s", "bf16 tok/s",
                                 "speed bf16/fp32", "fp32 ppl", "bf16 ppl", "rel. Δ ppl", "window"], rows))
    g = section["comparison"]["grades"]
    if g is not None:
        mark = {True: "✓", False: "✗"}
        out.append(f"\nPasskey trials, content grade / strict grade of each dtype; passkey wall time fp32 "
                   f"{common.fmt_seconds(a['passkey']['seconds'])}, bf16 {common.fmt_seconds(b['passkey']['seconds'])}:"
                   "\n")
        out.append(common.table(
            ["length", "depth", "trial seed", "passkey", "fp32", "bf16", "same"],
            [[*r["trial"].split("|"), r["passkey"]]
             + [f"{mark[t['correct']]} / {mark[t['correct_strict']]}" if t else "missing"
                for t in (r["fp32"], r["bf16"])]
             + ["yes" if r["same"] else "**no**"] for r in g["rows"]]))
        out.append(f"\ncorrect (content): fp32 {g['correct']['fp32']}/{g['trials']}, bf16 {g['correct']['bf16']}/"
                   f"{g['trials']}; strict: fp32 {g['correct_strict']['fp32']}, bf16 {g['correct_strict']['bf16']}.")
        if g["differences"]:
            out.append("\nTrials whose grades differ, with both answers:\n")
            out.append(common.table(["length", "depth", "trial seed", "passkey", "fp32 answer", "bf16 answer"],
                                    [[*r["trial"].split("|"), r["passkey"], f"`{(r['fp32'] or {}).get('answer')}`",
                                      f"`{(r['bf16'] or {}).get('answer')}`"] for r in g["differences"]]))
        elif g["answers_differ"]:
            out.append("\nSame grades, different answer text in (length|depth|trial seed): "
                       + ", ".join(f"`{k}`" for k in g["answers_differ"]) + ".")
    out.append(f"\n**Verdict:** {section['verdict']['line']}.\n")
    out.append("- Measured in one run on the machine under *Provenance* (its load average there); the speed ratio is "
               "bf16 tokens/s ÷ fp32 tokens/s of the median forward.")
    out.append("- On CPUs without native bf16 (no `avx512_bf16` / AMX on x86, no `bf16` on ARM) bf16 matmuls are "
               "emulated through fp32, so the ratio can be below 1; this CPU's flags are listed above.")
    return "\n".join(out) + "\n"
