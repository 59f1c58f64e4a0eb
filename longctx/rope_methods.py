"""Every rope method longctx knows, each one object: its flags and checks, the config keys it writes, its frequencies.

Everything else is derived from `METHODS`: PatchSpec's fields and `validate` (`longctx.patch`), the patch flags of
`longctx patch` and of the fine-tune recipe (`longctx.train.args`), `inv_freq_for`, what `rope_config` says
a config claims, and the README's table (`methods_table`). This is the one module that branches on method names;
adding a method is one `RopeMethod` subclass here plus its parity test (docs/extending.md).

A method writes the flat transformers-5 `rope_parameters` dict; `longctx.patch.legacy_rope_scaling` derives the
transformers-4 `rope_scaling` from it. Torch is imported only inside `inv_freq`, so `longctx --help` stays instant.
"""

from __future__ import annotations

import math

from longctx.errors import UsageError, require
from longctx.rope_options import COMMON_OPTIONS, Option

# transformers configs that accept only some rope types (Phi-3's `validate_rope`: default or longrope).
ROPE_TYPES_BY_MODEL_TYPE = {"phi3": ("default", "longrope")}


# ------------------------------------------------------------------------------------------------ methods
class RopeMethod:
    """A way to extend the context through the config alone. Subclasses set the attributes and override what differs."""

    name: str
    help: str  # one line for `--method`'s help
    writes: str  # README: the config keys it writes
    notes: str = ""  # README: anything a user must know
    rope_type: str  # the transformers rope_type it writes; reading a config dispatches on it
    options: tuple[Option, ...] = ()  # its own flags
    scales = True  # takes --factor / --target-length (False: changes only the base)
    writes_original_length = False  # transformers reads original_max_position_embeddings, else falls back to the max
    keeps_trained_length = False  # max_position_embeddings stays the trained length (dynamic NTK scales only past it)
    # Frequencies that depend on the current sequence length: keys cached for a shorter prefix were rotated under
    # other frequencies than a longer continuation's queries, so a KV cache may not be reused across lengths.
    length_dependent = False
    stateful = False  # transformers keeps the frequencies of the longest input seen (reset before each scored forward)

    def check(self, values: dict) -> None:
        """Rules between this method's settings (each one alone is checked by its Option)."""

    def setting(self, values: dict, name: str):
        """A setting of this method as given, else its default."""
        option = next(o for o in self.options if o.name == name)
        return option.default if values.get(name) is None else values[name]

    def rope_parameters(self, *, base: float, factor: float | None, original: int, dim: int, values: dict) -> dict:
        """The flat transformers-5 rope dict for these settings (partial_rotary_factor is added by the caller)."""
        params = {"rope_type": self.rope_type, "rope_theta": float(base)}
        if self.scales:
            params["factor"] = factor
        if self.writes_original_length:
            params["original_max_position_embeddings"] = original
        for option in self.options:
            value = self.setting(values, option.name)
            if value is not None:
                params[option.name] = option.type(value)
        return params

    def inv_freq(self, params: dict, dim: int, *, max_position_embeddings: int, seq_len: int | None = None):
        """(θ' [d/2] float64, attention scaling) as transformers derives them from `params` (default rope here)."""
        from longctx import rope

        return rope.default_inv_freq(float(params["rope_theta"]), dim), 1.0


METHODS: dict[str, RopeMethod] = {}


def register(cls: type[RopeMethod]) -> type[RopeMethod]:
    """Add a method (in this order to --help and the README); an option name belongs to one method only."""
    taken = (
        {"method", "extra"} | {o.name for o in COMMON_OPTIONS} | {o.name for m in METHODS.values() for o in m.options}
    )
    clash = taken & {o.name for o in cls.options}
    if cls.name in METHODS or clash:
        raise ValueError(f"method {cls.name}: the name or option {sorted(clash)} is already registered")
    METHODS[cls.name] = cls()
    return cls


