"""Rewriting the rotary settings of a checkpoint: a pure `dict → dict` on config.json, plus a safe save.

Every method has a config form transformers understands (`rope_type` in its `ROPE_INIT_FUNCTIONS`, or a
plain new `rope_theta`), so no model code is patched. Both schemas are written so the checkpoint loads
the same frequencies in transformers 4 (`rope_theta` + `rope_scaling`) and 5 (`rope_parameters`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

from longctx import rope_config
from longctx.errors import UsageError, require

METHODS = ("base", "linear", "ntk", "dynamic", "yarn", "llama3")
METHOD_HELP = {
    "base": "new rope_theta only (ABF: adjusted base frequency)",
    "linear": "position interpolation: θ/s",
    "ntk": "static NTK-aware: base·s^(d/(d−2))",
    "dynamic": "dynamic NTK: base grows with the sequence past the trained length",
    "yarn": "YaRN: NTK-by-parts ramp + attention temperature",
    "llama3": "Llama 3.1: wavelength-dependent interpolation",
}
# The longest context a patch may claim (2^24 = 16.8M tokens, above every published model): a larger
# factor or length is a typo (`--factor 1e300`), and would write a config no run could use.
MAX_CONTEXT = 1 << 24
# Architectures whose transformers config accepts only some rope types (Phi-3: default or longrope).
METHODS_BY_MODEL_TYPE = {"phi3": ("base", "ntk")}


@dataclass
class PatchSpec:
    """What to change in the rotary settings. Unset fields keep the checkpoint's own values."""

    method: str = "base"
    base: float | None = None  # new rope_theta; combines with every scaling method
    factor: float | None = None  # scale s; default target_length / original_length
    original_length: int | None = None  # trained context; default from the config
    target_length: int | None = None  # new max_position_embeddings; default factor × original
    beta_fast: float | None = None  # yarn (default 32)
    beta_slow: float | None = None  # yarn (default 1)
    attention_factor: float | None = None  # yarn (default 0.1·ln s + 1)
    low_freq_factor: float | None = None  # llama3 (default 1)
    high_freq_factor: float | None = None  # llama3 (default 4)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def _finite_positive(value: float | None, flag: str) -> None:
    if value is not None:
        require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"{flag} must be a finite number > 0, got {value}")


def validate_spec(spec: PatchSpec) -> None:
    """Reject bad or contradictory settings with a message naming the flag."""
    require(spec.method in METHODS, f"unknown method {spec.method!r}: choose one of {', '.join(METHODS)}")
    _finite_positive(spec.base, "--base")
    _finite_positive(spec.factor, "--factor")
    for value, flag in ((spec.attention_factor, "--attention-factor"), (spec.beta_fast, "--beta-fast"),
                        (spec.beta_slow, "--beta-slow"), (spec.low_freq_factor, "--low-freq-factor"),
                        (spec.high_freq_factor, "--high-freq-factor")):
        _finite_positive(value, flag)
    for value, flag in ((spec.original_length, "--original-length"), (spec.target_length, "--target-length")):
        require(value is None or (isinstance(value, int) and value > 0), f"{flag} must be a positive integer, got {value}")
        require(value is None or value <= MAX_CONTEXT, f"{flag} {value} is above {MAX_CONTEXT:,} tokens (2^24): check the number")
    require(spec.factor is None or spec.factor <= MAX_CONTEXT, f"--factor {spec.factor} is absurdly large: "
            f"the context it claims would exceed {MAX_CONTEXT:,} tokens (2^24)")
    if spec.method == "base":
        require(spec.base is not None, "method base needs --base (the new rope_theta, e.g. --base 1e6)")
        require(spec.factor is None, "--factor has no meaning for --method base: pick a scaling method (linear, ntk, dynamic, yarn, llama3)")
    elif spec.factor is not None:
        require(spec.factor >= 1, f"--factor must be ≥ 1 for {spec.method} (it extends the context), got {spec.factor}")
    yarn_only = {"--beta-fast": spec.beta_fast, "--beta-slow": spec.beta_slow, "--attention-factor": spec.attention_factor}
    llama3_only = {"--low-freq-factor": spec.low_freq_factor, "--high-freq-factor": spec.high_freq_factor}
    for flags, method in ((yarn_only, "yarn"), (llama3_only, "llama3")):
        given = [flag for flag, value in flags.items() if value is not None]
        require(not given or spec.method == method, f"{', '.join(given)} only apply to --method {method}")
    if spec.method == "yarn" and spec.beta_fast is not None and spec.beta_slow is not None:
        require(spec.beta_fast > spec.beta_slow, "--beta-fast must be greater than --beta-slow")
    if spec.method == "llama3" and spec.low_freq_factor is not None and spec.high_freq_factor is not None:
        require(spec.high_freq_factor > spec.low_freq_factor, "--high-freq-factor must be greater than --low-freq-factor")


