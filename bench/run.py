"""Run longctx's benchmarks, each against a named baseline in the same run (`make bench`).

    python bench/run.py                                   # all, CPU defaults, into docs/results/bench-cpu
    python bench/run.py --only patch --sizes 2,8,32       # one benchmark (sizes in its own unit), others kept
    python bench/run.py --device cuda                     # GPU mode (random Llama shapes, bf16) -> bench-suite-<gpu>
    python bench/run.py --only ppl --shape tiny --sizes 256,512      # GPU code path, exercised on CPU
    python bench/run.py --only dtype                      # bf16 vs fp32 on this CPU (ppl speed, passkey grades)
    python bench/run.py --only dtype --sizes 2048,4096    # its perplexity (and passkey) lengths

Writes OUT/results.json (every benchmark's numbers, merged with what is already there) and OUT/README.md
(the tables, with the command, device, library versions and load average of each section).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

BENCHES = {  # name -> (module, unit of --sizes)
    "ppl": ("bench.bench_ppl", "tokens"),
    "sweep": ("bench.bench_sweep", "tokens"),
    "ruler": ("bench.bench_ruler", "tokens"),
    "finetune": ("bench.bench_finetune", "tokens per row"),
    "patch": ("bench.bench_patch", "GB of weights"),
    "attention": ("bench.bench_attention", "tokens"),
    "dtype": ("bench.bench_dtype", "tokens"),
}
ORDER = ("patch", "ppl", "sweep", "ruler", "finetune", "attention", "dtype")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append",
                        help="run only this benchmark (repeatable); the others' results are kept")
    parser.add_argument("--sizes", help="comma-separated sizes for the selected benchmarks (tokens; GB for patch; "
                        "dtype: its perplexity and passkey lengths)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--shape",
        choices=sorted(common.SHAPES),
        default=None,
        help="random Llama shape instead of the default model (GPU default: 8b for ppl, 1b for finetune)",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default docs/results/bench-cpu, or bench-suite-<gpu> on a GPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="finetune: measured optimizer steps (after warm-up)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per measured process")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/README.md from OUT/results.json")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.out is None:
        # GPU: bench-suite-<gpu> (e.g. bench-suite-h100), apart from `make bench-gpu`'s bench-<gpu> 7B-shape page
        args.out = str(common.ROOT / "docs" / "results" / (f"bench-suite-{common.device_slug(args.device)}"
                                                           if args.device.startswith("cuda") else "bench-cpu"))
    try:
        args.sizes = [float(s) if "." in s else int(s) for s in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes takes comma-separated numbers, got {args.sizes!r}")
    return args


QUESTION = (
    "**The question.** Is longctx at least as fast and as lean as the plain way of doing the same thing? Each "
    "benchmark compares it with a named baseline in the same run, on the same inputs: patching a checkpoint against "
    "copying it, perplexity against `model(ids, labels=ids)`, passkey and NIAH grading against `generate` per cell, "
    "the fine-tune step against transformers' `Trainer`, SDPA's attention backends against its math backend, and "
    "bf16 against fp32 (perplexity forward speed, passkey grades). "
    "Method: [bench/README.md](../../../bench/README.md)."
)


def _sections(results: dict) -> list[tuple[str, str, dict]]:
    """(name, Markdown with its headings one level down, section) of every benchmark in `results`, in ORDER."""
    found = []
    for name in ORDER:
        if name not in results:
            continue
        section = results[name]
        text = (importlib.import_module(BENCHES[name][0]).markdown(section) if "error" not in section
                else f"## {name}\n\nfailed: {section['error']}\n")
        found.append((name, "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()),
                      section))
    return found


def render(results: dict) -> str:
    """README.md of an output directory: the question, the command, each benchmark's tables and targets, what the
    run does not show, and the environment record of each section (Provenance)."""
    sections = _sections(results)
    devices = sorted({s["environment"]["device"] for _, _, s in sections if "environment" in s})
    commits = sorted({common._commit_text(s["environment"]) for _, _, s in sections if "environment" in s})
    parts = ["# longctx benchmarks\n",
             "Written by `bench/run.py` from results.json. Every number below was measured in the run whose "
             "command, device, versions and load average are listed for its section under *Provenance*; nothing is "
             "copied from elsewhere.\n",
             QUESTION + "\n",
             "## Reproduce\n",
             "```bash\nmake bench                               # = python bench/run.py: every benchmark\n"
             "python bench/run.py --only finetune      # one benchmark again; the others' results are kept\n"
             "python bench/run.py --render             # rewrite this page from results.json\n```\n",
             "Each benchmark's results are saved as soon as it finishes, so a stopped run keeps the finished ones; "
             "rerun the missing ones with `--only`.\n",
             "## Results\n"]
    parts += [text for _, text, _ in sections]
    parts.append("## What it does not show\n")
    limits = ["- One run per section on a machine shared with other work: its load average is under *Provenance*; "
              "the sections' own notes say how far runs of one implementation differ."]
    if devices and all(d == "cpu" for d in devices):
        limits.append("- No GPU: every number here is from a CPU (`make bench-gpu` is the GPU benchmark).")
    if len(commits) > 1:
        limits.append(f"- The sections ran at different commits ({', '.join(commits)}), not as one run.")
    parts.append("\n".join(limits) + "\n")
    parts.append("## Provenance\n")
    for name, text, section in sections:
        if "environment" not in section:
            continue
        title = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")), name)
        parts.append(f"**{title}**\n\n" + common.environment_lines(section["environment"])
                     + f"\n- wall time of this benchmark: {section['bench_seconds']:.0f} s\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LONGCTX_CACHE", str(common.ROOT / ".cache"))
    out = Path(args.out)
    results = common.load_results(out)
    if args.render:
        (out / "README.md").write_text(render(results))
        print(f"wrote {out / 'README.md'}")
        return 0
    for name in [n for n in ORDER if not args.only or n in args.only]:
        print(f"== {name}", flush=True)
        module = importlib.import_module(BENCHES[name][0])
        env = common.environment(args.device)
        start = time.perf_counter()
        section = module.run(args)
        section["environment"] = env
        section["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        section["bench_seconds"] = time.perf_counter() - start
        results[name] = section
        common.save_results(out, results)
        (out / "README.md").write_text(render(results))
        print(module.markdown(section), flush=True)
    print(f"wrote {out / 'results.json'} and {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
