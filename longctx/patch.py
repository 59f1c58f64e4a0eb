"""Rewriting the rotary settings of a checkpoint: a pure `dict → dict` on config.json, plus a safe save.

Every method has a config form transformers understands (`rope_type` in its `ROPE_INIT_FUNCTIONS`, or a
plain new `rope_theta`), so no model code is patched. Both schemas are written so the checkpoint loads
the same frequencies in transformers 4 (`rope_theta` + `rope_scaling`) and 5 (`rope_parameters`). What each
method takes, checks and writes lives in `longctx.rope_methods`; PatchSpec and the flags are derived from it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, field, make_dataclass

from longctx import rope_config, rope_methods
from longctx.errors import UsageError, require
from longctx.lengths import MAX_CONTEXT, token_count


def _to_dict(self) -> dict:
    return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def _validate(self) -> None:
    """Bad or contradictory settings are refused when the spec is made, in one line naming the flag: a PatchSpec
    that exists is valid, so nothing downstream checks it again."""
    rope_methods.validate(asdict(self))


# What to change in the rotary settings: `method` plus one field per option of `rope_methods` (unset keeps the
# checkpoint's own value), e.g. PatchSpec(method="yarn", factor=8, beta_fast=16).
PatchSpec = make_dataclass(
    "PatchSpec",
    [(o.name, f"{o.type.__name__} | None", field(default=rope_methods.BASE_ONLY if o.name == "method" else None))
     for o in rope_methods.options()] + [("extra", "dict", field(default_factory=dict))],
    namespace={"__doc__": "What to change in the rotary settings (validated when made). Unset fields keep the "
                          "checkpoint's own values.",
               "__module__": __name__, "to_dict": _to_dict, "__post_init__": _validate}, frozen=True)


def resolve_lengths(spec: PatchSpec, original_length: int) -> tuple[float | None, int]:
    """(factor, target length) made consistent; YaRN in some transformers versions recomputes its factor from
    the two lengths (QwenLM/Qwen3 #1424), so they must agree with the factor exactly."""
    if not rope_methods.METHODS[spec.method].scales:
        return None, spec.target_length or original_length
    factor, target = spec.factor, spec.target_length
    if factor is None and target is None:
        raise UsageError(f"--method {spec.method} needs --factor or --target-length")
    if factor is None:
        factor = target / original_length
        require(
            factor >= 1, f"--target-length {target} is below the trained length {original_length}: nothing to extend"
        )
        factor = round(factor, 6)
    expected = int(round(factor * original_length))
    cap = MAX_CONTEXT
    require(expected <= cap, f"--factor {factor:g} × trained length {original_length} = {expected:,} tokens, "
                             f"above {cap:,} (2^24): check the factor")
    if target is not None and target != expected:
        raise UsageError(
            f"--factor {factor:g} × trained length {original_length} = {expected}, not --target-length {target}: give "
            "one of them"
        )
    return float(factor), expected


def new_rope_parameters(spec: PatchSpec, current: dict, dim: int, original_length: int) -> tuple[dict, int]:
    """(flat transformers-5 rope dict, new max_position_embeddings) for the full-attention layers."""
    method = rope_methods.METHODS[spec.method]
    base = float(spec.base if spec.base is not None else current["rope_theta"])
    factor, target = resolve_lengths(spec, original_length)
    params = method.rope_parameters(base=base, factor=factor, original=original_length, dim=dim, values=asdict(spec))
    params.update({k: current[k] for k in ("partial_rotary_factor",) if k in current})
    return params, (original_length if method.keeps_trained_length else target)


def legacy_rope_scaling(params: dict) -> dict | None:
    """The transformers-4 `rope_scaling` dict for flat v5 params (None for plain rope)."""
    if params["rope_type"] == "default":
        return None
    legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    legacy["type"] = params["rope_type"]  # transformers < 4.43 read `type`
    return legacy


def patch_config(config: dict, spec: PatchSpec) -> dict:
    """A new config.json dict with the patch applied in both schemas; the input is not modified."""
    method = rope_methods.METHODS[spec.method]
    require(isinstance(config, dict) and "model_type" in config,
            "config.json has no model_type: this does not look like a transformers checkpoint")
    require(
        rope_config.has_rope(config),
        f"model_type {config.get('model_type')!r} has no rotary position embeddings (RoPE): longctx only patches RoPE "
        "models",
    )
    new = copy.deepcopy(config)
    target_cfg = rope_config.text_config(new)
    allowed = rope_methods.methods_for(target_cfg.get("model_type"))
    require(spec.method in allowed, f"transformers' {target_cfg.get('model_type')} config only takes some rope types: "
                                    f"use --method {' or '.join(allowed)}")
    current = rope_config.rope_parameters(target_cfg)
    if current["rope_type"] not in ("default",) and method.scales:
        raise UsageError(f"the checkpoint already uses rope_type {current['rope_type']!r}; start from the unscaled "
                         f"checkpoint, or change only the base with --method {rope_methods.BASE_ONLY}")
    original = spec.original_length or rope_config.original_length(target_cfg)
    dim = rope_config.rotary_dim(target_cfg)
    params, max_positions = new_rope_parameters(spec, current, dim, original)
    if current["rope_type"] != "default":  # changing only the base of an already-scaled checkpoint keeps its scaling
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


def patch_model(model, spec: PatchSpec, patched: dict | None = None) -> dict:
    """Patch an already loaded transformers model in place: its config, then every rotary embedding module
    rebuilt from it (their `inv_freq` buffers are computed at construction). Returns the new rope params.
    `patched`: `patch_config(<the model's config.json>, spec)` when the caller derived it already."""
    import transformers

    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    patched = rope_config.text_config(patch_config(config.to_dict(), spec) if patched is None else patched)
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
    require(
        rebuilt > 0,
        f"found no rotary embedding module in {type(model).__name__}: "
        "patch the checkpoint with `longctx patch` instead",
    )
    return rope_config.rope_parameters(patched)


def add_patch_arguments(parser, *, required: bool = False) -> None:
    """The patch flags, shared by `longctx patch` and the fine-tune recipe: one per `rope_methods` option."""
    group = parser.add_argument_group("rope patch")
    for option in rope_methods.options():
        group.add_argument(
            option.flag,
            type=token_count if option.type is int else option.type,
            choices=option.choices,
            metavar=option.metavar,
            help=rope_methods.option_help(option),
        )


def spec_from_args(args) -> PatchSpec | None:
    """A PatchSpec from parsed patch flags (or the recipe's PatchArgs), or None when no patch flag was given."""
    values = {option.name: getattr(args, option.name, None) for option in rope_methods.options()}
    if all(v is None for v in values.values()):
        return None
    return PatchSpec(**{**values, "method": rope_methods.implied_method(values)})
