"""What every benchmark shares: fresh-process measurements, peak memory, matmul ceilings, growth fits, output.

Peak memory must not mix between variants, so each measured variant runs in its own Python process
(`run_child`). On CPU the peak is the process's resident-set high-water mark (VmHWM) after it was reset
with `/proc/self/clear_refs` once the model is loaded, so loading does not count; where that reset is not
allowed the result says so and falls back to `ru_maxrss` minus the RSS after loading. On CUDA it is
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from longctx.files import write_text_atomic
from longctx.testing import TINY_LLAMA

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9

# Llama shapes for GPU mode (random weights: speed and memory do not depend on the values).
# "tiny" (`longctx.testing`'s) exists so the GPU code path can be exercised on CPU; its vocabulary here covers
# SmolLM2's tokenizer.
SHAPES = {
    "tiny": {**TINY_LLAMA, "vocab_size": 49152},
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,  # Llama-3.2-1B
               num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,  # Llama-3.2-3B
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,  # Llama-3-8B
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    # Llama-2-7B for bench/gpu.py (`make bench-gpu`); its 32,000-token vocabulary is smaller than SmolLM2's, so
    # it trains on bytes there (longctx.byte_tokenizer), never on SmolLM2 token ids (bench_finetune's `build`).
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,  # Llama-2-7B
               num_key_value_heads=32, head_dim=128, vocab_size=32000, tie_word_embeddings=False, rope_theta=1e4),
}


# ---------------------------------------------------------------- memory and time

def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of the resident set (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the enclosed block above what was in use when it started, on CPU or CUDA.

    `.peak_bytes` (above the start), `.start_bytes` (in use at the start: weights etc.), `.how` (method).
    """

    def __init__(self, device: str):
        self.device = str(device)

    def __enter__(self):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            self.how = "torch.cuda.max_memory_allocated"
        else:
            self.start_bytes = rss_bytes()
            self.how = "VmHWM after clear_refs" if reset_peak_rss() else "ru_maxrss (includes loading)"
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.start_bytes
        else:
            self.peak_bytes = peak_rss_bytes() - self.start_bytes
        return False


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(device: str, work, *args):
    """(work(*args), its wall seconds), the device synchronized before and after so queued GPU work is counted."""
    synchronize(device)
    start = time.perf_counter()
    result = work(*args)
    synchronize(device)
    return result, time.perf_counter() - start


def matmul_ceiling(device: str, dtype: str = "fp32", n: int = 2048, seconds: float = 2.0) -> dict:
    """Achieved FLOP/s of a square torch.mm (n³ multiply-adds = 2n³ FLOPs), best of repeated timings.

    This is the peak MFU is quoted against on CPU (no data-sheet number applies) and beside the data-sheet
    number on GPU: what this device reaches on the densest possible work, in this run, under this load.
    """
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    torch.mm(a, b)  # warm-up
    synchronize(device)
    best, deadline, runs = math.inf, time.perf_counter() + seconds, 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return {"op": f"torch.mm {n}x{n}x{n} {dtype}", "runs": runs, "best_s": best, "flops_per_s": 2 * n**3 / best,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- growth

def growth_exponent(sizes: list[float], times: list[float]) -> float | None:
    """k of time ∝ size^k: least-squares slope of log(time) on log(size); None with < 2 distinct sizes."""
    points = [(math.log(s), math.log(t)) for s, t in zip(sizes, times, strict=True) if s and t and s > 0 and t > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx


def growth_line(label: str, exponent: float | None, size_name: str) -> str:
    if exponent is None:
        return f"- {label}: not fitted (fewer than two sizes measured)"
    return f"- {label}: time ∝ {size_name}^{exponent:.2f}"


# ---------------------------------------------------------------- fresh processes

def speedup_targets(tasks: dict, target: float) -> dict:
    """A retrieval bench's verdict over its tasks: the worst speed-up of longctx's path over the baseline against
    `target`, and whether every grade was identical (each task's `comparison`: {"speedup", "identical"})."""
    compared = {name: t["comparison"] for name, t in tasks.items() if "comparison" in t}
    if not compared:
        return {"met": None, "why": "no task where both paths ran"}
    worst = min(c["speedup"] for c in compared.values())
    identical = all(c["identical"] for c in compared.values())
    return {"worst_speedup": worst, "target_speedup": target, "speed_met": worst >= target,
            "grades_identical": identical, "met": worst >= target and identical}


def run_child(target: str, kwargs: dict, *, timeout: float | None = None) -> dict:
    """Call `module:function(**kwargs)` in a fresh Python process and return its dict.

    A failure comes back as {"error": "..."} rather than an exception, so one broken variant does not
    lose the rest of the run; the Markdown shows the error.
    """
    with tempfile.TemporaryDirectory(prefix="longctx-bench-") as tmp:
        request, reply = Path(tmp) / "in.json", Path(tmp) / "out.json"
        request.write_text(json.dumps({"target": target, "kwargs": kwargs}))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TOKENIZERS_PARALLELISM": "false",
        }
        command = [sys.executable, "-c", "from bench.common import child_main; child_main()", str(request), str(reply)]
        try:
            proc = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if reply.is_file():
            return json.loads(reply.read_text())
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)}"}


