"""`longctx eval ruler`: RULER's synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER) on any HF checkpoint.

    longctx eval ruler --model DIR --lengths 4k,8k --tasks niah_single_1,vt --samples 10 \\
        --haystack-dir ../shared/data/books [--chat-template auto|on|off] [--past-context]

Templates, needles, haystacks, token budgets and scoring are RULER's (`longctx.evals.tasks.ruler_tasks`, which also
lists where we differ). One cell is one (task, length): `samples` prompts, each built from its own seed, each
exactly L − tokens_to_generate tokens long (chat wrapper, answer prefix and BOS included), decoded greedily for
at most RULER's budget, then graded on the text with RULER's metric (`string_match_all`: the share of expected
strings present, ignoring case). Every sample is journaled (needles, query, expected, generated text, tokens
generated, why decoding stopped) the moment it is done, so a rerun resumes at the next sample; a cell is written
once all its samples are there. The cell's score is RULER's (mean over samples × 100, stored as a fraction for
the verdict); its Wilson 95% interval counts each expected string once (found / expected).

Speed, grades unchanged: (1) samples of one cell that share the text before their first needle (RULER reads
noise and essay haystacks from the same start) reuse its KV cache, prompts taken in token order; (2) up to
`batch` samples decode together, one batched forward per step; (3) decoding stops at EOS, at the budget, or, with
`stop_when_found` (default), as soon as every expected string is in the text: string_match_all can only gain from
more text, so the grade is the one the full budget would give (the journal says `stopped: found`). qa_1/qa_2 need
SQuAD/HotpotQA, which are not generated here: they are skipped with one line.

`chat_template`: auto (the tokenizer's template when it has one), on (refuse a tokenizer without one), off
(RULER's `base`: the plain task text). The wrapper actually used is recorded in every cell.

This module is the task: its options, cells, journal and scores. The prompts are built by `ruler_prompts` (the
generators: `ruler_niah` for niah_*, `ruler_vt_cwe_fwe` for vt, cwe and fwe) and decoded by `ruler_decode`.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

from longctx.errors import UsageError
from longctx.evals.run.results import cell_key
from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.base import RETRIEVAL, AnswerScoredTask, Figure
from longctx.evals.tasks.ruler_decode import BATCH, generate
from longctx.evals.tasks.ruler_prompts import Wrapper, build_sample
from longctx.evals.tasks.scoring import prefix_sharing_allowed, trial_seed, wilson_interval

PROTOCOL = 1  # in every key: bump when prompts change, so old cells are recomputed, not mixed in
DEFAULT_TASKS = ("niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,"
                 "niah_multivalue,niah_multiquery,vt,cwe,fwe")
THRESHOLD = 85.6  # RULER: Llama-2-7B's average at 4K, the bar of its "effective length"


@dataclass
class Config:
    """What a RULER run does; each field is also a key of `tasks.ruler` in a suite YAML and a flag."""

    lengths: list[int]                    # L: prompt + tokens_to_generate, exactly
    tasks: str = DEFAULT_TASKS            # comma-separated RULER task names (synthetic.yaml), or "all"
    samples: int = 10                     # prompts per (task, length); RULER's default is 500
    haystack_dir: str | None = None       # folder of .txt books for essay haystacks (RULER: Paul Graham's essays)
    chat_template: str = "auto"           # auto, on or off
    seed: int = 0
    share_prefix: bool = True             # reuse the KV cache of text samples share
    stop_when_found: bool = True          # stop decoding once every expected string is present (same grade)
    batch: int = BATCH                    # samples of one length decoded together (1: one at a time)
    past_context: bool = False            # allow L above the context the model's config claims
    threshold: float = THRESHOLD          # effective length: longest L whose average (×100) stays ≥ this

    def __post_init__(self):
        if self.chat_template not in ("auto", "on", "off"):
            raise UsageError(f"--chat-template {self.chat_template!r}: use auto, on or off")
        for flag, value in (("--samples", self.samples), ("--batch", self.batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be a whole number ≥ 1")
        self.tasks = ",".join(parse_tasks(self.tasks))


def parse_tasks(spec) -> list[str]:
    """'niah_single_1,vt' -> names in RULER's order; 'all' -> every task; an unknown name -> did you mean."""
    from longctx.errors import unknown_name

    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    names = [str(x).strip() for x in items if str(x).strip()]
    if names == ["all"]:
        return list(rt.SYNTHETIC)
    for name in names:
        if name not in rt.SYNTHETIC:
            raise unknown_name("RULER task", name, list(rt.SYNTHETIC))
    if not names:
        raise UsageError("--tasks names no task")
    return [name for name in rt.SYNTHETIC if name in names]


