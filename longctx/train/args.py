"""Fine-tuning knobs: one dataclass per concern, a help string per field, and a parser that reads a YAML
config first and lets command-line flags override it (TRL's `--config` convention).

Every field is a flag (`--seq-len` or `--seq_len`) and a YAML key (`seq_len`). An unknown YAML key is an
error, not a silently ignored typo.

Why not `transformers.HfArgumentParser` (TRL's choice): its `--no-x` exists only for booleans that default to
True, so a YAML `gradient_checkpointing: true` could not be switched off by a flag; `parse_dict`/`parse_yaml_file`
pass YAML values through uncoerced (PyYAML reads `1e6` as a string) and reject unknown keys in one ValueError
listing them, with no "did you mean"; flags-over-YAML needs a subclass (TRL's `TrlParser`); its errors print
the usage block. Keeping all of that on top of it would leave this module as long, so the bridge below stays.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from longctx import rope_methods
from longctx.errors import OneLineParser, UsageError, require, unknown_name
from longctx.lengths import MAX_CONTEXT, parse_tokens, token_count


@dataclass
class ModelArgs:
    model: str = field(
        default="smollm2",
        metadata={"help": "checkpoint: Hub id, local dir, .gguf file, or 'smollm2' (the bundled SmolLM2-135M)"},
    )
    init: str = field(
        default="pretrained",
        metadata={
            "help": "pretrained: start from the weights; scratch: same architecture, random weights",
            "choices": ("pretrained", "scratch"),
        },
    )
    dtype: str | None = field(default=None, metadata={"help": "weights dtype: bf16 on GPU, fp32 on CPU by default"})
    attn_implementation: str | None = field(
        default=None,
        metadata={"resume": "may change", "help": "flash_attention_2 when flash-attn is importable, else sdpa"},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"resume": "may change", "help": "recompute activations in backward (less memory, ~30% slower)"},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"resume": "may change", "help": "allow checkpoints whose config has auto_map"}
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "with --init scratch: a JSON/YAML file of config.json fields that override --model's (sizes of a "
                    "new model)"
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "with --init scratch: 'bytes' for one token per UTF-8 byte (longctx.byte_tokenizer) instead of "
                    "--model's tokenizer"
        },
    )


def _patch_field(option) -> tuple:
    metadata = ({"help": rope_methods.option_help(option), "tokens": option.type is int}
                | ({"choices": option.choices} if option.choices else {}))
    return option.name, f"{option.type.__name__} | None", field(default=None, metadata=metadata)


PatchArgs = dataclasses.make_dataclass(
    "PatchArgs", [_patch_field(option) for option in rope_methods.options()],
    namespace={"__module__": __name__, "__doc__": "The rope patch, same options as `longctx patch` (one field per "
               "`longctx.rope_methods` option); leave `method` and `base` unset for an already patched model."})


@dataclass
class TuneArgs:
    finetune: str = field(
        default="lora", metadata={"help": "lora (peft adapters) or full (every weight)", "choices": ("lora", "full")}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (update scaled by alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "comma-separated module names that get adapters"}
    )
    trainable_extra: str = field(
        default="", metadata={"help": "with LoRA, also train these fully: embed,norm (LongLoRA's finding)"}
    )


@dataclass
class DataArgs:
    data: str = field(
        default="pydoc",
        metadata={
            "help": "pydoc (embedded prose) | stdlib (Python sources) | hf:NAME[:CONFIG][:SPLIT] | .txt/.jsonl files "
                    "or dirs, comma-separated"
        },
    )
    text_field: str = field(default="text", metadata={"help": "field holding the text in JSONL / datasets rows"})
    seq_len: int | None = field(
        default=None,
        metadata={"tokens": True, "help": "training length (default: the model's trained length; never above it)"},
    )
    max_docs: int | None = field(
        default=None, metadata={"help": "use at most this many documents (after the seeded shuffle)"}
    )
    pose_target_length: int | None = field(
        default=None,
        metadata={
            "tokens": True,
            "help": "PoSE: skip position ids inside each document so relative distances up to this length are seen "
                    "(arXiv 2309.10400)",
        },
    )
    pose_chunks: int = field(default=2, metadata={"help": "PoSE: contiguous chunks per document (the paper uses 2)"})
    retrieval_mix: float = field(
        default=0.0,
        metadata={
            "help": "fraction of training characters that are synthetic passkey documents "
                    "(longctx.train.retrieval_mix), so retrieval is learnable"
        },
    )
    copy_mix: float = field(
        default=0.0,
        metadata={
            "help": "fraction of training characters that are dense copy documents (random segments written twice), "
                    "so a model from scratch forms an induction circuit"
        },
    )


@dataclass
class TrainArgs:
    out: str = field(default="runs/finetune", metadata={"resume": "may change", "help": "output directory"})
    resume: bool = field(
        default=False, metadata={"resume": "may change", "help": "continue from the newest checkpoint in --out"}
    )
    force: bool = field(default=False, metadata={"resume": "may change", "help": "overwrite an existing --out"})
    max_steps: int = field(default=100, metadata={"resume": "may change", "help": "optimizer steps"})
    max_minutes: float | None = field(
        default=None,
        metadata={
            "resume": "may change",
            "help": "wall-clock budget of this run: stop after the step that passes it, save and export as at "
                    "--max-steps (the lr schedule still spans --max-steps)",
        },
    )
    batch_size: int = field(default=1, metadata={"help": "packed rows per device per micro-step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a fraction of --lr"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup steps"})
    schedule: str = field(
        default="cosine", metadata={"help": "decay after warmup", "choices": ("cosine", "linear", "constant")}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW β1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW β2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed for weights init, data order and dropout"})
    save_every: int = field(
        default=0, metadata={"resume": "may change", "help": "checkpoint every N steps (0: only at the end)"}
    )
    keep_last: int = field(default=2, metadata={"resume": "may change", "help": "checkpoints kept"})
    log_every: int = field(default=1, metadata={"resume": "may change", "help": "log every N steps"})
    loss_chunk: int = field(
        default=1024,
        metadata={"resume": "may change", "help": "tokens per cross-entropy chunk (bounds the logits memory)"},
    )
    liger: bool = field(
        default=True,
        metadata={"resume": "may change", "help": "use Liger's fused linear cross-entropy on GPU when installed"},
    )
    peak_flops: float | None = field(
        default=None,
        metadata={"resume": "may change", "help": "peak FLOP/s per device for MFU (default: table by GPU name)"},
    )
    report_to: str = field(
        default="auto",
        metadata={"resume": "may change", "help": "tracker: auto (tensorboard when installed) | tensorboard | none"},
    )
    merge: bool = field(
        default=False, metadata={"resume": "may change", "help": "also write a merged full checkpoint to OUT/merged"}
    )


GROUPS = (ModelArgs, PatchArgs, TuneArgs, DataArgs, TrainArgs)


@dataclass
class FinetuneArgs:
    """All groups of one run."""

    model: ModelArgs
    patch: PatchArgs
    tune: TuneArgs
    data: DataArgs
    train: TrainArgs
    config: str | None = None

    def to_dict(self) -> dict:
        flat = {}
        for group in (self.model, self.patch, self.tune, self.data, self.train):
            flat.update(dataclasses.asdict(group))
        return {**flat, "config": self.config}


def resume_must_match() -> tuple[str, ...]:
    """The settings a resumed run must share with the run it continues: every field not marked
    `"resume": "may change"` (how long, how often, where and how fast it runs)."""
    return tuple(f.name for group in GROUPS for f in dataclasses.fields(group)
                 if f.metadata.get("resume") != "may change")


def known_keys() -> set[str]:
    return {f.name for group in GROUPS for f in dataclasses.fields(group)}


def _field_type(f: dataclasses.Field):
    """int / float / str / bool for a field annotated `X` or `X | None`."""
    text = str(f.type).replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool}[text]


def _coerce(key: str, value, kind, tokens: bool = False):
    """A YAML value as the field's type (PyYAML reads `1e6` as a string, YAML 1.1); a token count may be `16k`."""
    if value is None:
        return None
    if tokens and isinstance(value, str):
        try:
            return parse_tokens(value)
        except ValueError as exc:
            raise UsageError(f"config key {key}: bad token count {value!r}: {exc}") from None
    try:
        if kind is bool:
            require(isinstance(value, bool), f"config key {key} must be true or false, got {value!r}")
            return value
        if kind is int:  # YAML `.inf` and `1e400` are floats no int holds: refused, not an OverflowError
            require(not isinstance(value, bool) and math.isfinite(float(value)) and float(value) == int(float(value))
                    and abs(float(value)) < 2**63, f"config key {key} must be an integer, got {value!r}")
            return int(float(value))
        if kind is float:
            require(not isinstance(value, bool), f"config key {key} must be a number, got {value!r}")
            return float(value)
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    except (TypeError, ValueError):
        kind_name = {int: "an integer", float: "a number"}.get(kind, "a string")
        raise UsageError(f"config key {key} must be {kind_name}, got {value!r}") from None


