"""Rotary settings in a transformers config.json, in both schemas.

transformers 4.x stores `rope_theta` at the top level and scaling in `rope_scaling` {`rope_type` (older:
`type`), `factor`, ...}; 5.x stores everything in `rope_parameters`, nested per layer type for models with
several (Gemma 3). Code elsewhere never reads `config.rope_theta` directly: it goes through this module.
Pure dict logic, no torch; a missing or non-numeric field is a UsageError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longctx import rope_methods
from longctx.errors import UsageError

FULL_ATTENTION = "full_attention"
DEFAULT_THETA = 10000.0

# Families whose rotary settings may be implicit (older config.json without rope_theta).
ROPE_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "phi", "olmo", "olmo2", "granite", "cohere", "cohere2", "starcoder2", "stablelm",
    "internlm2", "deepseek_v2", "deepseek_v3", "smollm3", "glm", "glm4", "exaone", "ministral", "helium",
}


def as_dict(config: Any) -> dict:
    """A config.json dict, or a transformers PretrainedConfig turned into one."""
    if isinstance(config, dict):
        return config
    return config.to_dict()


def text_config(config: dict) -> dict:
    """The language-model part of multimodal configs (their rope lives in `text_config`)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) and ("rope_parameters" in inner or "rope_theta" in inner) else config


def is_nested(rope_parameters: dict | None) -> bool:
    """True when `rope_parameters` holds one dict per layer type (Gemma 3 style)."""
    return bool(rope_parameters) and all(isinstance(v, dict) or v is None for v in rope_parameters.values())


def has_rope(config: Any) -> bool:
    cfg = text_config(as_dict(config))
    if cfg.get("rope_parameters") or cfg.get("rope_theta") or cfg.get("rope_scaling"):
        return True
    return cfg.get("model_type") in ROPE_MODEL_TYPES


def rope_parameters(config: Any) -> dict:
    """Flat rotary settings of the full-attention layers: {'rope_type', 'rope_theta', scaling keys...}.

    Follows transformers' own precedence: a legacy `rope_scaling` dict wins over `rope_parameters`.
    """
    cfg = text_config(as_dict(config))
    params = cfg.get("rope_parameters") or {}
    if is_nested(params):
        params = params.get(FULL_ATTENTION) or next((v for v in params.values() if v), {})
    params = dict(params)
    legacy = cfg.get("rope_scaling")
    if isinstance(legacy, dict) and legacy:
        params = {**{k: v for k, v in params.items() if k in ("rope_theta", "partial_rotary_factor")}, **legacy}
    rope_type = params.pop("type", None)
    params["rope_type"] = params.get("rope_type") or rope_type or "default"
    theta = cfg.get("rope_theta") if isinstance(legacy, dict) and legacy and cfg.get("rope_theta") else None
    theta = theta or params.get("rope_theta") or cfg.get("rope_theta") or DEFAULT_THETA
    try:
        params["rope_theta"] = float(theta)
    except (TypeError, ValueError):
        raise UsageError(
            f"config.json has rope_theta = {theta!r}, not a number: repair the checkpoint's config"
        ) from None
    if "partial_rotary_factor" not in params and cfg.get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    return params


def raw_rope_theta(config: Any):
    """The rope_theta as written in the config (any type, None when absent), for validation."""
    cfg = text_config(as_dict(config))
    params = cfg.get("rope_parameters") or {}
    if is_nested(params):
        params = params.get(FULL_ATTENTION) or next((v for v in params.values() if v), {})
    return cfg.get("rope_theta", params.get("rope_theta") if isinstance(params, dict) else None)


def _max_positions(cfg: dict) -> int:
    value = cfg.get("max_position_embeddings")
    if value is None:
        raise UsageError("config.json has no max_position_embeddings: add the context the model was trained at "
                         "(e.g. \"max_position_embeddings\": 4096)")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"config.json has max_position_embeddings = {value!r}, not an integer: repair the config"
        ) from None


def head_dim(config: Any) -> int:
    cfg = text_config(as_dict(config))
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])


def rotary_dim(config: Any, params: dict | None = None) -> int:
    """Number of rotated channels per head (head_dim × partial_rotary_factor), as transformers computes it
    (`params`: the config's `rope_parameters`, when the caller parsed them already)."""
    params = rope_parameters(config) if params is None else params
    return int(head_dim(config) * float(params.get("partial_rotary_factor") or 1.0))


def original_length(config: Any) -> int:
    """The context the model was trained at: `original_max_position_embeddings` if recorded, else the max."""
    cfg = text_config(as_dict(config))
    return _original_length(cfg, rope_parameters(cfg))


def _original_length(cfg: dict, params: dict) -> int:
    value = params.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
    return int(value) if value else _max_positions(cfg)


def max_length(config: Any) -> int:
    """The context the config claims to support. A method that keeps `max_position_embeddings` at the trained
    length (dynamic NTK: raising it would switch the scaling off below it) claims factor × that length."""
    return model_rope(config).claimed_length


def _max_length(cfg: dict, params: dict, trained: int) -> int:
    method = rope_methods.for_rope_type(params["rope_type"])
    if method is not None and method.keeps_trained_length and params.get("factor"):
        return int(round(float(params["factor"]) * trained))
    return _max_positions(cfg)


@dataclass(frozen=True)
class ModelRope:
    """A loaded model's rotary settings, parsed once (`model_rope`) and carried through an eval run."""

    params: dict          # flat rope dict of the full-attention layers (`rope_parameters`)
    trained_length: int   # `original_length`
    claimed_length: int   # `max_length`

    @property
    def rope_type(self) -> str:
        return self.params["rope_type"]

    @property
    def length_dependent(self) -> bool:
        """The frequencies change with the sequence length (dynamic NTK, LongRoPE): no shared KV prefix, no
        context-parallel split."""
        return bool(getattr(rope_methods.for_rope_type(self.rope_type), "length_dependent", False))


def model_rope(config: Any) -> ModelRope:
    """`rope_parameters`, `original_length` and `max_length` of one config, from one parse."""
    cfg = text_config(as_dict(config))
    params = rope_parameters(cfg)
    trained = _original_length(cfg, params)
    return ModelRope(params, trained, _max_length(cfg, params, trained))


def same_rope_up_to(a: dict, b: dict, trained: int, dim: int = 64) -> bool:
    """Whether two flat rope dicts of models trained to `trained` tokens rotate every position alike at sequence
    lengths up to it (frequencies and attention scaling at lengths 1, trained/2 and trained): dynamic NTK is its
    base rope there. `dim` is the rotary dimension (LongRoPE's factor lists fix their own); False for a type
    longctx does not model."""
    import torch

    factors = [p.get("short_factor") for p in (a, b) if isinstance(p.get("short_factor"), list)]
    dim = 2 * len(factors[0]) if factors else dim
    for seq_len in (1, max(1, trained // 2), trained):
        try:
            (fa, sa), (fb, sb) = (
                rope_methods.inv_freq_for(p, dim, max_position_embeddings=trained, seq_len=seq_len) for p in (a, b)
            )
        except (ValueError, KeyError, TypeError):
            return False
        if not (torch.allclose(torch.as_tensor(fa, dtype=torch.float64), torch.as_tensor(fb, dtype=torch.float64),
                               rtol=1e-9, atol=0) and abs(float(sa) - float(sb)) < 1e-9):
            return False
    return True