def summarize(name: str, samples: list[dict]) -> dict:
    """RULER's score of a cell (its metric over the generated texts), the expected strings found / asked, and a
    Wilson interval over its answers (`base.answer_counts`: the strings of one answer are not independent)."""
    task = rt.SYNTHETIC[name][0]
    preds = [rt.postprocess(s["generated"]) for s in samples]
    score = rt.METRICS[task](preds, [s["expected"] for s in samples])
    hits, refs = sum(s["found"] for s in samples), sum(len(s["expected"]) for s in samples)
    return {
        "score": score / 100,
        "ruler_score": score,
        "found": hits,
        "refs": refs,
        "score_ci95": wilson_interval(score / 100 * len(samples), len(samples)),
    }


def haystack_label(res: rt.Resources) -> str:
    """The essay books a run loaded: their word count and a digest of their start ("none" without)."""
    if not res.essay:
        return "none"
    digest = hashlib.sha1(" ".join(res.essay[:4096]).encode()).hexdigest()[:8]
    return f"books:{len(res.essay)}w:{digest}"


def reads_essay(name) -> bool:
    return name in rt.SYNTHETIC and rt.needs_essay(name)


def cell_haystack(name: str, run_label: str) -> str:
    """The essay a subtask's prompts read: the run's books (`haystack_label`) for the essay tasks, "none" for the
    others (their noise and needle haystacks are built in), so a cell's key and table do not depend on the tasks
    run beside it. Cells written before this was per subtask carry the run's label (`Ruler.run` still finds them)."""
    return run_label if reads_essay(name) else "none"