def resolve_lengths(spec: PatchSpec, original_length: int) -> tuple[float | None, int]:
    """(factor, target length) made consistent; YaRN in some transformers versions recomputes its factor from
    the two lengths (QwenLM/Qwen3 #1424), so they must agree with the factor exactly."""
    if spec.method == "base":
        return None, spec.target_length or original_length
    factor, target = spec.factor, spec.target_length
    if factor is None and target is None:
        raise UsageError(f"--method {spec.method} needs --factor or --target-length")
    if factor is None:
        factor = target / original_length
        require(factor >= 1, f"--target-length {target} is below the trained length {original_length}: nothing to extend")
        factor = round(factor, 6)
    expected = int(round(factor * original_length))
    require(expected <= MAX_CONTEXT, f"--factor {factor:g} × trained length {original_length} = {expected:,} tokens, "
                                     f"above {MAX_CONTEXT:,} (2^24): check the factor")
    if target is not None and target != expected:
        raise UsageError(f"--factor {factor:g} × trained length {original_length} = {expected}, not --target-length {target}: give one of them")
    return float(factor), expected


def new_rope_parameters(spec: PatchSpec, current: dict, dim: int, original_length: int) -> tuple[dict, int]:
    """(flat transformers-5 rope dict, new max_position_embeddings) for the full-attention layers."""
    base = float(spec.base if spec.base is not None else current["rope_theta"])
    factor, target = resolve_lengths(spec, original_length)
    kept = {k: current[k] for k in ("partial_rotary_factor",) if k in current}
    if spec.method == "base":
        return {"rope_type": "default", "rope_theta": base, **kept}, target
    if spec.method == "ntk":
        # torch is imported only when needed, so `longctx --help` stays instant
        from longctx.rope import ntk_base

        return {"rope_type": "default", "rope_theta": ntk_base(base, factor, dim), **kept}, target
    params = {"rope_type": spec.method, "rope_theta": base, "factor": factor, **kept}
    if spec.method == "dynamic":
        # transformers scales only past max_position_embeddings: it must stay the trained length.
        return params, original_length
    if spec.method in ("yarn", "llama3"):  # transformers falls back to max_position_embeddings if missing
        params["original_max_position_embeddings"] = original_length
    if spec.method == "yarn":
        for key in ("beta_fast", "beta_slow", "attention_factor"):
            value = getattr(spec, key)
            params[key] = float(value) if value is not None else {"beta_fast": 32.0, "beta_slow": 1.0}.get(key)
        if params["attention_factor"] is None:
            del params["attention_factor"]  # transformers derives 0.1·ln s + 1
    if spec.method == "llama3":
        params["low_freq_factor"] = float(spec.low_freq_factor if spec.low_freq_factor is not None else 1.0)
        params["high_freq_factor"] = float(spec.high_freq_factor if spec.high_freq_factor is not None else 4.0)
    return params, target


def legacy_rope_scaling(params: dict) -> dict | None:
    """The transformers-4 `rope_scaling` dict for flat v5 params (None for plain rope)."""
    if params["rope_type"] == "default":
        return None
    legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    legacy["type"] = params["rope_type"]  # transformers < 4.43 read `type`
    return legacy


def patch_config(config: dict, spec: PatchSpec) -> dict:
    """A new config.json dict with the patch applied in both schemas; the input is not modified."""
    validate_spec(spec)
    require(isinstance(config, dict) and "model_type" in config,
            "config.json has no model_type: this does not look like a transformers checkpoint")
    require(rope_config.has_rope(config),
            f"model_type {config.get('model_type')!r} has no rotary position embeddings (RoPE): longctx only patches RoPE models")
    new = copy.deepcopy(config)
    target_cfg = rope_config.text_config(new)
    allowed = METHODS_BY_MODEL_TYPE.get(target_cfg.get("model_type"), METHODS)
    require(spec.method in allowed, f"transformers' {target_cfg.get('model_type')} config only takes some rope types: "
                                    f"use --method {' or '.join(allowed)}")
    current = rope_config.rope_parameters(target_cfg)
    if current["rope_type"] not in ("default",) and spec.method != "base":
        raise UsageError(f"the checkpoint already uses rope_type {current['rope_type']!r}; start from the unscaled "
                         "checkpoint, or change only the base with --method base")
    original = spec.original_length or rope_config.original_length(target_cfg)
    dim = rope_config.rotary_dim(target_cfg)
    params, max_positions = new_rope_parameters(spec, current, dim, original)
    if current["rope_type"] != "default":  # --method base on an already-scaled checkpoint keeps its scaling
        params = {**current, "rope_theta": params["rope_theta"]}
        max_positions = spec.target_length or int(target_cfg["max_position_embeddings"])

    nested = rope_config.is_nested(target_cfg.get("rope_parameters"))
    if nested:  # several layer types (Gemma 3): only the full-attention layers carry the long context
        layer_key = rope_config.FULL_ATTENTION if rope_config.FULL_ATTENTION in target_cfg["rope_parameters"] else \
            next(iter(target_cfg["rope_parameters"]))
        target_cfg["rope_parameters"][layer_key] = params
    else:
        target_cfg["rope_parameters"] = params
    target_cfg["rope_theta"] = params["rope_theta"]
    target_cfg["rope_scaling"] = legacy_rope_scaling(params)
    target_cfg["max_position_embeddings"] = int(max_positions)
    target_cfg["original_max_position_embeddings"] = int(original)
    return new