def load_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    from longctx.checkpoint_files import require_regular_file

    require_regular_file(file, "config file")
    require(file.is_file(), f"config file {path} is a folder: give a YAML file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    require(isinstance(data, dict), f"config file {path} must hold a mapping of keys to values")
    fields = {f.name: f for group in GROUPS for f in dataclasses.fields(group)}
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise unknown_name("key", raw_key, sorted(fields), f" in {path}", list_valid=False)
        out[key] = _coerce(key, value, _field_type(fields[key]), fields[key].metadata.get("tokens", False))
        choices = fields[key].metadata.get("choices")
        if choices is not None and out[key] not in choices:
            raise UsageError(f"config key {key} must be one of {', '.join(choices)}, got {value!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="finetune",
        description="Fine-tune a rope-patched model at its original context length.",
        argument_default=None,
    )
    parser.add_argument("--config", help="YAML file of defaults; flags override it")
    for group in GROUPS:
        arg_group = parser.add_argument_group(group.__name__.removesuffix("Args").lower())
        for f in dataclasses.fields(group):
            kind = _field_type(f)
            flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
            kwargs = {"dest": f.name, "help": f.metadata.get("help", "").replace("%", "%%")}  # argparse formats help
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = token_count if f.metadata.get("tokens") else kind
                if "choices" in f.metadata:
                    kwargs["choices"] = f.metadata["choices"]
            arg_group.add_argument(*flags, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> FinetuneArgs:
    """Defaults < YAML (`--config`) < flags. Raises UsageError for anything unknown."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    values = {f.name: f.default for group in GROUPS for f in dataclasses.fields(group)}
    if given.get("config"):
        values.update(load_yaml(given["config"]))
    values.update({k: v for k, v in given.items() if v is not None and k != "config"})
    groups = {g: g(**{f.name: values[f.name] for f in dataclasses.fields(g)}) for g in GROUPS}
    return FinetuneArgs(model=groups[ModelArgs], patch=groups[PatchArgs], tune=groups[TuneArgs],
                        data=groups[DataArgs], train=groups[TrainArgs], config=given.get("config"))


def patch_spec(patch: PatchArgs):
    """PatchSpec for the run, or None when no patch option is given (model already patched). Same rules as
    `longctx patch` (`longctx.patch.spec_from_args`): --base alone means --method base."""
    from longctx.patch import spec_from_args

    return spec_from_args(patch)


def check_args(args: FinetuneArgs) -> None:
    """Checks that need no model or data; each error names its flag."""
    t = args.train
    for name in ("max_steps", "batch_size", "grad_accum", "loss_chunk", "keep_last", "log_every"):
        require(getattr(t, name) >= 1, f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(t, name)}")
    require(t.save_every >= 0 and t.warmup_steps >= 0, "--save-every and --warmup-steps must be ≥ 0")
    import math

    def number(flag: str, value, ok: bool, rule: str) -> None:  # nan fails every comparison, inf is no rate
        require(value is None or (math.isfinite(value) and ok), f"{flag} must be {rule}, got {value}")

    number("--lr", t.lr, t.lr > 0, "a finite number > 0")
    number("--weight-decay", t.weight_decay, t.weight_decay >= 0, "a finite number ≥ 0")
    number("--adam-beta1", t.adam_beta1, 0 <= t.adam_beta1 < 1, "in [0, 1)")
    number("--adam-beta2", t.adam_beta2, 0 <= t.adam_beta2 < 1, "in [0, 1)")
    number("--max-grad-norm", t.max_grad_norm, t.max_grad_norm >= 0, "a finite number ≥ 0 (0: no clipping)")
    number("--max-minutes", t.max_minutes, t.max_minutes is None or t.max_minutes > 0, "a finite number > 0")
    number("--peak-flops", t.peak_flops, t.peak_flops is None or t.peak_flops > 0, "a finite number > 0")
    number("--lora-alpha", args.tune.lora_alpha, args.tune.lora_alpha > 0, "a finite number > 0")
    require(args.data.max_docs is None or args.data.max_docs >= 1, f"--max-docs must be ≥ 1, got {args.data.max_docs}")
    require(0 <= t.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {t.min_lr_ratio}")
    require(not (t.resume and t.force), "give --resume or --force, not both")
    require(
        t.report_to in ("auto", "tensorboard", "none"),
        f"--report-to must be auto, tensorboard or none, got {t.report_to!r}",
    )
    require(args.data.seq_len is None or args.data.seq_len >= 2, "--seq-len must be ≥ 2")
    require(args.data.pose_chunks >= 2, f"--pose-chunks must be ≥ 2, got {args.data.pose_chunks}")
    require(0 <= t.seed < 2**32, f"--seed must be a whole number in [0, 2^32), got {t.seed}")  # numpy's seed range
    require(args.data.pose_target_length is None or args.data.pose_target_length <= MAX_CONTEXT,
            f"--pose-target-length {args.data.pose_target_length} is above {MAX_CONTEXT:,} tokens (2^24)")
    pose = args.data.pose_target_length
    require(pose is None or pose > (args.data.seq_len or 1),
            f"--pose-target-length must exceed the training length (--seq-len), got {pose}")
    if args.model.init == "scratch":
        require(args.tune.finetune == "full", "--init scratch trains every weight: use --finetune full")
    else:
        require(args.model.model_config is None and args.model.tokenizer is None,
                "--model-config and --tokenizer define a new model: use them with --init scratch")
    require(args.model.tokenizer in (None, "bytes"), f"--tokenizer takes 'bytes', got {args.model.tokenizer!r}")
    number("--retrieval-mix", args.data.retrieval_mix, 0 <= args.data.retrieval_mix < 1, "in [0, 1)")
    number("--copy-mix", args.data.copy_mix, 0 <= args.data.copy_mix < 1, "in [0, 1)")
    require(
        args.data.retrieval_mix + args.data.copy_mix < 1,
        "--retrieval-mix + --copy-mix must stay below 1: leave some of --data",
    )
    extras = {e.strip() for e in args.tune.trainable_extra.split(",") if e.strip()}
    require(
        extras <= {"embed", "norm"}, f"--trainable-extra takes embed and/or norm, got {args.tune.trainable_extra!r}"
    )
    require(not extras or args.tune.finetune == "lora", "--trainable-extra only applies to --finetune lora")
    require(args.tune.lora_r >= 1, f"--lora-r must be ≥ 1, got {args.tune.lora_r}")
    require(0 <= args.tune.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {args.tune.lora_dropout}")