class Ruler(AnswerScoredTask):
    name, label, metric, order = "ruler", "RULER", "RULER score", 3
    kind, value_key = RETRIEVAL, "score"  # Wilson intervals count answers (`base.answer_counts`)
    help = "RULER's synthetic tasks (niah_*, vt, cwe, fwe): tasks × lengths, RULER's templates and scoring"
    Config = Config

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--tasks",
            default=DEFAULT_TASKS,
            help="comma-separated RULER tasks or 'all' (default: the 11 synthetic ones; qa_1/qa_2 are skipped)",
        )
        parser.add_argument("--samples", type=int, default=10, help="prompts per (task, length) (default: 10)")
        parser.add_argument(
            "--haystack-dir",
            dest="haystack_dir",
            help="folder of .txt books for the essay haystack (RULER uses Paul Graham's essays)",
        )
        parser.add_argument(
            "--chat-template",
            dest="chat_template",
            choices=("auto", "on", "off"),
            default="auto",
            help="wrap prompts in the tokenizer's chat template: auto (when it has one), on, off",
        )
        parser.add_argument(
            "--no-prefix-cache",
            dest="share_prefix",
            action="store_false",
            help="a fresh prefill for every sample instead of reusing the KV cache of shared text",
        )
        parser.add_argument(
            "--full-generation",
            dest="stop_when_found",
            action="store_false",
            help="always decode RULER's whole budget (default: stop once every answer is present)",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=BATCH,
            help=f"samples of one length decoded together, greedy and graded alike (default: {BATCH}; 1: one at a "
                 "time)",
        )
        parser.add_argument(
            "--past-context",
            dest="past_context",
            action="store_true",
            help="allow lengths above the context the model's config claims",
        )
        parser.add_argument(
            "--threshold",
            type=float,
            default=THRESHOLD,
            help=f"effective length: longest length averaging ≥ this (default {THRESHOLD})",
        )

    def key(self, cfg: Config, name: str, length: int, wrapper: Wrapper, haystack: str, samples: bool = True) -> str:
        fields = {
            "name": name,
            "length": length,
            **({"samples": cfg.samples} if samples else {}),
            "chat": "on" if wrapper.chat else "off",
            "haystack": haystack,
            "seed": cfg.seed,
            "protocol": PROTOCOL,
        }
        return cell_key(self.name, **fields)

    def run(self, model, tokenizer, cfg: Config, writer) -> list[dict]:

        names = parse_tasks(cfg.tasks)
        for skipped in [n for n in names if rt.SYNTHETIC[n][0] == "qa"]:
            print(
                f"ruler: {skipped} skipped: it needs {rt.SYNTHETIC[skipped][1]['dataset']} through `datasets`, "
                "which longctx does not generate yet",
                file=sys.stderr,
            )
        names = [n for n in names if rt.SYNTHETIC[n][0] != "qa"]
        rope = writer.model_rope(model)
        claimed = rope.claimed_length
        if not cfg.past_context and max(cfg.lengths) > claimed:
            raise UsageError(
                f"length {max(cfg.lengths)} is above the {claimed} tokens this model's config claims: "
                "pass --past-context to evaluate past it"
            )
        wrapper = Wrapper(tokenizer, cfg.chat_template)
        res = rt.load_words()
        if any(rt.needs_essay(n) for n in names):
            if not cfg.haystack_dir:
                raise UsageError(
                    "RULER's essay tasks (niah_single_2/3, multikey_1, multivalue, multiquery) need "
                    "--haystack-dir: a folder of .txt books, e.g. ../shared/data/books"
                )
            res = rt.with_essay(res, rt.essay_from_folder(cfg.haystack_dir))
        run_label = haystack_label(res)
        cells = [(name, length) for name in names for length in cfg.lengths]

        def keys(name: str, length: int, samples: bool = True) -> list[str]:
            """The cell's key, then the one a run of these tasks wrote before labels were per subtask."""
            return list(dict.fromkeys(self.key(cfg, name, length, wrapper, label, samples)
                                      for label in (cell_haystack(name, run_label), run_label)))

        def key_of(name: str, length: int) -> str:
            candidates = keys(name, length)
            return next((key for key in candidates if writer.done(key)), candidates[0])

        for name, length in cells:  # bad input fails here, before any model work or any line is written
            if not writer.done(key_of(name, length)):
                build_sample(name, length, 0, self.seed(cfg, name, length, 0), res, wrapper)
        share = cfg.share_prefix and prefix_sharing_allowed(model, rope)[0]
        if not writer.world.main:  # one process does RULER (its samples share caches); the others wait
            writer.settle()
            return writer.cells()
        out = []
        for name, length in cells:
            key = key_of(name, length)
            if not writer.done(key):
                self.run_cell(model, tokenizer, cfg, writer, name, length, keys(name, length, samples=False), key,
                              wrapper, res, cell_haystack(name, run_label), share)
            out.append(writer.cell(key))
        writer.settle()
        return out

    @staticmethod
    def seed(cfg: Config, name: str, length: int, index: int) -> int:
        return trial_seed(cfg.seed, f"ruler/{name}", length, index)

    def run_cell(self, model, tokenizer, cfg, writer, name, length, journals, key, wrapper, res, haystack,
                 share) -> None:
        """`journals`: the cell's journal key (samples of any count, so more samples later reuse these), then an
        older one whose samples count too."""
        journal = journals[0]

        def journaled() -> dict:
            return {unit: sample for old in reversed(journals) for unit, sample in writer.samples(old).items()}

        have = journaled()
        todo = [
            build_sample(name, length, i, self.seed(cfg, name, length, i), res, wrapper)
            for i in range(cfg.samples)
            if i not in have
        ]
        todo.sort(key=lambda s: s.ids)  # neighbours share the longest prefixes
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.samples,
            initial=cfg.samples - len(todo),
            desc=f"{writer.dir.name} ruler {name} {length}",
            unit="sample",
            disable=None,
        )
        for sample, text, n, stopped, seconds in generate(
            model, tokenizer, todo, share=share, stop_when_found=cfg.stop_when_found, batch=cfg.batch
        ):
            record = {
                **sample.record(),
                "generated": text,
                "found": rt.found(text, sample.draft.outputs),
                "tokens_generated": n,
                "stopped": stopped,
                "seconds": round(seconds, 3),
            }
            writer.add_sample(journal, record, unit=sample.index)
            bar.update(1)
        bar.close()
        done = journaled()
        samples = [done[i] for i in range(cfg.samples)]
        cell = {
            "task": self.name,
            "key": key,
            "subtask": name,
            "length": length,
            "samples": cfg.samples,
            "tokens_to_generate": rt.TASKS[rt.SYNTHETIC[name][0]]["tokens_to_generate"],
            "seed": cfg.seed,
            "haystack": haystack,
            "protocol": PROTOCOL,
            **wrapper.record(),
            **summarize(name, samples),
            "seconds": round(sum(s.get("seconds") or 0.0 for s in samples), 3),
            "records": samples,
            "stop_when_found": cfg.stop_when_found,
            "batch": cfg.batch,
            "threshold": cfg.threshold,
        }
        writer.append(cell)

    def variant(self, record: dict) -> tuple:
        """Chat template and essay; a task without an essay is "none" whatever an older cell recorded."""
        return (record.get("chat_template"), record.get("haystack") if reads_essay(record.get("subtask")) else "none")

    def group(self, records: list[dict]) -> dict[tuple, list[dict]]:
        """Cells without an essay (niah_single_1, vt...) join the table of their chat template's essay when it has
        just one, so running vt alone and niah_single_2 later gives one table, not two."""
        groups = super().group(records)
        for variant in [v for v in groups if v[1] == "none"]:
            essays = [v for v in groups if v[0] == variant[0] and v[1] != "none"]
            if len(essays) == 1:
                groups[essays[0]] += groups.pop(variant)
        return groups

    def variant_name(self, variant: tuple) -> str:
        return f"chat template {variant[0]}, essay haystack {variant[1]}"

    def unit(self, record: dict) -> str:
        return f"{self.name}/{record.get('subtask')}"

    def values(self, records: list[dict]) -> dict[int, float]:
        """Length -> the mean score over the tasks run at that length (RULER's average when all were)."""
        by_length: dict[int, list[float]] = {}
        for record in records:
            if isinstance(record.get("score"), (int, float)):
                by_length.setdefault(record["length"], []).append(record["score"])
        return {n: sum(v) / len(v) for n, v in sorted(by_length.items())}

    def figures(self) -> list[Figure]:
        return []

    def report_lines(self, models) -> list[str]:
        from longctx.evals.tasks.ruler_report import report_lines

        return report_lines(models, self)


TASK = Ruler()
__all__ = ["Config", "Ruler", "TASK", "parse_tasks", "summarize"]
