"""The rope-base study's own page (docs/results/rope-base-scratch/README.md, bpb.png) from its eval results.

    python eval/studies/rope_base_report.py docs/results/rope-base-scratch

Reads OUT/<label>/{ppl,passkey}.jsonl and model.json as `longctx eval suite` wrote them. With a byte
vocabulary the `bpb` of a perplexity cell is mean NLL / ln 2 per byte, exact. For each model: bpb by length,
Δbpb against its own bpb at the training length, the measured break point (first length where Δbpb exceeds
BREAK_DELTA) next to the extrapolation bound `longctx.rope_bounds` predicts (arXiv 2310.05209), whether its base
keeps B(m) ≥ 0 up to each length (arXiv 2405.14591), and passkey accuracy by length. The general report
(report.md/html) is written by the suite itself; this page adds what is specific to the study.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from longctx import rope_bounds, rope_config
from longctx.evals.report.judge import (  # the general report's passkey thresholds
    RETRIEVAL_FAILED,
    RETRIEVAL_OK,
)
from longctx.files import read_jsonl, write_text_atomic

BREAK_DELTA = 0.10  # bits per byte above the training-length value: the model no longer extrapolates
PRETRAIN_BASE = 1e4  # the tuned models all start from the base-1e4 model
ARCHITECTURE = Path(__file__).resolve().parents[2] / "recipes/configs/rope-base-scratch/byte-llama-4x256.json"


def load(out: Path) -> list[dict]:
    models = []
    for folder in sorted(p for p in out.iterdir() if (p / "model.json").is_file()):
        info = json.loads((folder / "model.json").read_text())
        ppl = {r["length"]: r for r in read_jsonl(folder / "ppl.jsonl", repair=False)}
        passkey: dict[int, list[float]] = {}
        by_depth: dict[int, dict[float, tuple[int, int]]] = {}
        digits: dict[int, list[int]] = {}  # length -> [key digits right, key digits]
        for cell in read_jsonl(folder / "passkey.jsonl", repair=False):
            passkey.setdefault(cell["length"], []).append(cell["accuracy"])
            by_depth.setdefault(cell["length"], {})[float(cell["depth"])] = (cell["correct"], cell["trials"])
            if cell.get("mode", "forced") == "forced":
                tally = digits.setdefault(cell["length"], [0, 0])
                for sample in cell.get("samples", []):
                    if "answer_hits" in sample:  # one token per byte: the last len(key) answer tokens are the digits
                        tally[0] += sum(sample["answer_hits"][-len(sample["passkey"]):])
                        tally[1] += len(sample["passkey"])
        training = training_record(folder, Path(info["model_dir"]))
        models.append({"label": folder.name, "info": info, "bpb": {n: r["bpb"] for n, r in sorted(ppl.items())},
                       "passkey": {n: sum(v) / len(v) for n, v in sorted(passkey.items())},
                       "passkey_by_depth": {n: dict(sorted(d.items())) for n, d in sorted(by_depth.items())},
                       "passkey_digits": dict(sorted(digits.items())),
                       "trained": training["last_step"],  # step, loss, tokens, elapsed_s of its last step
                       "train_runs": training["runs"],
                       "eval_runs": read_jsonl(folder / "runs.jsonl", repair=False)})
    return models


def training_record(folder: Path, model_dir: Path) -> dict:
    """{last_step, runs} of a model's training, kept in OUT/<label>/training.json: written from the model's
    folder (last line of train_log.jsonl, the recipe's runs.jsonl) while it exists, read back once the model
    is gone (models live in .cache, results in git)."""
    path = folder / "training.json"
    log = read_jsonl(model_dir / "train_log.jsonl", repair=False)
    if log:
        record = {"last_step": log[-1], "runs": read_jsonl(model_dir / "runs.jsonl", repair=False)}
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
        return record
    return json.loads(path.read_text()) if path.is_file() else {"last_step": {}, "runs": []}


def provenance(models: list[dict]) -> list[str]:
    """Each model's training (from its output folder: last logged step, recipe run records) and evaluation runs
    (OUT/<label>/runs.jsonl): command, commit, machine and wall time."""
    lines = ["", "## Runs", "", "| model | steps | tokens | final loss (nats/byte) | training wall | training runs "
             "(commit, wall) | evaluation runs (commit, wall) |", "|---|---|---|---|---|---|---|"]
    commands = set()
    for model in models:
        trained = model["trained"]
        runs = [(r.get("commit", "?")[:7], r.get("wall_seconds"), r.get("command")) for r in model["train_runs"]]
        evals = [(r.get("commit", "?")[:7], r.get("wall_seconds"), r.get("command")) for r in model["eval_runs"]]
        commands.update(c for _, _, c in runs + evals if c)
        lines.append(f"| {model['label']} | {trained.get('step', '–')} | {trained.get('tokens', 0):,} | "
                     f"{trained.get('loss', float('nan')):.3f} | {trained.get('elapsed_s', 0) / 60:.1f} min | "
                     + (", ".join(f"{c} {w / 60:.1f} min" for c, w, _ in runs) or "–") + " | "
                     + (", ".join(f"{c} {w / 60:.1f} min" for c, w, _ in evals) or "–") + " |")
    machines = {json.dumps(r.get("machine"), sort_keys=True) for m in models for r in m["train_runs"] + m["eval_runs"]}
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in sorted(commands)) if commands else "",
              "Machines: " + "; ".join(sorted(machines)) if machines else ""]
    return lines


def analyse(model: dict) -> dict:
    info = model["info"]
    base = float(info["rope"]["rope_theta"])
    train = int(info["trained_length"])
    config = Path(info["model_dir"]) / "config.json"  # gone where only the results were kept: the study's shape
    dim = rope_config.rotary_dim(json.loads((config if config.is_file() else ARCHITECTURE).read_text()))
    tuned = "tune-" in model["label"]  # tune-base1e4-to-*, bound-tune-to-*: trained on from a base-1e4 model
    bound = rope_bounds.extrapolation_bound(dim, base, train, PRETRAIN_BASE if tuned else None)
    reference = model["bpb"].get(train)
    deltas = {n: b - reference for n, b in model["bpb"].items()} if reference is not None else {}
    broken = next((n for n, d in deltas.items() if n > train and d > BREAK_DELTA), None)
    return {"base": base, "train": train, "dim": dim, "bound": bound, "deltas": deltas, "break": broken,
            "b_m_ok": {n: rope_bounds.first_negative(base, dim, n) is None for n in model["bpb"]}}


def fmt_len(n: float) -> str:
    if n == math.inf:
        return "∞"
    return f"{n / 1024:.3g}K" if n >= 1024 else f"{n:.0f}"


def is_bound_model(model: dict) -> bool:
    """The 13.3 models (bound-*.yaml): trained to retrieve (copy warm-up, then half of their text passkey
    documents), reported on their own."""
    return model["label"].startswith("bound-")


def superficial_lengths(model: dict, a: dict) -> list[int]:
    """Lengths past training where bits per byte hold (Δ ≤ BREAK_DELTA) while retrieval, solid at the training
    length (≥ RETRIEVAL_OK), fails (< RETRIEVAL_FAILED): the pattern of arXiv 2405.14591."""
    train = a["train"]
    if model["passkey"].get(train, 0.0) < RETRIEVAL_OK:
        return []
    return [
        n
        for n, d in a["deltas"].items()
        if n > train and d <= BREAK_DELTA and model["passkey"].get(n, 1.0) < RETRIEVAL_FAILED
    ]


def bound_verdict(model: dict, a: dict) -> str:
    flagged = superficial_lengths(model, a)
    if flagged:
        return (f"SUPERFICIAL at {', '.join(fmt_len(n) for n in flagged)}: bits per byte hold (Δ ≤ {BREAK_DELTA}) "
                f"while retrieval < {RETRIEVAL_FAILED}")
    at_train = model["passkey"].get(a["train"], 0.0)
    if at_train < RETRIEVAL_OK:
        return (
            f"retrieval at its training length {at_train:.2f} (below the {RETRIEVAL_OK} needed to judge longer lengths)"
        )
    return f"retrieval at its training length {at_train:.2f}; no length where bits per byte hold and retrieval fails"


def bound_section(models: list[dict]) -> list[str]:
    """13.3: bits per byte next to passkey accuracy (and by depth) for the retrieval-trained models, with
    the lower bound of the base at each length and a verdict per model."""
    if not models:
        return []
    lengths = sorted({n for m in models for n in m["bpb"]} | {n for m in models for n in m["passkey"]})
    dim = analyse(models[0])["dim"]
    lower = {n: rope_bounds.smallest_passing_base(dim, n).base for n in lengths}
    lines = [
        "",
        "## Lower bound of the base: bits per byte against retrieval (13.3)",
        "",
        "The base-1e4 model trained from scratch on dense copy text (`bound-copy-base1e4.yaml`), then at "
        "512 tokens with half of its text synthetic passkey documents (`bound-scratch-base1e4.yaml`), then "
        "trained on at 512 tokens with its base changed "
        "(`bound-tune-to-*.yaml`). Cells: bpb (Δ against the model's own 512-token bpb) · passkey accuracy "
        f"(mean over depths). ⚠: the base breaks B(m) ≥ 0 at that length. Lower bound of the base for head dim {dim} "
        "(smallest base with B(m) ≥ 0 for all m ≤ L, `longctx.rope_bounds`): "
        + ", ".join(f"{fmt_len(n)}: {lower[n]:.3g}" for n in lengths)
        + ".",
        "",
        "| model | base | " + " | ".join(fmt_len(n) for n in lengths) + " |",
        "|" + "---|" * (len(lengths) + 2),
    ]
    verdicts = []
    for model in models:
        a = analyse(model)
        cells = []
        for n in lengths:
            bpb = f"{model['bpb'][n]:.3f} ({a['deltas'].get(n, 0):+.2f})" if n in model["bpb"] else "–"
            key = f"{model['passkey'][n]:.2f}" if n in model["passkey"] else "–"
            cells.append(
                f"{bpb} · {key}" + ("" if rope_bounds.first_negative(a["base"], a["dim"], n) is None else " ⚠")
            )
        lines.append(f"| {model['label']} | {a['base']:g} | " + " | ".join(cells) + " |")
        verdicts.append(f"- **{model['label']}**: {bound_verdict(model, a)}")
    depths = sorted({d for m in models for by in m["passkey_by_depth"].values() for d in by})
    lines += ["", "Passkey by depth of the key (correct of trials; depth 0 = the key at the start, farthest from "
              "the question): " + " / ".join(f"{d:g}" for d in depths), "",
              "| model | " + " | ".join(fmt_len(n) for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for model in models:
        by = model["passkey_by_depth"]
        lines.append(
            f"| {model['label']} | "
            + " | ".join(
                " / ".join(str(by[n][d][0]) if d in by[n] else "–" for d in depths)
                + f" of {max(t for _, t in by[n].values())}"
                if n in by
                else "–"
                for n in lengths
            )
            + " |"
        )
    lines += ["", "Digits of the key right in the forced answer (`answer_hits` of the passkey samples: each digit "
              "the argmax given the gold digits before it; chance ≈ 0.10; right of total over all depths and trials; "
              "– where the cells predate `answer_hits`): a graded score that shows partial retrieval where exact "
              "keys are all missed.", "",
              "| model | " + " | ".join(fmt_len(n) for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for model in models:
        tally = model["passkey_digits"]
        lines.append(f"| {model['label']} | " + " | ".join(
            f"{tally[n][0] / tally[n][1]:.2f} ({tally[n][0]}/{tally[n][1]})" if tally.get(n, [0, 0])[1] else "–"
            for n in lengths) + " |")
    return lines + ["", "Verdicts:", "", *verdicts]


def render(models: list[dict]) -> str:
    bound_models = [m for m in models if is_bound_model(m)]
    models = [m for m in models if not is_bound_model(m)]
    lengths = sorted({n for m in models for n in m["bpb"]})
    head = "| model | base | " + " | ".join(fmt_len(n) for n in lengths) + " | break (Δ>{:.2f}) | predicted bound |"
    lines = ["# Rope base from scratch: bits per byte and retrieval past the training length", "",
             "Byte-level Llama (4 layers, width 256, head dim 64) trained at 512 tokens; evaluated on the held-out "
             "book. Cells: bpb (Δ against the model's own 512-token bpb). Break: first length where Δbpb > "
             f"{BREAK_DELTA}; predicted: `extrapolation_bound` of arXiv 2310.05209 (tuned models: d_extra from the "
             "pre-training base 1e4). ⚠ marks lengths where the base breaks B(m) ≥ 0 (arXiv 2405.14591).", "",
             head.format(BREAK_DELTA), "|" + "---|" * (len(lengths) + 4)]
    for model in models:
        a = analyse(model)
        cells = []
        for n in lengths:
            if n not in model["bpb"]:
                cells.append("–")
                continue
            warn = "" if a["b_m_ok"][n] else " ⚠"
            cells.append(f"{model['bpb'][n]:.3f} ({a['deltas'].get(n, 0):+.3f}){warn}")
        lines.append(
            f"| {model['label']} | {a['base']:g} | "
            + " | ".join(cells)
            + f" | {fmt_len(a['break']) if a['break'] else '> ' + fmt_len(lengths[-1])} | {fmt_len(a['bound'])} |"
        )
    lines += ["", "## Passkey accuracy by length (mean over depths, 5 trials each)", "",
              "| model | " + " | ".join(fmt_len(n) for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for model in models:
        lines.append(f"| {model['label']} | " + " | ".join(
            f"{model['passkey'][n]:.2f}" if n in model["passkey"] else "–" for n in lengths) + " |")
    lines += bound_section(bound_models)
    lines += provenance(models + bound_models)
    return "\n".join(lines) + "\n"


def plot(models: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, prefix, title in (
        (axes[0], "scratch-", "trained from scratch at 512"),
        (axes[1], "tune-", "base 1e4, tuned at 512"),
    ):
        for model in (m for m in models if m["label"].startswith(prefix)):
            lengths = sorted(model["bpb"])
            ax.plot(lengths, [model["bpb"][n] for n in lengths], marker="o", label=model["label"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length (bytes = tokens)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("bits per byte (held-out book)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bound(models: list[dict], path: Path) -> None:
    """13.3 at a glance: bits per byte (left) next to passkey accuracy (right) by length, one line per base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for model in models:
        label = f"{model['label']} (base {float(model['info']['rope']['rope_theta']):g})"
        lengths = sorted(model["bpb"])
        left.plot(lengths, [model["bpb"][n] for n in lengths], marker="o", label=label)
        lengths = sorted(model["passkey"])
        right.plot(lengths, [model["passkey"][n] for n in lengths], marker="o", label=label)
    for ax, ylabel in ((left, "bits per byte (held-out book)"), (right, "passkey accuracy (mean over depths)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length (bytes = tokens)")
        ax.set_ylabel(ylabel)
    right.set_ylim(-0.05, 1.05)
    right.legend(fontsize=8)
    fig.suptitle("retrieval-trained byte model at 512 tokens, base changed: perplexity vs retrieval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: str) -> int:
    folder = Path(out)
    models = load(folder)
    if not models:
        print(f"no results in {folder}: run the eval stage first", file=sys.stderr)
        return 2
    write_text_atomic(folder / "study.md", render(models))
    plot([m for m in models if not is_bound_model(m)], folder / "bpb.png")
    written = ["study.md", "bpb.png"]
    if any(map(is_bound_model, models)):
        plot_bound([m for m in models if is_bound_model(m)], folder / "bound.png")
        written.append("bound.png")
    print(f"wrote {', '.join(str(folder / name) for name in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/rope-base-scratch"))
