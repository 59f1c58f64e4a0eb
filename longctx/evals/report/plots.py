"""The report's figures, drawn with matplotlib's object API (no pyplot: no global state, no display needed).

Each function takes the report's `ModelSummary` list, a PNG path and the task whose cells it draws (a task's
`figures()` binds it), draws one figure comparing all models, and returns False without writing when no model
has the data (the report then leaves the figure out).
A model keeps the same colour in every figure; its trained length is a dashed line in that colour.
"""

from __future__ import annotations

import math
from pathlib import Path

from longctx.errors import UsageError
from longctx.evals.report.load import ModelSummary
from longctx.lengths import fmt_len

DPI = 110
HEATMAP_CMAP = "RdYlGn"   # red = fails, green = retrieves; the colour scale is fixed to 0..1 across panels
HEATMAP_COLUMNS = 3       # panels per row of the heatmap grid


def _matplotlib():
    """matplotlib, imported only when a figure is drawn (so `longctx --help` stays instant)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("longctx report needs matplotlib to draw its figures: pip install 'longctx[eval]'") from None
    return matplotlib, Figure


def _colour(matplotlib, index: int):
    return matplotlib.colormaps["tab10"](index % 10)


def _length_axis(ax, lengths) -> None:
    """log2 x axis with one labelled tick per evaluated length (4K, 8K, ...) and no minor ticks."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [fmt_len(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())


