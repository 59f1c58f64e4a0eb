"""What a finished fine-tune leaves in OUT, loadable by `longctx eval` (`longctx.modeling.load_model(OUT)`).

LoRA:
    OUT/adapter_config.json, adapter_model.safetensors  peft adapter; base_model_name_or_path -> OUT/base
    OUT/base/                the PATCHED base (longctx.checkpoint: patched config.json, weights hard-linked)
    OUT/tokenizer files      so the adapter dir is self-contained for tokenization
    OUT/merged/              with --merge: full checkpoint, adapter merged, patched config, model card
Full fine-tune (or --init scratch):
    OUT/config.json, model.safetensors, tokenizer files   the trained checkpoint with the patched config
Always: OUT/README.md (model card), OUT/finetune_args.json, OUT/train_log.jsonl, OUT/checkpoints/.

The adapter's base must be the patched model: peft records the base by path, and loading the adapter onto
the unpatched checkpoint would silently evaluate the old rope. The patched config.json carries both the
transformers-4 keys (rope_theta, rope_scaling) and the 5 key (rope_parameters), from `longctx.patch.patch_config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from longctx.files import kill_point, partial_dir, publish_dir, replace_into_place, write_json_atomic, write_text_atomic

ROPE_KEYS = (
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "original_max_position_embeddings",
)


def write_patched_config(checkpoint_dir: Path, patched_config: dict | None) -> None:
    """Replace the rope keys of a saved config.json by those of `patched_config` (the preflight's
    `patch_config(source, spec)`, both schemas; None: no patch, nothing to do). Written atomically."""
    if patched_config is None:
        return
    from longctx import rope_config

    path = checkpoint_dir / "config.json"
    saved = json.loads(path.read_text())
    patched = rope_config.text_config(patched_config)
    target = rope_config.text_config(saved)
    for key in ROPE_KEYS:
        if key in patched:
            target[key] = patched[key]
    write_json_atomic(path, saved)


def model_card(args, spec, built, summary: dict, kind: str) -> str:
    """README.md of a fine-tune: the fine-tune section of the card template shared with `longctx patch`."""
    from longctx import rope_config
    from longctx.templates import model_card as render_card

    return render_card(
        Path(args.train.out).name,
        library_name="transformers",
        tags=["longctx", "long-context", "rope"],
        finetune={
            "args": args,
            "summary": summary,
            "kind": kind,
            "source_dir": built.source_dir,
            "trained_length": built.trained_length,
            "seq_len": built.seq_len,
            "patch": json.dumps(spec.to_dict()) if spec is not None else "none (the source is used as patched)",
            "source_rope": json.dumps(rope_config.rope_parameters(built.source_config)),
        },
    )


def export(args, spec, built, summary: dict, accelerator, model) -> Path:
    """Save the adapter or full model (+ merged, card, tokenizer) into OUT; main process writes, all gather."""
    out = Path(args.train.out)
    state = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards; wrapper keys start with "model."
    trained = accelerator.unwrap_model(model).model
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return out
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if args.tune.finetune == "lora":
        from longctx.train.model import link_patched_base

        base = link_patched_base(built.source_dir, out / "base", spec, built.patched_config)
        trained.peft_config["default"].base_model_name_or_path = str(base.resolve())
        kind = "LoRA adapter on the patched base in base/"
    else:
        kind = "full fine-tune" if args.model.init == "pretrained" else "trained from scratch"
    tmp = partial_dir(out / "export")  # saved whole here first: a failed save leaves OUT as it was
    try:
        built.tokenizer.save_pretrained(tmp)
        trained.save_pretrained(tmp, state_dict=state)
        if args.tune.finetune != "lora":
            write_patched_config(tmp, built.patched_config)
        move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kill_point("export:saved")
    write_text_atomic(out / "README.md", model_card(args, spec, built, summary, kind))
    if args.train.merge and args.tune.finetune == "lora":
        merge(out, args, spec, built, summary)
    accelerator.wait_for_everyone()
    return out


def move_into(tmp: Path, out: Path) -> None:
    """Move the finished files of `tmp` into `out`, each atomically; the config that makes a folder loadable
    (config.json, adapter_config.json) last, so a kill in between never leaves a loadable half."""
    last = ("config.json", "adapter_config.json")
    for path in sorted(tmp.iterdir(), key=lambda p: (p.name in last, p.name)):
        replace_into_place(path, out / path.name)


def merge(out: Path, args, spec, built, summary: dict) -> Path:
    """OUT/merged: the adapter merged into the patched base, loaded the way `longctx eval` loads it (CPU)."""
    from longctx.modeling import load_model

    dtype = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(built.model.get_base_model().dtype), "fp32")
    merged, tokenizer, _ = load_model(out, device="cpu", dtype=dtype, attn_implementation="sdpa")
    target = out / "merged"
    tmp = partial_dir(target)  # published whole or not at all (a failed save left config.json without weights)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_patched_config(tmp, built.patched_config)
        card = model_card(args, spec, built, summary, "LoRA merged into the patched base")
        write_text_atomic(tmp / "README.md", card)
        publish_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
