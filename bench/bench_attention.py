"""SDPA backends: the same causal attention (forward + backward) under each `torch.nn.attention.sdpa_kernel`.

The baseline is PyTorch's math backend (the reference implementation); on GPU the interesting comparison is
cuDNN beside flash, at the head layout of the model shapes (GQA expanded: transformers repeats k/v heads
before SDPA). FLOPs counted for causal attention: forward 2·2·T²·H·D / 2 (QKᵀ and PV, half the square),
backward 2.5× forward (FlashAttention-2's convention), so fwd + bwd = 7·T²·H·D.
A backend that cannot run a shape on this device is reported with its error, not hidden.
"""

from __future__ import annotations

import time

from bench import common

CPU_LENGTHS = [512, 1024, 2048]
GPU_LENGTHS = [8192, 16384, 32768, 65536]
BACKENDS = ("MATH", "FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


def time_backend(backend: str, length: int, heads: int, head_dim: int, device: str, repeat: int = 3) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, head_dim, device=device, dtype=dtype, generator=generator).requires_grad_()
               for _ in range(3))
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            times = []
            for _ in range(repeat + 1):  # the first is a warm-up
                common.synchronize(device)
                start = time.perf_counter()
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out.sum().backward()
                common.synchronize(device)
                times.append(time.perf_counter() - start)
                q.grad = k.grad = v.grad = None
    except RuntimeError as exc:  # "No available kernel" (not built for this device/dtype) or out of memory
        return {"backend": backend, "error": str(exc).splitlines()[0][:200]}
    best = min(times[1:])
    return {"backend": backend, "seconds": best, "flops_per_s": 7 * length**2 * heads * head_dim / best}


def run(opts) -> dict:
    device = opts.device
    on_gpu = device.startswith("cuda")
    lengths = opts.sizes or (GPU_LENGTHS if on_gpu else CPU_LENGTHS)
    heads, head_dim = (32, 128) if on_gpu else (4, 64)
    rows = []
    for length in lengths:
        print(f"  attention T={length} ...", flush=True)
        row = {"length": length}
        for backend in BACKENDS:
            if backend == "MATH" and on_gpu and length > 16384:  # its [T × T] scores would not fit
                row[backend] = {
                    "backend": backend,
                    "skipped": f"not run: [T×T] scores need {length**2 * heads * 2 / common.GB:.0f} GB",
                }
                continue
            row[backend] = time_backend(backend, length, heads, head_dim, device)
        rows.append(row)
    growth = {b: common.growth_exponent([r["length"] for r in rows if "seconds" in r[b]],
                                        [r[b]["seconds"] for r in rows if "seconds" in r[b]]) for b in BACKENDS}
    return {"device": device, "heads": heads, "head_dim": head_dim, "rows": rows, "growth_exponent": growth}


def markdown(section: dict) -> str:
    out = ["## SDPA backends: causal attention forward + backward under `sdpa_kernel`\n",
           f"Shape [1, {section['heads']} heads, T, {section['head_dim']}] on `{section['device']}`; best of 3 after a "
           "warm-up; FLOP/s counts 7·T²·H·D per forward + backward (causal). MATH is the reference baseline.\n"]
    rows = []
    for r in section["rows"]:
        cells = [r["length"]]
        for backend in BACKENDS:
            result = r[backend]
            cells.append(
                f"{common.fmt_seconds(result['seconds'])} ({common.fmt_flops(result['flops_per_s'])})"
                if "seconds" in result
                else (result.get("skipped") or f"failed: {result.get('error', '').split('. ')[0]}")
            )
        rows.append(cells)
    out.append(common.table(["length", *BACKENDS], rows))
    out.append("\nGrowth (least-squares fit of log time on log length):\n")
    for backend, k in section["growth_exponent"].items():
        out.append(common.growth_line(backend, k, "length"))
    return "\n".join(out) + "\n"