def ppl_vs_length(models: list[ModelSummary], path: Path, task) -> bool:
    """One perplexity curve per model over context length on a log axis, its 95% interval a light band clipped
    to the plotted range (a 2-window interval spans decades and would otherwise flatten every curve onto the
    axis), trained lengths dashed."""
    if not any(m.values.get(task.name) for m in models):
        return False
    matplotlib, Figure = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 5.2), layout="constrained")
    ax = fig.add_subplot()
    lengths, values, bands = set(), [], []
    for index, model in enumerate(models):
        intervals = model.ci95.get(task.name, {})
        points = [(n, ppl, intervals.get(n)) for n, ppl in model.values.get(task.name, {}).items()]
        finite = [(n, p, ci) for n, p, ci in points if p is not None and math.isfinite(p)]
        blown = [fmt_len(n) for n, p, _ in points if p is not None and not math.isfinite(p)]
        if not finite:
            continue
        xs, ys = [n for n, _, _ in finite], [p for _, p, _ in finite]
        label = model.label + (f" (ppl inf at {', '.join(blown)})" if blown else "")
        colour = _colour(matplotlib, index)
        ax.plot(xs, ys, marker="o", lw=2, color=colour, label=label)
        low, high = zip(*(_ci_offsets(p, ci) for _, p, ci in finite), strict=True)
        if any(low) or any(high):
            bands.append((xs, [p - lo for p, lo in zip(ys, low, strict=True)],
                          [p + hi for p, hi in zip(ys, high, strict=True)], colour))
        if model.trained:
            ax.axvline(model.trained, color=colour, ls="--", lw=1.2, alpha=0.75)
            lengths.add(model.trained)
        lengths.update(xs)
        values += ys
    if not values:
        return False
    _length_axis(ax, sorted(lengths))
    ax.set_yscale("log")
    bottom, top = min(values) / 1.5, max(values) * 1.5  # the data decide the range; bands are clipped to it
    for xs, lows, highs, colour in bands:
        ax.fill_between(xs, [max(v, bottom) for v in lows], [min(v, top) for v in highs], color=colour, alpha=0.08,
                        lw=0)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("context length (tokens, log2 scale)")
    ax.set_ylabel("perplexity (log scale)")
    series = {m.series.get(task.name) for m in models if m.values.get(task.name)}
    ax.set_title("Perplexity vs context length" + (f" ({task.variant_name(next(iter(series)))})"
                                                   if len(series) == 1 else ""))
    ax.grid(alpha=0.3, which="both")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", ls="--", label="trained length (model's colour)"))
    if bands:
        handles.append(Patch(color="grey", alpha=0.2, label="95% interval (clipped to the plot)"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    fig.savefig(path, dpi=DPI)
    return True


def _ci_offsets(ppl: float, ci) -> tuple[float, float]:
    """Error-bar lengths below and above from a [low, high] interval; 0 when the interval is missing or odd."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci)):
        return 0.0, 0.0
    low, high = ci
    return (max(ppl - low, 0.0) if math.isfinite(low) else 0.0, max(high - ppl, 0.0) if math.isfinite(high) else 0.0)


def heatmaps(models: list[ModelSummary], path: Path, task) -> bool:
    """Kamradt's layout of a retrieval task's `value_key`: x = context length, y = depth from 0% (top) to 100%
    (bottom), one panel per model side by side and one row per variant (NIAH needles/distractors, passkey mode)."""
    value_key = task.value_key
    present = [m for m in models if m.cells.get(task.name)]
    if not present:
        return False
    matplotlib, Figure = _matplotlib()
    import numpy as np

    counts: dict[tuple, int] = {}
    for model in present:
        for variant, records in model.cells[task.name].items():
            counts[variant] = counts.get(variant, 0) + len(records)
    variants = sorted(counts, key=lambda v: (-counts[v], str(v)))
    grids = {}  # (row, column) -> (lengths, depths, grid)
    for row, variant in enumerate(variants):
        for column, model in enumerate(present):
            cells = {(r.get("depth"), r["length"]): r.get(value_key) for r in model.cells[task.name].get(variant, [])
                     if isinstance(r.get("depth"), (int, float))}
            if not cells:
                continue
            depths, lengths = sorted({d for d, _ in cells}), sorted({n for _, n in cells})
            grid = np.full((len(depths), len(lengths)), np.nan)
            for (depth, length), value in cells.items():
                if isinstance(value, (int, float)):
                    grid[depths.index(depth), lengths.index(length)] = value
            grids[row, column] = lengths, depths, grid
    if not grids:
        return False

    # a grid of at most HEATMAP_COLUMNS panels a row (one row of nine at page width is unreadable); each variant
    # starts a new row of panels
    shown = {row: [column for column in range(len(present)) if (row, column) in grids] for row in range(len(variants))}
    columns = min(HEATMAP_COLUMNS, max(len(c) for c in shown.values()))
    first_row = [0]  # the grid row where each variant's panels start (models without that variant are left out)
    for row in range(len(variants)):
        first_row.append(first_row[-1] + -(-len(shown[row]) // columns))
    n_rows = first_row[-1]
    max_depths = max(len(d) for _, d, _ in grids.values())
    max_lengths = max(len(n) for n, _, _ in grids.values())
    fig = Figure(figsize=(columns * max(3.4, 0.75 * max_lengths + 1.5) + 1.2,
                          n_rows * max(2.8, 0.45 * max_depths + 1.5) + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad="#e6e6e6")
    image = None
    for row, variant in enumerate(variants):
        for place, column in enumerate(shown[row]):
            model = present[column]
            ax = axes[first_row[row] + place // columns][place % columns]
            ax.set_axis_on()
            panel_title = model.label + (f"\n{task.variant_name(variant)}" if len(variants) > 1 else "")
            lengths, depths, grid = grids[row, column]
            image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
            font = max(7.0, min(11.0, 90.0 / max(len(lengths), len(depths))))
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    red, green, blue, _ = cmap(value)
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.45
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=font,
                            color="white" if dark else "black")
            ax.set_xticks(range(len(lengths)), [fmt_len(n) for n in lengths], fontsize=9)
            ax.set_yticks(range(len(depths)), [f"{d * 100:g}%" if max(depths) <= 1 else f"{d:g}%" for d in depths],
                          fontsize=9)
            inside = sum(n <= model.trained for n in lengths) if model.trained else 0
            if 0 < inside < len(lengths):  # boundary between trained and extrapolated lengths
                ax.axvline(inside - 0.5, color="black", ls="--", lw=2)
            ax.set_title(panel_title, fontsize=11)
            ax.set_xlabel("context length", fontsize=9)
            if place % columns == 0:
                ax.set_ylabel("depth", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label=value_key)
    fig.suptitle(f"{task.heatmap_title} (dashed: trained length)")
    fig.savefig(path, dpi=DPI)
    return True


def kamradt_heatmap(models: list[ModelSummary], path: Path, task) -> bool:
    """Greg Kamradt's heatmap (viz/CreateVizFromLLMTesting.ipynb): a depth × length pivot of the score, length on
    x as "Token Limit", depth on y as "Depth Percent" from 0% at the top, his colours (`task.colours`, red →
    yellow → green over 0..1), one panel per model and variant (`task.panels`)."""
    shown = task.panels(models)
    if not shown:
        return False
    matplotlib, Figure = _matplotlib()
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list(task.name, list(task.colours)).with_extremes(bad="#e6e6e6")
    columns = min(HEATMAP_COLUMNS, len(shown))
    rows = -(-len(shown) // columns)
    width = max(len(p["lengths"]) for p in shown)
    height = max(len(p["depths"]) for p in shown)
    fig = Figure(figsize=(max(6.5, columns * max(4.0, 0.9 * width + 2.0)), rows * max(3.2, 0.4 * height + 2.0)),
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel()[len(shown):]:
        ax.set_axis_off()
    image = None
    for ax, panel in zip(axes.ravel(), shown, strict=False):
        lengths, depths = panel["lengths"], panel["depths"]
        grid = np.full((len(depths), len(lengths)), np.nan)
        for (depth, length), value in panel["scores"].items():
            if isinstance(value, (int, float)):
                grid[depths.index(depth), lengths.index(length)] = value
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black")
        ax.set_xticks(range(len(lengths)), [fmt_len(n) for n in lengths], rotation=45)
        ax.set_yticks(range(len(depths)), [f"{100 * d:g}" for d in depths])
        ax.set_xlabel("Token Limit")
        ax.set_ylabel("Depth Percent")
        ax.set_title(panel["title"], fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Score")
    fig.suptitle('Pressure Testing\nFact Retrieval Across Context Lengths ("Needle In A HayStack")', fontsize=11)
    fig.savefig(path, dpi=DPI)
    return True


def ppl_buckets(models: list[ModelSummary], path: Path, task) -> bool:
    """Loss by position bucket at each model's longest perplexity length: the position where loss climbs is
    where extrapolation breaks, which a single perplexity number averages away."""
    matplotlib, Figure = _matplotlib()
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    fig = Figure(figsize=(9, 5.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for index, model in enumerate(models):
        records = model.latest(task.name)
        with_buckets = [n for n, r in records.items() if r.get("buckets")]
        if not with_buckets:
            continue
        longest = max(with_buckets)
        points = sorted(
            ((b["start"] + b["end"]) / 2, b["nll"])
            for b in records[longest]["buckets"]
            if isinstance(b, dict)
            and all(isinstance(b.get(k), (int, float)) for k in ("start", "end", "nll"))
            and math.isfinite(b["nll"])
        )
        if not points:
            continue
        colour = _colour(matplotlib, index)
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.8, color=colour,
                label=f"{model.label} at {fmt_len(longest)}")
        if model.trained and model.trained < longest:
            ax.axvline(model.trained, color=colour, ls="--", lw=1.2, alpha=0.75)
        drawn = True
    if not drawn:
        return False
    longest = max(max(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata()))
    step = 2 ** max(round(math.log2(longest / 8)), 6)  # ~8 ticks at powers of two: 4K, 8K, 12K, ...
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_len(int(x))))
    ax.set_xlim(left=0)
    ax.set_xlabel("token position (bucket centre)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss by position at the longest evaluated length (dashed: trained length)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.savefig(path, dpi=DPI)
    return True