def _factor(params: dict) -> float:
    return float(params.get("factor") or 1.0)


def _original(params: dict, max_position_embeddings: int) -> int:
    """original_max_position_embeddings, falling back to the max as transformers does."""
    return int(params.get("original_max_position_embeddings") or max_position_embeddings)


@register
class Base(RopeMethod):
    name = "base"
    help = "new rope_theta only (ABF: adjusted base frequency)"
    writes = "`rope_theta` (ABF)"
    notes = "`--base` alone implies it; add `--target-length` to record the context you aim for"
    rope_type = "default"
    scales = False

    def check(self, values):
        require(values.get("base") is not None, "method base needs --base (the new rope_theta, e.g. --base 1e6)")


@register
class Linear(RopeMethod):
    name = rope_type = "linear"
    help = "position interpolation: θ/s"
    writes = "`rope_type: linear`, `factor`"
    notes = "position interpolation θ/s"

    def inv_freq(self, params, dim, *, max_position_embeddings, seq_len=None):
        from longctx import rope

        return rope.linear_inv_freq(float(params["rope_theta"]), dim, _factor(params)), 1.0


@register
class Ntk(RopeMethod):
    name = "ntk"
    help = "static NTK-aware: base·s^(d/(d−2))"
    writes = "`rope_theta = b·s^(d/(d−2))`"
    notes = "static NTK-aware"
    rope_type = "default"

    def rope_parameters(self, *, base, factor, original, dim, values):
        from longctx.rope_bounds import ntk_base

        return {"rope_type": "default", "rope_theta": ntk_base(base, factor, dim)}


@register
class Dynamic(RopeMethod):
    name = rope_type = "dynamic"
    help = "dynamic NTK: base grows with the sequence past the trained length"
    writes = "`rope_type: dynamic`, `factor`"
    notes = "`max_position_embeddings` stays the trained length (transformers scales only past it)"
    keeps_trained_length = True
    length_dependent = stateful = True

    def inv_freq(self, params, dim, *, max_position_embeddings, seq_len=None):
        from longctx import rope

        return rope.dynamic_inv_freq(float(params["rope_theta"]), dim, _factor(params),
                                     seq_len or max_position_embeddings, max_position_embeddings), 1.0


@register
class Yarn(RopeMethod):
    name = rope_type = "yarn"
    help = "YaRN: NTK-by-parts ramp + attention temperature"
    writes = "`rope_type: yarn`, `factor`, `beta_fast/slow`, `original_max_position_embeddings`"
    notes = "lengths written to agree with the factor"
    writes_original_length = True
    options = (
        Option("beta_fast", float, "rotations where extrapolation stops", default=32.0),
        Option("beta_slow", float, "rotations where interpolation starts", default=1.0),
        Option("attention_factor", float, "attention scaling", default_text="0.1·ln s + 1"),
    )

    def check(self, values):
        fast, slow = values.get("beta_fast"), values.get("beta_slow")
        require(fast is None or slow is None or fast > slow, "--beta-fast must be greater than --beta-slow")

    def inv_freq(self, params, dim, *, max_position_embeddings, seq_len=None):
        from longctx import rope

        return rope.yarn_inv_freq(
            float(params["rope_theta"]),
            dim,
            _factor(params),
            _original(params, max_position_embeddings),
            beta_fast=self.setting(params, "beta_fast"),
            beta_slow=self.setting(params, "beta_slow"),
            attention_factor=params.get("attention_factor"),
            mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"),
            truncate=params.get("truncate", True),
        )


