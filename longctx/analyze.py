"""`longctx analyze`: what the theory says about a model's rotary base and a target context.

Per dimension pair: frequency, period, and whether a full period fits in the training context (only those
dimensions saw every phase). Then the critical dimension and extrapolation bound of arXiv 2310.05209, the
base lower bound of *Base of RoPE Bounds Context Length* for the target, the NTK base for the needed factor,
and a recommendation with its reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from longctx.errors import require


@dataclass
class Analysis:
    rotary_dim: int
    base: float
    train_length: int
    target_length: int
    dimensions: list[dict]
    d_extra: int
    t_extra_current_base: float
    base_for_target_after_tuning: float
    base_lower_bound: float
    current_base_satisfies_bound: bool
    first_negative_m: int | None
    factor: float
    ntk_base: float
    critical_base: float
    small_base_thresholds: dict
    recommendation: str
    reason: str


def analyze(dim: int, base: float, train_length: int, target_length: int) -> Analysis:
    """All numbers for a rotary dimension `dim`, pre-training `base` and context, and a target context."""
    from longctx import rope  # torch: not at import, so `longctx --help` stays instant

    require(dim >= 4 and dim % 2 == 0, f"--head-dim must be an even number ≥ 4, got {dim}")
    require(math.isfinite(base) and base > 1, f"--base must be a finite number > 1, got {base}")
    require(train_length > 0 and target_length > 0, "lengths must be positive")
    theta = rope.default_inv_freq(base, dim)
    period = rope.periods(theta)
    dimensions = [{"pair": i, "dims": f"{2 * i},{2 * i + 1}", "frequency": float(theta[i]),
                   "period": float(period[i]), "full_period_seen": bool(period[i] <= train_length)}
                  for i in range(dim // 2)]
    d_extra = rope.critical_dim(dim, base, train_length)
    factor = max(1.0, target_length / train_length)
    lower_bound = rope.base_lower_bound(dim, target_length)
    first_negative = rope.first_negative_position(base, dim, target_length)
    tuned_base = rope.base_for_extrapolation(dim, target_length, train_length, base)
    # The passing set of B(m) ≥ 0 is not monotonic in the base: the rounded recommendation is checked itself.
    recommended_base = _round_up(max(lower_bound, tuned_base))
    while not rope.satisfies_base_bound(recommended_base, dim, target_length):
        recommended_base = _round_up(recommended_base * 1.02)
    ntk = rope.ntk_base(base, factor, dim)
    if target_length <= train_length and first_negative is None:
        recommendation = "no patch needed"
        reason = f"the target {target_length} is within the trained context {train_length} and the base satisfies the bound"
    else:
        recommendation = (f"longctx patch --base {recommended_base:g} --target-length {target_length}, "
                          f"then fine-tune at {train_length} tokens; training-free: --method yarn --factor {factor:g}")
        reason = (f"a tuned base ≥ {tuned_base:.3g} puts the extrapolation bound 2π·β^(d_extra/d) (d_extra = {d_extra}) "
                  f"past {target_length}, and a base ≥ {lower_bound:.3g} keeps B(m) ≥ 0 up to {target_length} "
                  f"(below it long-context retrieval tends to fail while perplexity stays low); "
                  + ("the current base already satisfies the bound" if first_negative is None
                     else f"the current base {base:g} violates it from m = {first_negative}"))
    return Analysis(dim, float(base), int(train_length), int(target_length), dimensions, d_extra,
                    rope.extrapolation_bound(dim, base, train_length), tuned_base, lower_bound,
                    first_negative is None, first_negative, factor, ntk,
                    rope.critical_base(train_length, train_length, base), rope.small_base_thresholds(train_length),
                    recommendation, reason)


def _round_up(value: float) -> float:
    """Round up to two significant digits so recommended bases read like 2.9e+07, not 28836129.4."""
    exponent = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / exponent) * exponent


def format_table(result: Analysis) -> str:
    lines = [f"rotary dim {result.rotary_dim}, base {result.base:g}, trained at {result.train_length}, "
             f"target {result.target_length}", "",
             f"{'pair':>4} {'dims':>7} {'frequency':>12} {'period':>14}  full period in training?"]
    for row in result.dimensions:
        lines.append(f"{row['pair']:>4} {row['dims']:>7} {row['frequency']:>12.4e} {row['period']:>14.1f}  "
                     f"{'yes' if row['full_period_seen'] else 'no'}")
    lines += [
        "",
        f"critical dimension d_extra        {result.d_extra}   (2·⌈(d/2)·log_base(T_train/2π)⌉, arXiv 2310.05209)",
        f"extrapolation bound, this base    {result.t_extra_current_base:,.0f} tokens   (2π·base^(d_extra/d))",
        f"tuned base for the target         {result.base_for_target_after_tuning:.4g}   (T_extra ≥ {result.target_length} after tuning at {result.train_length})",
        f"base lower bound for the target   {result.base_lower_bound:.4g}   (B(m) = Σ cos(m·θᵢ) ≥ 0 for all m ≤ {result.target_length})",
        f"this base satisfies the bound     {'yes' if result.current_base_satisfies_bound else f'no (B(m) < 0 first at m = {result.first_negative_m})'}",
        f"factor needed                     {result.factor:g}",
        f"NTK-aware base for that factor    {result.ntk_base:.4g}   (base·s^(d/(d−2)))",
        f"critical base, tuning at {result.train_length:<8} {result.critical_base:.4g}   (β₀: tuned bases above it extrapolate past the tuning length)",
        "small-base thresholds             " + ", ".join(f"{k.replace('beta', 'β')} = {v:.4g}" for k, v in result.small_base_thresholds.items())
        + "   (2T/π, T/π, T/2π: the small-base regimes of 2310.05209)",
        "",
        f"recommendation: {result.recommendation}",
        f"why: {result.reason}",
    ]
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze", help="critical dimension, extrapolation bound and base lower bound for a target context",
        description="Analyse a model's rotary base (or --head-dim/--base/--train-length) for --target-length.")
    parser.add_argument("--model", help="Hub id, checkpoint directory or .gguf (reads its config)")
    parser.add_argument("--head-dim", type=int, help="rotary dimension per head (instead of --model)")
    parser.add_argument("--base", type=float, help="rope_theta (instead of --model)")
    parser.add_argument("--train-length", type=int, help="trained context (instead of --model)")
    parser.add_argument("--target-length", type=int, help="context you want (default: 8 × trained)")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def run(args) -> int:
    dim, base, train = args.head_dim, args.base, args.train_length
    if args.model:
        from longctx import rope_config
        from longctx.sources import read_config_json, resolve_model_dir

        config = read_config_json(resolve_model_dir(args.model, need_weights=False))
        require(rope_config.has_rope(config), f"{args.model} has no rotary position embeddings (RoPE): nothing to analyze")
        params = rope_config.rope_parameters(config)
        dim = dim or rope_config.rotary_dim(config)
        base = base or params["rope_theta"]
        train = train or rope_config.original_length(config)
    missing = [flag for flag, value in (("--head-dim", dim), ("--base", base), ("--train-length", train)) if not value]
    require(not missing, f"give --model, or all of --head-dim, --base and --train-length (missing {', '.join(missing)})")
    target = args.target_length or 8 * train
    result = analyze(int(dim), float(base), int(train), int(target))
    print(json.dumps(asdict(result), indent=2) if args.json else format_table(result))
    return 0