def patch_model(model, spec: PatchSpec) -> dict:
    """Patch an already loaded transformers model in place: its config, then every rotary embedding module
    rebuilt from it (their `inv_freq` buffers are computed at construction). Returns the new rope params."""
    import transformers

    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    patched = rope_config.text_config(patch_config(config.to_dict(), spec))
    if int(transformers.__version__.split(".")[0]) >= 5:
        text.rope_parameters = copy.deepcopy(patched["rope_parameters"])
    else:
        text.rope_theta = patched["rope_theta"]
        text.rope_scaling = copy.deepcopy(patched["rope_scaling"])
    text.max_position_embeddings = patched["max_position_embeddings"]
    text.original_max_position_embeddings = patched["original_max_position_embeddings"]
    rebuilt = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "inv_freq") and hasattr(child, "rope_type") and hasattr(child, "config"):
                rebuilt_module = type(child)(config=child.config)  # inv_freq is computed at construction
                setattr(parent, name, rebuilt_module.to(child.inv_freq.device))
                rebuilt += 1
    require(rebuilt > 0, f"found no rotary embedding module in {type(model).__name__}: patch the checkpoint with `longctx patch` instead")
    return rope_config.rope_parameters(patched)


def patch_checkpoint(source, out, spec: PatchSpec, **options):
    """Write a patched copy of a checkpoint (see `longctx.checkpoint.write_patched_checkpoint`)."""
    from longctx.checkpoint import write_patched_checkpoint

    return write_patched_checkpoint(source, out, spec, **options)


def add_patch_arguments(parser, *, required: bool = False) -> None:
    """The patch flags, shared by `longctx patch`, the fine-tune recipe and the eval commands."""
    group = parser.add_argument_group("rope patch")
    group.add_argument("--method", choices=METHODS, default=None,
                       help="; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()) + " (default: base when --base is given)")
    group.add_argument("--base", type=float, help="new rope_theta (e.g. 1e6); combines with every method")
    group.add_argument("--factor", type=float, help="scale factor s ≥ 1 (default: target length / trained length)")
    group.add_argument("--target-length", type=int, help="context to extend to (written as max_position_embeddings)")
    group.add_argument("--original-length", type=int, help="trained context (default: read from the config)")
    group.add_argument("--beta-fast", type=float, help="yarn: rotations where extrapolation stops (default 32)")
    group.add_argument("--beta-slow", type=float, help="yarn: rotations where interpolation starts (default 1)")
    group.add_argument("--attention-factor", type=float, help="yarn: attention scaling (default 0.1·ln s + 1)")
    group.add_argument("--low-freq-factor", type=float, help="llama3: low-frequency factor (default 1)")
    group.add_argument("--high-freq-factor", type=float, help="llama3: high-frequency factor (default 4)")


def spec_from_args(args) -> PatchSpec | None:
    """A PatchSpec from parsed patch flags, or None when no patch flag was given."""
    names = ("method", "base", "factor", "target_length", "original_length", "beta_fast", "beta_slow",
             "attention_factor", "low_freq_factor", "high_freq_factor")
    values = {name: getattr(args, name, None) for name in names}
    if all(v is None for v in values.values()):
        return None
    if values["method"] is None:
        require(values["base"] is not None, "give --method (" + ", ".join(METHODS) + ") or --base")
        values["method"] = "base" if values["factor"] is None else None
        require(values["method"] is not None, "--factor needs a --method (linear, ntk, dynamic, yarn, llama3)")
    spec = PatchSpec(**values)
    validate_spec(spec)
    return spec