@register
class Llama3(RopeMethod):
    name = rope_type = "llama3"
    help = "Llama 3.1: wavelength-dependent interpolation"
    writes = "`rope_type: llama3`, `factor`, `low/high_freq_factor`, `original_max_position_embeddings`"
    notes = "Llama 3.1 style"
    writes_original_length = True
    options = (
        Option("low_freq_factor", float, "low-frequency factor", default=1.0),
        Option("high_freq_factor", float, "high-frequency factor", default=4.0),
    )

    def check(self, values):
        low, high = values.get("low_freq_factor"), values.get("high_freq_factor")
        require(low is None or high is None or high > low, "--high-freq-factor must be greater than --low-freq-factor")

    def inv_freq(self, params, dim, *, max_position_embeddings, seq_len=None):
        from longctx import rope

        return rope.llama3_inv_freq(float(params["rope_theta"]), dim, _factor(params),
                                    _original(params, max_position_embeddings),
                                    low_freq_factor=self.setting(params, "low_freq_factor"),
                                    high_freq_factor=self.setting(params, "high_freq_factor")), 1.0


def rope_factors(value, flag: str = "--rope-factors") -> dict:
    """{'short_factor': [...], 'long_factor': [...]} from a JSON file holding those two lists (from Python, the
    dict)."""
    import json
    from pathlib import Path

    data = value
    if not isinstance(value, dict):
        require(Path(value).is_file(), f"{flag} {value}: no such file (JSON with short_factor and long_factor lists)")
        try:
            data = json.loads(Path(value).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UsageError(
                f'{flag} {value} is not valid JSON: write {{"short_factor": [...], "long_factor": [...]}}'
            ) from None
    require(isinstance(data, dict), f"{flag} {value} must hold an object with short_factor and long_factor lists")
    for key in ("short_factor", "long_factor"):
        factors = data.get(key)
        require(isinstance(factors, list) and factors, f"{flag} {value}: {key} must be a non-empty list of numbers")
        bad = [f for f in factors if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < math.inf]
        if bad:
            raise UsageError(f"{flag} {value}: {key} holds {bad[0]!r}; every factor must be a finite number > 0")
    return {key: [float(f) for f in data[key]] for key in ("short_factor", "long_factor")}


@register
class LongRope(RopeMethod):
    name = rope_type = "longrope"
    help = "LongRoPE: per-dimension rescale factors read from --rope-factors"
    writes = "`rope_type: longrope`, `factor`, `short_factor`, `long_factor`, `original_max_position_embeddings`"
    notes = ("factors searched offline (arXiv 2402.13753; Phi-3 ships them): `long_factor` past the trained length; "
             "the only scaling Phi-3 configs take")
    length_dependent = True  # short factors up to the trained length, long ones past it
    options = (Option("rope_factors", str, "JSON file with short_factor and long_factor lists (rotary dim / 2 each)",
                      check=rope_factors, metavar="FILE.json"),)

    def check(self, values):
        require(values.get("rope_factors") is not None, "method longrope needs --rope-factors FILE.json")

    def rope_parameters(self, *, base, factor, original, dim, values):
        factors = rope_factors(values["rope_factors"])
        for key, found in factors.items():
            require(len(found) == dim // 2, f"--rope-factors: {key} has {len(found)} values; the model rotates "
                                            f"{dim} dimensions per head, so it needs {dim // 2}")
        return {"rope_type": "longrope", "rope_theta": float(base), "factor": factor,
                "original_max_position_embeddings": original, **factors}

    def inv_freq(self, params, dim, *, max_position_embeddings, seq_len=None):
        """θ'ᵢ = θᵢ / extᵢ (ext: long factors past the trained length L, else short); attention √(1 + ln s / ln L)."""
        import torch

        from longctx import rope

        original = _original(params, max_position_embeddings)
        factor = params.get("factor") or max_position_embeddings / original  # transformers' fallback
        ext = params["long_factor"] if seq_len and seq_len > original else params["short_factor"]  # [d/2]
        scaling = params.get("attention_factor")
        if scaling is None:
            scaling = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        return rope.default_inv_freq(float(params["rope_theta"]), dim) / torch.tensor(ext, dtype=torch.float64), float(
            scaling
        )


# --------------------------------------------------------------------------------------- derived views
BASE_ONLY = Base.name  # what `--base` without `--method` means


def options() -> tuple[Option, ...]:
    """Every patch setting: `method`, the common ones, then each method's own, in registration order."""
    method = Option("method", str, "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
                    + f" (default: {BASE_ONLY} when --base is given)", check=None, choices=tuple(METHODS))
    return (method, *COMMON_OPTIONS, *(o for m in METHODS.values() for o in m.options))


def owner(option: Option) -> RopeMethod | None:
    """The method an option belongs to (None for the common ones)."""
    return next((m for m in METHODS.values() if option in m.options), None)


def option_help(option: Option) -> str:
    """`yarn: rotations where extrapolation stops (default 32)`: the help of the flag and of the YAML key."""
    method = owner(option)
    default = f" (default {option.default_shown})" if option.default_shown else ""
    return (f"{method.name}: " if method else "") + option.help + default


def scaling_methods() -> str:
    return ", ".join(name for name, m in METHODS.items() if m.scales)


def implied_method(values: dict) -> str:
    """The method when `--method` is not given: `--base` alone means changing only the base."""
    if values.get("method") is not None:
        return values["method"]
    require(values.get("base") is not None, f"give --method ({', '.join(METHODS)}) or --base")
    require(values.get("factor") is None, f"--factor needs a --method ({scaling_methods()})")
    return BASE_ONLY


def validate(values: dict) -> RopeMethod:
    """The method named by `values` (PatchSpec fields), after rejecting bad or contradictory settings with a
    one-line UsageError naming the flag."""
    name = values.get("method")
    require(name in METHODS, f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    for option in options():
        if option.check and values.get(option.name) is not None:
            option.check(values[option.name], option.flag)
    method.check(values)
    factor = values.get("factor")
    if not method.scales:
        require(
            factor is None, f"--factor has no meaning for --method {name}: pick a scaling method ({scaling_methods()})"
        )
    elif factor is not None:
        require(factor >= 1, f"--factor must be ≥ 1 for {name} (it extends the context), got {factor}")
    for other in METHODS.values():
        given = [o.flag for o in other.options if values.get(o.name) is not None]
        require(not given or other is method, f"{', '.join(given)} only apply to --method {other.name}")
    return method


def methods_for(model_type: str | None) -> tuple[str, ...]:
    """The methods whose rope_type a model type's transformers config accepts."""
    allowed = ROPE_TYPES_BY_MODEL_TYPE.get(model_type)
    return tuple(name for name, m in METHODS.items() if allowed is None or m.rope_type in allowed)


def for_rope_type(rope_type: str) -> RopeMethod | None:
    """The method that reads a config's rope_type (the first registered: `default` is read as plain rope); None
    for a type longctx does not model (`getattr(for_rope_type(t), "stateful", False)` then answers False)."""
    return next((m for m in METHODS.values() if m.rope_type == rope_type), None)


def inv_freq_for(params: dict, dim: int, *, max_position_embeddings: int, seq_len: int | None = None):
    """(θ' [d/2] float64, attention scaling) for a flat rope-parameters dict (transformers 5 layout)."""
    rope_type = params.get("rope_type", "default")
    method = for_rope_type(rope_type)
    if method is None:
        raise ValueError(f"rope_type {rope_type!r} is not modelled by longctx.rope_methods")
    return method.inv_freq(params, dim, max_position_embeddings=max_position_embeddings, seq_len=seq_len)


def methods_table() -> str:
    """The Markdown table of README.md's "1. Patch" section (tests/test_rope_methods.py keeps them equal)."""
    rows = ["| `--method` | what it writes | its own flags (default) | notes |", "|---|---|---|---|"]
    for method in METHODS.values():
        flags = ", ".join(f"`{o.flag}{' ' + o.metavar if o.metavar else ''}`"
                          + (f" ({o.default_shown})" if o.default_shown else "") for o in method.options)
        rows.append(f"| `{method.name}` | {method.writes} | {flags or '—'} | {method.notes} |")
    return "\n".join(rows)
