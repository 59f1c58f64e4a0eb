"""What an evaluation task is to the rest of longctx: the protocol every task module's `TASK` follows.

A task declares its settings (`Config`, whose fields are also its suite YAML keys and, where it adds them, its
`longctx eval NAME` flags), runs its cells, and says how the report reads them: which records are comparable
(`variant`), the number shown per length (`values`) with its interval (`ci95`), and its figures. The suite, the
CLI, the summary, the report and the bench iterate over `longctx.evals.tasks.all_tasks()` and never name a task.

`kind` is what the verdict weighs a task as: the perplexity (one task, which also has `value(record)` and
`windows_text(records)` for the verdict and the provenance lines) against retrieval (the mean of every
retrieval task, which the SUPERFICIAL flag and the effective length judge). `RetrievalTask` is everything a
needle-style task shares (a lengths × depths grid graded by `scoring.run_grid`, pooled Wilson intervals, a
heatmap, the bench's `prompts`); a subclass adds its prompts.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from longctx.errors import UsageError
from longctx.evals.tasks.scoring import run_grid, trial_seeds, wilson_interval

PERPLEXITY, RETRIEVAL = "perplexity", "retrieval"
DEPTHS_HELP = "needle depths: start:stop:count (0:1:5 = 0,.25,.5,.75,1), a count (11) or a list (0,0.5,1)"


@dataclass(frozen=True)
class Figure:
    """One PNG of the report, drawn by the function named `plot` of `longctx.evals.report.plots` as
    `plot(models, path, task)`, which returns False when no model has its data. A task names its figures; the
    report draws them (so no task imports the report)."""

    file: str
    caption: str
    plot: str              # a function of longctx.evals.report.plots
    task: Task
    detail: bool = False   # shown after every task's overview figures


class Task:
    """The protocol; a subclass sets the class attributes and implements the methods that raise."""

    name: str       # suite key, `longctx eval NAME`, OUT/<label>/NAME.jsonl, its column in summary.json
    label: str      # how the report names its series: "perplexity", "NIAH"
    metric: str     # what its table shows per length: "perplexity", "NIAH score"
    kind: str       # PERPLEXITY or RETRIEVAL
    value_key: str  # the field of a cell that its table shows per length (retrieval: mean over depths)
    order: int      # position among the report's tables and figures
    help: str       # its line in `longctx eval --help`
    Config: type    # dataclass of its settings; `lengths` and `seed` are common to every task

    @property
    def title(self) -> str:
        """Heading of its table: the metric, capitalised."""
        return self.metric[:1].upper() + self.metric[1:]

    def add_arguments(self, parser) -> None:
        """Its own flags of `longctx eval NAME` (beyond --model, --lengths, --seed...), each named after a
        Config field so that the CLI passes it on."""

    def run(self, model, tokenizer, cfg, writer) -> list[dict]:
        """Every cell of `cfg`, finished ones read back from `writer` (a `results.ResultsWriter`)."""
        raise NotImplementedError

    def variant(self, record: dict) -> tuple:
        """The settings besides length and depth that make cells comparable (one series per variant)."""
        raise NotImplementedError

    def variant_name(self, variant: tuple) -> str:
        raise NotImplementedError

    def group(self, records: list[dict]) -> dict[tuple, list[dict]]:
        """Variant -> its records, in their order: the tables and series of a report."""
        groups: dict[tuple, list[dict]] = {}
        for record in records:
            groups.setdefault(self.variant(record), []).append(record)
        return groups

    def unit(self, record: dict) -> str:
        """What a verdict weighs like with like: retrieval inside the window judges a longer length only on the
        units both measured (RULER: each subtask; other tasks: the task)."""
        return self.name

    def values(self, records: list[dict]) -> dict[int, float]:
        """Length -> the number its table shows, from the records of one variant."""
        raise NotImplementedError

    def ci95(self, records: list[dict]) -> dict[int, list[float] | None]:
        """Length -> a 95% interval around that number, where the records allow one."""
        return {}

    def figures(self) -> list[Figure]:
        return []


def as_float(value, default=None) -> float | None:
    """A finite-or-infinite float from JSON; NaN and junk become `default` (a NaN perplexity means it blew up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return default
    return float(value)


def mean_by_length(records: list[dict], value_key: str) -> dict[int, float]:
    """Mean over depths of `value_key` per length (cells without a number are left out)."""
    values: dict[int, list[float]] = {}
    for record in records:
        value = as_float(record.get(value_key))
        if value is not None:
            values.setdefault(record["length"], []).append(value)
    return {length: sum(v) / len(v) for length, v in sorted(values.items())}


def pooled_counts(records: list[dict], hits: str, totals: str) -> dict[int, tuple[int, int]]:
    """Per length, (hits, totals) of all its depths' trials pooled; a length with a cell lacking those counts
    (older results) has none."""
    counts: dict[int, list[int]] = {}
    for record in records:
        k, n = record.get(hits), record.get(totals)
        pooled = counts.setdefault(record["length"], [0, 0])
        if isinstance(k, int) and isinstance(n, int) and pooled[1] >= 0:
            pooled[0], pooled[1] = pooled[0] + k, pooled[1] + n
        else:
            pooled[1] = -1
    return {length: (k, n) for length, (k, n) in sorted(counts.items()) if n > 0}


def answer_counts(records: list[dict], value_key: str = "score") -> dict[int, tuple[float, int]]:
    """Per length, (sum of answer scores, answers) over its cells: each answer is one trial and its success is its
    score in [0, 1] (the share of its expected strings or key phrases found). The strings within one answer are
    not independent trials, and counting answers keeps the pooled rate equal to the mean of equal-sized cells
    (RULER's average), so the interval holds the number shown. A length with a cell lacking either has none."""
    counts: dict[int, list[float]] = {}
    for record in records:
        value, n = record.get(value_key), record.get("samples")
        pooled = counts.setdefault(record["length"], [0.0, 0])
        if isinstance(value, (int, float)) and isinstance(n, int) and n > 0 and pooled[1] >= 0:
            pooled[0], pooled[1] = pooled[0] + value * n, pooled[1] + n
        else:
            pooled[1] = -1
    return {length: (round(k, 6), n) for length, (k, n) in sorted(counts.items()) if n > 0}


def answer_interval(record: dict, value_key: str = "score") -> list[float] | None:
    """One cell's Wilson 95% interval over its answers (`answer_counts`), None without a score or sample count."""
    counts = answer_counts([record], value_key).get(record["length"])
    return wilson_interval(*counts) if counts else None


class AnswerScoredTask(Task):
    """A retrieval task whose answers are each scored in [0, 1] (RULER: the share of its expected strings; Kamradt:
    of its key phrases, or a judge's score): verdicts and intervals count answers (`answer_counts`)."""

    def trial_counts(self, records: list[dict]) -> dict[int, tuple[float, int]]:
        """Length -> (answer scores summed, answers) over its cells: what verdicts count. With equal samples per
        cell the rate is the mean the table shows (RULER's average), so the interval holds that number."""
        return answer_counts(records, self.value_key)

    def ci95(self, records: list[dict]) -> dict[int, list[float]]:
        return {n: wilson_interval(k, m) for n, (k, m) in self.trial_counts(records).items()}


def pooled_ci95(records: list[dict], hits: str, totals: str) -> dict[int, list[float]]:
    """Per length, the Wilson 95% interval of all its depths' trials pooled (`hits` of `totals`)."""
    return {length: wilson_interval(k, n) for length, (k, n) in pooled_counts(records, hits, totals).items()}


def with_control(lengths: list[int], trained: int | None, control: bool | int) -> list[int]:
    """`lengths`, plus one inside the trained length when every one lies beyond it: the in-window control a
    verdict on the longer lengths needs (`control`: True = the longest power of two <= trained, a number = that
    length, False = none)."""
    if control is False or not trained or any(n <= trained for n in lengths):
        return list(lengths)
    if control is True:
        length = 1 << (trained.bit_length() - 1)
    elif isinstance(control, int) and 0 < control <= trained:
        length = control
    else:
        raise UsageError(
            f"control must be true, false or a length within the trained {trained} tokens, not {control!r}"
        )
    return sorted({length, *lengths})


class RetrievalTask(Task):
    """A lengths × depths grid of retrieval cells, `trials` trials each (see `scoring.run_grid`). A subclass
    sets the attributes below and implements `key_fields`, `builder` and `summarizer`; its Config has at
    least lengths, depths, trials, mode, seed and share_prefix."""

    kind = RETRIEVAL
    counts: tuple[str, str]         # (hits, totals) of a cell that the pooled Wilson interval adds up
    grade: Callable[..., bool | None]   # the content grade: does greedy decoding's text hold the expected answer?
                                    # (text, expected, complete=False): None while the rest of the text could
                                    # change it (`scoring.grade_prompts`)
    independent_depths = False      # each (length, depth, trial) its own prompt, not one trial moved in depth
    flag_defaults: dict             # {"depths": spec, "trials": n}: defaults of --depths and --trials
    heatmap_title: str              # its figure: one heatmap of `value_key` per model and variant
    heatmap_caption: str

    def key_fields(self, cfg, length: int, depth: float) -> dict:
        """The fields of a cell's key (a rerun skips keys already written; other fields, other cells)."""
        raise NotImplementedError

    def builder(self, tokenizer, cfg) -> Callable[[int, random.Random], object]:
        """`build(length, rng)` -> a trial object with `.prompt(depth)` and `.sample(seed, grades)`."""
        raise NotImplementedError

    def summarizer(self, cfg) -> Callable[[list[dict]], dict]:
        """The cell's numbers from its trials' samples (must include `value_key` and `counts`)."""
        raise NotImplementedError

    def run(self, model, tokenizer, cfg, writer) -> list[dict]:
        if cfg.trials < 1:
            raise UsageError("--trials must be at least 1")
        trained = writer.model_rope(model).trained_length
        lengths = with_control(cfg.lengths, trained, getattr(cfg, "control", False))
        build = self.builder(tokenizer, cfg)
        for length in sorted(set(lengths) - set(cfg.lengths)):
            try:
                build(length, random.Random(0))  # the control's prompt must fit its length
            except UsageError as exc:
                lengths.remove(length)
                if writer.world.main:
                    print(f"warning: {self.name}: no in-window control at {length} tokens: {exc}", file=sys.stderr)
        return run_grid(model, tokenizer, writer, task=self.name, lengths=lengths, depths=cfg.depths,
                        trials=cfg.trials, seed=cfg.seed, mode=cfg.mode, key_fields=partial(self.key_fields, cfg),
                        build=build, grade=self.grade, summarize=self.summarizer(cfg),
                        share_prefix=cfg.share_prefix, independent_depths=self.independent_depths)

    def prompts(self, tokenizer, cfg, length: int) -> list[tuple[float, int, object]]:
        """(depth, trial seed, `scoring.Prompt`) of every trial of one length, built as `run` builds them: the
        bench's baseline grades exactly these."""
        build, trials, prompts = self.builder(tokenizer, cfg), {}, []
        for (depth, _), seed in trial_seeds(cfg.seed, self.name, length, cfg.depths, cfg.trials,
                                            self.independent_depths).items():
            if seed not in trials:  # without independent depths one trial serves every depth
                trials[seed] = build(length, random.Random(seed))
            prompts.append((depth, seed, trials[seed].prompt(depth)))
        return prompts

    def add_arguments(self, parser) -> None:
        depths, trials = self.flag_defaults["depths"], self.flag_defaults["trials"]
        parser.add_argument("--depths", default=depths, help=f"{DEPTHS_HELP} (default: {depths})")
        parser.add_argument(
            "--trials", type=int, default=trials, help=f"trials per (length, depth) (default: {trials})"
        )
        parser.add_argument("--mode", choices=("forced", "generate"), default="forced",
                            help="forced: one teacher-forced forward shows what greedy decoding emits (greedy "
                                 "decoding runs only where it leaves the grade open); generate: greedy decoding "
                                 "always. Both grade by content and keep the token-exact grade beside it "
                                 "(default: forced)")
        parser.add_argument("--no-control", dest="control", action="store_false",
                            help="lengths all beyond the trained length: do not add the in-window control length "
                                 "(the longest power of two <= the trained length) that verdicts compare against")
        parser.add_argument("--no-prefix-cache", dest="share_prefix", action="store_false",
                            help="a full forward for every depth instead of reusing the KV cache of the shared filler")

    def values(self, records: list[dict]) -> dict[int, float]:
        return mean_by_length(records, self.value_key)

    def strict_values(self, records: list[dict]) -> dict[int, float]:
        """Length -> the token-exact grade (`<value_key>_strict`, mean over depths) where every cell has one."""
        strict = f"{self.value_key}_strict"
        lacking = {record["length"] for record in records if as_float(record.get(strict)) is None}
        return {n: v for n, v in mean_by_length(records, strict).items() if n not in lacking}

    def graded_by(self, records: list[dict]) -> dict[int, str]:
        """Length -> how its number was graded: "content", or "token-exact" where forced-mode cells written before
        content grading (without `<value_key>_strict`) hold only the strict grade ("mixed" where both meet)."""
        strict, by_length = f"{self.value_key}_strict", {}
        for record in records:
            old = record.get("mode") == "forced" and strict not in record
            by_length.setdefault(record["length"], set()).add("token-exact" if old else "content")
        return {n: grades.pop() if len(grades) == 1 else "mixed" for n, grades in sorted(by_length.items())}

    def ci95(self, records: list[dict]) -> dict[int, list[float]]:
        return pooled_ci95(records, *self.counts)

    def trial_counts(self, records: list[dict]) -> dict[int, tuple[int, int]]:
        """Length -> (correct, trials) pooled over depths: what the verdict's intervals count."""
        return pooled_counts(records, *self.counts)

    def strict_trial_counts(self, records: list[dict]) -> dict[int, tuple[int, int]]:
        """Length -> (token-exact correct, trials) pooled over depths, so a verdict can weigh cells graded alike:
        forced-mode cells written before content grading hold only this grade (in `<hits>`); a length with a
        cell that has neither has none."""
        hits, strict_key = self.counts[0], f"{self.value_key}_strict"
        strict = [{**r, hits: r.get(f"{hits}_strict")} if strict_key in r or r.get("mode") != "forced" else r
                  for r in records]
        return pooled_counts(strict, *self.counts)

    def figures(self) -> list[Figure]:
        return [Figure(f"{self.name}_heatmaps.png", self.heatmap_caption, "heatmaps", self)]
