"""`longctx patch`: write a checkpoint with new rotary settings."""

from __future__ import annotations

import shlex
import sys

from longctx import rope_methods
from longctx.errors import require
from longctx.patch import add_patch_arguments, spec_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "patch", help=f"rewrite the rotary config of a checkpoint ({', '.join(rope_methods.METHODS)})",
        description="Write a copy of a checkpoint whose config extends its context. Weight files are "
                    "hard-linked (symlinked across file systems), other files copied; the source is never "
                    "modified, the output appears atomically.")
    parser.add_argument("--model", required=True, help="Hub id, local checkpoint directory or .gguf file")
    parser.add_argument(
        "--out",
        required=True,
        help="new directory for the patched checkpoint, or FILE.gguf for llama.cpp/"
        "Ollama (plus FILE.Modelfile with num_ctx = the new length)",
    )
    add_patch_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace --out if it is an earlier longctx patch output")
    parser.add_argument("--copy", action="store_true", help="copy weights instead of hard-linking them")
    parser.add_argument("--allow-pickle", action="store_true", help="accept weights stored only as pickle .bin/.pt")
    parser.add_argument("--trust-remote-code", action="store_true", help="accept checkpoints that need their own code")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument("--gguf-dtype", choices=("f32", "f16", "bf16"), default="f16",
                        help="with --out FILE.gguf from a Hugging Face checkpoint: weight type (default f16; quantize "
                             "with llama.cpp's llama-quantize). A GGUF source keeps its own tensors byte for byte")
    parser.set_defaults(func=run)


def run(args) -> int:
    from longctx.checkpoint import patch_checkpoint

    spec = spec_from_args(args)
    if str(args.out).endswith(".gguf"):
        return run_gguf(args, spec)
    require(spec is not None, "nothing to patch: give --base and/or --method with --factor or --target-length")
    argv = getattr(args, "argv", None)
    argv = sys.argv[1:] if argv is None else argv
    record = patch_checkpoint(args.model, args.out, spec, force=args.force, copy=args.copy,
                              allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                              revision=args.revision, command=shlex.join(["longctx", *argv]))
    after, out = record["rope_after"], record["out"]
    print(f"patched {args.model} -> {out}")
    symlinks = sorted(name for name, kind in record["files"].items() if kind == "symlink")
    if symlinks:
        print(f"  note: {out} is on another file system than the source, so {len(symlinks)} weight file(s) are "
              "symlinks to it (moving or deleting the source breaks the output); pass --copy for a copy")
    print(f"  rope: {', '.join(f'{k}={v}' for k, v in after.items())}")
    print(f"  max_position_embeddings {record['max_position_embeddings_before']} -> {record['max_position_embeddings']}"
          f" (trained at {record['original_max_position_embeddings']})")
    if record["analysis"].get("base_satisfies_lower_bound_at_claimed_length") is False:
        print(
            f"  warning: base {after['rope_theta']:g} is below the lower bound for "
            f"{record['analysis']['claimed_length']} "
            "tokens (B(m) < 0 somewhere): expect superficial long context; see `longctx analyze`"
        )
    return 0


def run_gguf(args, spec) -> int:
    """`--out FILE.gguf`: llama.cpp's rope metadata (longctx.gguf_export), and FILE.Modelfile for Ollama."""
    from pathlib import Path

    from longctx.gguf_export import export
    from longctx.locks import output_lock

    argv = getattr(args, "argv", None)
    with output_lock(args.out):  # one writer per output file, as for a checkpoint folder
        record = export(args.model, args.out, spec, dtype=args.gguf_dtype, force=args.force, revision=args.revision,
                        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                        command=shlex.join(["longctx", *(sys.argv[1:] if argv is None else argv)]))
    rope = ", ".join(f"{k}={v}" for k, v in record["rope"].items() if not isinstance(v, list))
    print(
        f"patched {args.model} -> {args.out} "
        f"(GGUF{', ' + record['dtype'] if 'dtype' in record else ', tensors unchanged'})"
    )
    print(f"  rope: {rope}; context_length {record['context_length']} (trained at {record['original_context_length']})")
    print(
        f"  ollama: ollama create NAME -f {Path(args.out).with_suffix('.Modelfile')}  (num_ctx "
        f"{record['context_length']})"
    )
    return 0
