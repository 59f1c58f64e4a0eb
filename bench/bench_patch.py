"""Patch: `longctx.checkpoint.write_patched_checkpoint` (hard links + a new config.json) vs `shutil.copytree`.

A fake checkpoint holds a real tiny Llama config.json, tokenizer-free, and weight shards of up to 4 GB
made with `truncate`: sparse files, so 32 GB of "weights" take no disk. Patching only links them, so its
time should not depend on their size. Copying does: `copytree` reads every byte (holes read back as zeros
without disk reads, so this copy is FASTER than copying real weights of the same size) and writes real
blocks. The copy is therefore measured only up to `copy_max_gb` (and only with twice that free on disk);
larger sizes are extrapolated at the throughput of the largest copy and labelled as such.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from bench import common

TARGET_SECONDS = 1.0
DEFAULT_GB = [2, 8, 32]
COPY_MAX_GB = 2.0
SHARD_GB = 4.0
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 512, "max_position_embeddings": 4096, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
}


def make_sparse_checkpoint(
    directory: Path, total_bytes: int, shard_bytes: int = int(SHARD_GB * common.GB)
) -> list[Path]:
    """A checkpoint dir with config.json and `model-0000i-of-0000n.safetensors` sparse shards summing to total_bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    n = max(1, math.ceil(total_bytes / shard_bytes))
    files = []
    for i in range(n):
        path = directory / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        size = min(shard_bytes, total_bytes - i * shard_bytes)
        with open(path, "wb") as handle:  # a real safetensors header (longctx checks it): one uint8 tensor of zeros
            header = b"{}"
            for _ in range(3):  # the header's own length changes the data length it describes
                data = size - 8 - len(header)
                header = json.dumps({"zeros": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}).encode()
            header = header.ljust(size - 8 - data)  # pad so that 8 + header + data == size exactly
            handle.write(len(header).to_bytes(8, "little") + header)
            handle.truncate(size)
        files.append(path)
    return files


def allocated_bytes(path: Path) -> int:
    """Disk blocks really used under path (sparse files use almost none)."""
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())


def time_patch(src: Path, out: Path) -> dict:
    from longctx.checkpoint import write_patched_checkpoint
    from longctx.patch import PatchSpec

    start = time.perf_counter()
    write_patched_checkpoint(src, out, PatchSpec(method="base", base=1e6))
    seconds = time.perf_counter() - start
    record = json.loads((out / "longctx_patch.json").read_text())
    return {"seconds": seconds, "link_kinds": sorted(set(record["files"].values())),
            "rope_theta_after": record["rope_after"].get("rope_theta")}


def time_copy(src: Path, out: Path) -> dict:
    start = time.perf_counter()
    shutil.copytree(src, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "disk_written_bytes": allocated_bytes(out)}


def bench_size(root: Path, gb: float, *, copy: bool) -> dict:
    """Patch (and maybe copy) a fresh sparse checkpoint of `gb` GB under root; everything is removed after."""
    total = int(gb * common.GB)
    src = root / f"ckpt-{gb}gb"
    files = make_sparse_checkpoint(src, total)
    row = {"gb": gb, "bytes": total, "shards": len(files), "source_disk_bytes": allocated_bytes(src)}
    try:
        row["patch"] = time_patch(src, root / f"patched-{gb}gb")
        if copy:
            row["copy"] = time_copy(src, root / f"copy-{gb}gb")
    finally:
        for path in (src, root / f"patched-{gb}gb", root / f"copy-{gb}gb"):
            shutil.rmtree(path, ignore_errors=True)
    return row


def run(opts) -> dict:
    sizes = opts.sizes or DEFAULT_GB
    copy_max = getattr(opts, "copy_max_gb", None) or COPY_MAX_GB
    copy_sizes = sorted({s for s in sizes if s <= copy_max} | {copy_max / 4, copy_max / 2, copy_max})
    rows = []
    with tempfile.TemporaryDirectory(prefix="longctx-bench-patch-", dir=getattr(opts, "scratch", None)) as tmp:
        root = Path(tmp)
        free = shutil.disk_usage(root).free
        for gb in sorted(set(sizes) | set(copy_sizes)):
            copy = gb in copy_sizes and gb * common.GB * 2 < free
            print(f"  patch {gb} GB{' + copy' if copy else ''} ...", flush=True)
            row = bench_size(root, gb, copy=copy)
            row["requested"] = gb in sizes
            rows.append(row)
    copied = [r for r in rows if "copy" in r]
    growth = {"patch": common.growth_exponent([r["bytes"] for r in rows], [r["patch"]["seconds"] for r in rows]),
              "copy": common.growth_exponent([r["bytes"] for r in copied], [r["copy"]["seconds"] for r in copied])}
    if copied:  # sizes not copied: at the throughput of the largest copy (a copy is linear in bytes)
        largest = max(copied, key=lambda r: r["bytes"])
        throughput = largest["bytes"] / largest["copy"]["seconds"]
        for row in rows:
            if "copy" not in row:
                row["copy_extrapolated_seconds"] = row["bytes"] / throughput
    worst = max(r["patch"]["seconds"] for r in rows)
    return {"rows": rows, "growth_exponent": growth, "copy_max_gb": copy_max,
            "targets": {"worst_patch_seconds": worst, "target_seconds": TARGET_SECONDS, "met": worst < TARGET_SECONDS}}


def markdown(section: dict) -> str:
    out = ["## Patch: `write_patched_checkpoint` (hard links) vs `shutil.copytree`\n",
           "Fake checkpoints: a real tiny Llama config.json plus sparse weight shards (≤ 4 GB each, made with "
           "`truncate`, using no disk). Patch: `PatchSpec(method=\"base\", base=1e6)`. Copies of sparse files read "
           "holes as zeros without disk reads, so they are faster than copies of real weights; copies larger than "
           f"{section['copy_max_gb']:g} GB are not run but extrapolated at the throughput of the largest measured copy "
           "(marked *extrap.*).\n"]
    rows = []
    for r in section["rows"]:
        copy = (
            common.fmt_seconds(r["copy"]["seconds"])
            if "copy" in r
            else f"{common.fmt_seconds(r['copy_extrapolated_seconds'])} *extrap.*"
            if "copy_extrapolated_seconds" in r
            else None
        )
        copy_s = r["copy"]["seconds"] if "copy" in r else r.get("copy_extrapolated_seconds")
        rows.append(
            [
                f"{r['gb']:g} GB",
                r["shards"],
                common.fmt_seconds(r["patch"]["seconds"]),
                ", ".join(r["patch"]["link_kinds"]),
                copy,
                f"{copy_s / r['patch']['seconds']:.0f}×" if copy_s else None,
            ]
        )
    out.append(common.table(["weights", "shards", "patch", "weights placed by", "copytree", "copy / patch"], rows))
    g = section["growth_exponent"]
    out.append("\nGrowth (least-squares fit of log time on log bytes):\n")
    out.append(common.growth_line("patch", g["patch"], "bytes")
               + " (milliseconds: this fit measures noise; the point is that patch time does not grow)")
    out.append(common.growth_line("copytree (measured sizes only)", g["copy"], "bytes"))
    t = section["targets"]
    verdict = (
        "**met**"
        if t["met"]
        else f"**missed**: slowest patch {t['worst_patch_seconds']:.2f} s is "
             f"{t['worst_patch_seconds'] / t['target_seconds']:.1f}× the target"
    )
    out.append(f"\nTarget: patch under {t['target_seconds']:g} s regardless of size → {verdict} "
               f"(slowest {common.fmt_seconds(t['worst_patch_seconds'])}).")
    return "\n".join(out) + "\n"
