"""`longctx analyze`: what the theory says about a model's rotary base and a target context.

Per dimension pair: frequency, period, and whether a full period fits in the training context (only those
dimensions saw every phase). Then the critical dimension and extrapolation bound of arXiv 2310.05209, the smallest
base that keeps B(m) ≥ 0 up to the target (*Base of RoPE Bounds Context Length*, exact on a stated grid), the NTK
base for the needed factor, and a recommendation with its reason. Numpy only (`longctx.rope_bounds`): no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from longctx.errors import require
from longctx.lengths import MAX_CONTEXT, token_count  # also where the exact bound search takes minutes


@dataclass
class Analysis:
    rotary_dim: int
    base: float
    train_length: int
    target_length: int
    dimensions: list[dict]
    d_extra: int
    t_extra_current_base: float | None  # None: no bound, every dimension completes a period in training
    base_for_target_after_tuning: float
    base_lower_bound: float  # the smallest grid base with B(m) ≥ 0 for every m ≤ target (every one below fails)
    base_lower_bound_grid_ratio: float  # ratio of consecutive grid bases, 10^(1/K)
    all_pass_base: float | None  # --all-pass: from here every 1%-grid base up to all_pass_checked_to passes
    all_pass_checked_to: float | None
    current_base_satisfies_bound: bool
    first_negative_m: int | None
    factor: float
    ntk_base: float
    critical_base: float  # β₀ when fine-tuning at the target length
    small_base_thresholds: dict
    recommendation: str
    reason: str


def analyze(dim: int, base: float, train_length: int, target_length: int, *, all_pass: bool = False) -> Analysis:
    """All numbers for a rotary dimension `dim`, pre-training `base` and context, and a target context."""
    from longctx import rope_bounds as rb  # numpy only: analyze never imports torch

    require(dim >= 4 and dim % 2 == 0, f"--head-dim must be an even number ≥ 4, got {dim}")
    require(math.isfinite(base) and base > 1, f"--base must be a finite number > 1, got {base}")
    require(train_length >= 8, f"--train-length must be at least 8 tokens, got {train_length}")
    require(
        1 <= target_length <= MAX_CONTEXT,
        f"--target-length must be between 1 and {MAX_CONTEXT:,} (2^24) tokens, "
        f"got {target_length:,}: longer makes the exact bound search take minutes",
    )
    theta = rb.inv_freq(base, dim)
    dimensions = [
        {
            "pair": i,
            "dims": f"{2 * i},{2 * i + 1}",
            "frequency": float(theta[i]),
            "period": float(rb.TWO_PI / theta[i]),
            "full_period_seen": bool(rb.TWO_PI / theta[i] <= train_length),
        }
        for i in range(dim // 2)
    ]
    d_extra = rb.critical_dim(dim, base, train_length)
    t_extra = rb.extrapolation_bound(dim, base, train_length)
    factor = max(1.0, target_length / train_length)
    bound = rb.smallest_passing_base(dim, target_length)
    threshold = rb.all_pass_threshold(dim, target_length, bound.base) if all_pass else None
    first_negative = rb.first_negative(base, dim, target_length)
    tuned_base = rb.base_for_extrapolation(dim, target_length, train_length, base)
    # The passing set of B(m) ≥ 0 is not monotonic in the base: the rounded recommendation is checked itself.
    recommended_base = _round_up(max(bound.base, tuned_base))
    while not rb.base_passes(recommended_base, dim, target_length):
        recommended_base = _round_up(recommended_base * 1.02)
    if target_length <= train_length and first_negative is None:
        recommendation = "no patch needed"
        reason = (
            f"the target {target_length} is within the trained context {train_length} and the base satisfies the bound"
        )
    else:
        recommendation = (f"longctx patch --base {recommended_base:g} --target-length {target_length}, "
                          f"then fine-tune at {train_length} tokens; training-free: --method yarn --factor {factor:g}")
        tuned = ("every dimension already completes a period in training (d_extra = d), so no tuned base is needed "
                 "for extrapolation" if d_extra >= dim else
                 f"a tuned base ≥ {tuned_base:.3g} puts the extrapolation bound 2π·β^(d_extra/d) (d_extra = {d_extra}) "
                 f"past {target_length}")
        reason = (f"{tuned}, and {recommended_base:g} keeps B(m) ≥ 0 up to {target_length} (checked; the smallest base "
                  f"that does is {bound.base:.4g}, and below it long-context retrieval tends to fail while perplexity "
                  f"stays low); " + ("the current base already satisfies the bound" if first_negative is None
                                     else f"the current base {base:g} violates it from m = {first_negative}"))
    return Analysis(
        dim,
        float(base),
        int(train_length),
        int(target_length),
        dimensions,
        d_extra,
        None if math.isinf(t_extra) else t_extra,
        tuned_base,
        bound.base,
        10 ** (1 / bound.steps_per_decade),
        threshold[0].base if threshold else None,
        threshold[1] if threshold else None,
        first_negative is None,
        first_negative,
        factor,
        rb.ntk_base(base, factor, dim),
        rb.critical_base(train_length, target_length, base),
        rb.small_base_thresholds(train_length),
        recommendation,
        reason,
    )


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
    t_extra = (
        "none       (d_extra = d: every dimension completes a period in training, so no position is out of "
        "distribution and 2310.05209 sets no limit; base ≤ β₃ = T_train/2π = "
        f"{result.train_length / (2 * math.pi):.4g} is its small-base regime)"
        if result.t_extra_current_base is None
        else f"{result.t_extra_current_base:,.0f} tokens   (2π·base^(d_extra/d))"
    )
    grid = f"{(result.base_lower_bound_grid_ratio - 1) * 100:.3g}%"
    lines += [
        "",
        f"critical dimension d_extra        {result.d_extra}   (2·⌈(d/2)·log_base(T_train/2π)⌉, arXiv 2310.05209)",
        f"extrapolation bound, this base    {t_extra}",
        f"tuned base for the target         {result.base_for_target_after_tuning:.4g}   (T_extra ≥ "
        f"{result.target_length} after tuning at {result.train_length})",
        f"smallest base keeping B(m) ≥ 0    {result.base_lower_bound:.4g}   (B(m) = Σ cos(m·θᵢ) for every m ≤ "
        f"{result.target_length}; "
        f"bases {grid} apart from 2 up, every one below fails; larger bases can fail too: islands)",
    ]
    if result.all_pass_base is not None:
        lines.append(
            f"every base passes from            {result.all_pass_base:.4g}   (every base 1% apart from there to "
            f"{result.all_pass_checked_to:.4g} passes; none above is checked)"
        )
    lines += [
        "this base satisfies the bound     "
        f"{'yes' if result.current_base_satisfies_bound else f'no (B(m) < 0 first at m = {result.first_negative_m})'}",
        f"factor needed                     {result.factor:g}",
        f"NTK-aware base for that factor    {result.ntk_base:.4g}   (base·s^(d/(d−2)))",
        f"critical base, tuning at {result.target_length:<8} {result.critical_base:.4g}   (β₀: fine-tuned at "
        f"{result.target_length} tokens, "
        f"a base above it extrapolates past {result.target_length}; at or below it, not)",
        "small-base thresholds             "
        + ", ".join(f"{k.replace('beta', 'β')} = {v:.4g}" for k, v in result.small_base_thresholds.items())
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
    parser.add_argument(
        "--head-dim", "--dim", dest="head_dim", type=int, help="rotary dimension per head (instead of --model)"
    )
    parser.add_argument("--base", type=float, help="rope_theta (instead of --model)")
    parser.add_argument("--train-length", type=token_count, help="trained context (instead of --model)")
    parser.add_argument(
        "--target-length",
        type=token_count,
        help=f"context you want, e.g. 65536, 64K or 1e6 (default: 8 × trained; at most {MAX_CONTEXT:,})",
    )
    parser.add_argument(
        "--all-pass",
        action="store_true",
        help="also find the base from which every base (1%% apart) passes: seconds more for long targets",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def run(args) -> int:
    dim, base, train = args.head_dim, args.base, args.train_length
    if args.model:
        from longctx import rope_config
        from longctx.checkpoint_files import read_config_json
        from longctx.sources import resolve_model_dir

        config = read_config_json(resolve_model_dir(args.model, need_weights=False))
        require(
            rope_config.has_rope(config), f"{args.model} has no rotary position embeddings (RoPE): nothing to analyze"
        )
        params = rope_config.rope_parameters(config)
        dim = dim or rope_config.rotary_dim(config)
        base = base or params["rope_theta"]
        train = train or rope_config.original_length(config)
    missing = [flag for flag, value in (("--head-dim", dim), ("--base", base), ("--train-length", train)) if not value]
    require(
        not missing, f"give --model, or all of --head-dim, --base and --train-length (missing {', '.join(missing)})"
    )
    target = args.target_length or 8 * train
    result = analyze(int(dim), float(base), int(train), int(target), all_pass=args.all_pass)
    print(json.dumps(asdict(result), indent=2) if args.json else format_table(result))
    return 0