def child_main() -> None:
    """Entry point of a `run_child` process: argv = request file, reply file."""
    import importlib

    request, reply = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(request.read_text())
    module_name, function_name = spec["target"].split(":")
    try:
        result = getattr(importlib.import_module(module_name), function_name)(**spec["kwargs"])
    except Exception as exc:  # reported in the results, not raised: the other variants still run
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    reply.write_text(json.dumps(result))


# ---------------------------------------------------------------- models

def random_llama(shape: str, device: str, dtype: str, max_position_embeddings: int = 131072,
                 attn_implementation: str = "sdpa"):
    """A randomly initialised Llama of a named shape, built directly on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx.modeling import pick_dtype

    config = LlamaConfig(**{"rope_theta": 5e5, **SHAPES[shape]}, max_position_embeddings=max_position_embeddings,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=pick_dtype(device, dtype), attn_implementation=attn_implementation
        )
    return model.eval()


def parameter_count(shape: str) -> int:
    """Parameters of a named shape, without building it (embeddings included)."""
    s = SHAPES[shape]
    h, layers, q, kv, d = (
        s["hidden_size"],
        s["num_hidden_layers"],
        s["num_attention_heads"],
        s["num_key_value_heads"],
        s["head_dim"],
    )
    per_layer = h * q * d * 2 + h * kv * d * 2 + 3 * h * s["intermediate_size"] + 2 * h
    embed = s["vocab_size"] * h * (1 if s["tie_word_embeddings"] else 2)
    return layers * per_layer + embed + h


# ---------------------------------------------------------------- environment and output

def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """Everything a reader needs to judge a number: the run record of `longctx.provenance.RunRecord` (command,
    commit, machine, start time), plus the device, the load average at the start and the package versions."""
    from longctx.provenance import RunRecord

    record = RunRecord([Path(sys.executable).name, *sys.argv]).finish()
    del record["wall_seconds"]  # the sections time themselves
    machine = record["machine"]
    return {**record, "device": str(device),
            "device_name": machine.get("gpu") if str(device).startswith("cuda") else machine["cpu"],
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "versions": {p: _version(p) for p in ("longctx", "torch", "transformers", "accelerate", "peft")}}


def _commit_text(env: dict) -> str | None:
    """The commit in one string: short hash, "+ uncommitted changes" where the tree differed (results.json
    written before the bench used RunRecord hold it as `git_commit`)."""
    if "git_commit" in env:
        return env["git_commit"]
    commit = env.get("commit")
    commit = commit[:7] if commit and not env.get("commit_from") else commit
    return f"{commit} + uncommitted changes" if commit and env.get("dirty") else commit


def device_slug(device: str = "cuda") -> str:
    """Short lower-case name of the accelerator for result folders: 'h100', 'h200', 'a100', 'l40s'; 'gpu' for a
    CUDA device without such a model number, 'cpu' without CUDA."""
    import re

    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "cpu"
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", torch.cuda.get_device_name(0))
    return match.group(1).lower() if match else "gpu"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / GB:.2f} GB" if abs(n) >= 0.1 * GB else f"{n / 1e6:.0f} MB"


def fmt_flops(flops_per_s: float | None) -> str:
    if flops_per_s is None:
        return "—"
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("—" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_lines(env: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    load, end = env["load_average_1_5_15"], env.get("load_average_at_end")
    at_end = f", at end {end[0]} / {end[1]} / {end[2]}" if end else ""
    machine = env.get("machine") or {"cores": env.get("cpu_count"), "torch_threads": env.get("torch_threads"),
                                     "python": env.get("python"), "platform": env.get("platform")}
    return (
        f"- command: `{env['command']}`\n- device: {env['device']} ({env['device_name']}), {machine['cores']} CPUs, "
        f"{machine['torch_threads']} torch threads; load average (1/5/15 min) at start {load[0]} / {load[1]} / "
        f"{load[2]}{at_end}\n"
        f"- {versions}; Python {machine['python']}; {machine['platform']}; commit {_commit_text(env)}; "
        f"{env.get('utc') or env['started']}"
    )


def load_results(out_dir: Path) -> dict:
    path = Path(out_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(out_dir: Path, results: dict) -> Path:
    """results.json (sections merged: `--only` replaces one section and keeps the others)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return path
