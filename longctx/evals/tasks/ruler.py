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
noise and essay haystacks from the same start) reuse its KV cache, prompts taken in token order; (2) decoding
stops at EOS, at the budget, or, with `stop_when_found` (default), as soon as every expected string is in the
text: string_match_all can only gain from more text, so the grade is the one the full budget would give (the
journal says `stopped: found`). Batched decoding is not done: on CPU the prefill dominates. qa_1/qa_2 need
SQuAD/HotpotQA, which are not generated here: they are skipped with one line.

`chat_template`: auto (the tokenizer's template when it has one), on (refuse a tokenizer without one), off
(RULER's `base`: the plain task text). The wrapper actually used is recorded in every cell.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass

from longctx.errors import UsageError
from longctx.evals.run.results import cell_key
from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.base import RETRIEVAL, Figure, Task, pooled_counts
from longctx.evals.tasks.scoring import (
    common_prefix_length,
    crop_cache,
    prefix_sharing_allowed,
    trial_seed,
    wilson_interval,
)

PROTOCOL = 1  # in every key: bump when prompts change, so old cells are recomputed, not mixed in
DEFAULT_TASKS = ("niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,"
                 "niah_multivalue,niah_multiquery,vt,cwe,fwe")
THRESHOLD = 85.6  # RULER: Llama-2-7B's average at 4K, the bar of its "effective length"
MIN_SHARED = 0.5  # reuse a cached prefix only when it covers half the prompt (see scoring.grade_prompts)


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
    past_context: bool = False            # allow L above the context the model's config claims
    threshold: float = THRESHOLD          # effective length: longest L whose average (×100) stays ≥ this

    def __post_init__(self):
        if self.chat_template not in ("auto", "on", "off"):
            raise UsageError(f"--chat-template {self.chat_template!r}: use auto, on or off")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise UsageError("--samples must be a whole number ≥ 1")
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


class Wrapper:
    """The prompt around a user turn: the tokenizer's chat template (generation prompt added), or nothing."""

    def __init__(self, tokenizer, mode: str):
        has = bool(getattr(tokenizer, "chat_template", None))
        if mode == "on" and not has:
            raise UsageError("--chat-template on: this tokenizer has no chat template (pass --chat-template off for "
                             "RULER's plain 'base' prompt)")
        self.tokenizer, self.chat = tokenizer, has if mode == "auto" else mode == "on"
        self.head = self.tail = ""
        if self.chat:
            marker = "\x00user\x00"
            text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                                 add_generation_prompt=True)
            self.head, self.tail = text.split(marker)

    def text(self, user: str, answer_prefix: str) -> str:
        return self.head + user + self.tail + answer_prefix  # RULER: the answer prefix after the assistant turn starts

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=not self.chat)  # a chat template writes its own BOS

    def record(self) -> dict:
        return {"chat_template": "on" if self.chat else "off", "chat_wrapper": [self.head, self.tail]}


@dataclass
class Sample:
    name: str
    length: int
    index: int
    seed: int
    ids: list[int]
    draft: rt.Draft
    budget: int
    exact: bool

    def record(self) -> dict:
        meta = {k: v for k, v in self.draft.meta.items()}
        return {"index": self.index, "seed": self.seed, "prompt_tokens": len(self.ids), "exact": self.exact,
                "prompt_sha1": hashlib.sha1(str(self.ids).encode()).hexdigest()[:12], "expected": self.draft.outputs,
                **meta}


def build_sample(name: str, length: int, index: int, seed: int, res: rt.Resources, wrapper: Wrapper) -> Sample:
    """Sample `index` of (task, length): the largest haystack whose prompt fits L − budget, then `spill` cut so the
    prompt takes exactly that many tokens. Where no cut of the text hits the count (a tokenizer that turns one more
    character into two more tokens at that spot), an essay haystack starts a few words later (`essay_offset`)."""
    sample = _build_sample(name, length, index, seed, res, wrapper)
    for offset in (1, 2, 3, 5, 8) if rt.needs_essay(name) and not sample.exact else ():
        shifted = _build_sample(name, length, index, seed, rt.with_essay(res, res.essay[offset:]), wrapper)
        if shifted.exact:
            shifted.draft.meta["essay_offset"] = offset
            return shifted
    return sample


def _build_sample(name: str, length: int, index: int, seed: int, res: rt.Resources, wrapper: Wrapper) -> Sample:
    task, args = rt.SYNTHETIC[name]
    if task == "qa":
        raise UsageError(f"{name} needs SQuAD/HotpotQA, which longctx does not generate")
    budget = rt.TASKS[task]["tokens_to_generate"]
    target = length - budget
    generator = rt.GENERATORS[task]
    extra = {}
    if task == "variable_tracking":
        encode = wrapper.tokenizer.encode
        extra["icl"] = rt.vt_icl(args, random.Random(f"{seed}|icl"),
                                 lambda text, limit: len(encode(text, add_special_tokens=False)) <= limit)

    def make(n: int) -> rt.Draft:
        return generator(args, random.Random(seed), n, res, length, **extra)

    def count(draft: rt.Draft, cut: int = 0) -> list[int]:
        return wrapper.ids(wrapper.text(draft.user(cut), draft.answer_prefix))

    cap = len(res.essay) - 64 if rt.needs_essay(name) else 1 << 30

    def fits(n: int) -> bool:
        return len(count(make(min(n, cap)))) <= target

    low = rt.min_units(task, args)
    if low > cap:
        raise too_little(name, length, res)
    if not fits(low):
        raise UsageError(f"ruler {name}: length {length} is too short: the prompt without haystack takes "
                         f"{len(count(make(low)))} tokens, plus {budget} to generate")
    high = low * 2
    while fits(high):
        if high >= cap:
            raise too_little(name, length, res)
        low, high = high, min(high * 2, cap)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    for n in (low, low - 1, low - 2, low - 3, low - 4):
        if n < rt.min_units(task, args):
            break
        draft = make(n)
        cut = exact_cut(draft, lambda c, d=draft: len(count(d, c)), target)
        if cut is not None:
            return Sample(name, length, index, seed, count(draft, cut), draft, budget, True)
    draft = make(low)  # no cut hits the count exactly (not seen with real tokenizers): the closest below
    return Sample(name, length, index, seed, count(draft), draft, budget, False)


def exact_cut(draft: rt.Draft, size, target: int) -> int | None:
    """Characters of `spill` that make the prompt exactly `target` tokens, or None."""
    if size(0) == target:
        return 0
    low, high = 0, len(draft.spill)
    if size(high) < target:
        return None
    while high - low > 1:  # the first cut reaching the target (token counts grow with the text)
        mid = (low + high) // 2
        low, high = (low, mid) if size(mid) >= target else (mid, high)
    # counts are not quite monotone (Llama-3 glues "." to the newline after it): look around the first reach
    for cut in sorted(range(max(0, high - 24), min(high + 24, len(draft.spill)) + 1), key=lambda c: abs(c - high)):
        if size(cut) == target:
            return cut
    return None


def too_little(name: str, length: int, res: rt.Resources) -> UsageError:
    return UsageError(f"ruler {name}: the --haystack-dir books hold {len(res.essay):,} words, too little text for "
                      f"{length} tokens: add books or ask for shorter lengths")


# --- running ------------------------------------------------------------------------------------------

def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _forward(model, tokens: list[int], cache):
    import torch

    from longctx.modeling import reset_rope_state

    if cache.get_seq_length() == 0:
        reset_rope_state(model)
    ids = torch.tensor([tokens], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, **{_cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {i for i in ids if i is not None}


def generate(model, tokenizer, samples: list[Sample], *, share: bool, stop_when_found: bool):
    """Greedy decoding of every sample, in the given order, over one KV cache cropped back to the prefix the next
    prompt shares (when `share`); yields (sample, text, tokens generated, why it stopped, seconds)."""
    import torch
    from transformers import DynamicCache

    eos = eos_ids(model, tokenizer)
    cache, cached = DynamicCache(), []
    with torch.inference_mode():
        for sample in samples:
            start = time.perf_counter()
            keep = min(common_prefix_length(cached, sample.ids), len(sample.ids) - 1) if share else 0
            if keep < MIN_SHARED * len(sample.ids):
                cache, keep = DynamicCache(), 0
            else:
                crop_cache(cache, keep)
            logits = _forward(model, sample.ids[keep:], cache)
            cached = sample.ids
            tokens, stopped = [], "budget"
            for _ in range(sample.budget):
                token = int(logits.argmax())
                if token in eos:
                    stopped = "eos"
                    break
                tokens.append(token)
                if stop_when_found and rt.found(tokenizer.decode(tokens, skip_special_tokens=True),
                                                sample.draft.outputs) == len(sample.draft.outputs):
                    stopped = "found"
                    break
                if len(tokens) < sample.budget:
                    logits = _forward(model, [token], cache)
            if share:
                crop_cache(cache, len(sample.ids))
                cached = sample.ids
            seconds = time.perf_counter() - start
            yield sample, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), stopped, seconds


def summarize(name: str, samples: list[dict]) -> dict:
    """RULER's score of a cell (its metric over the generated texts) and a Wilson interval over expected strings."""
    task = rt.SYNTHETIC[name][0]
    preds = [rt.postprocess(s["generated"]) for s in samples]
    score = rt.METRICS[task](preds, [s["expected"] for s in samples])
    hits, refs = sum(s["found"] for s in samples), sum(len(s["expected"]) for s in samples)
    return {
        "score": score / 100,
        "ruler_score": score,
        "found": hits,
        "refs": refs,
        "score_ci95": wilson_interval(hits, refs),
    }


def haystack_label(cfg: Config, res: rt.Resources) -> str:
    if not res.essay:
        return "none"
    digest = hashlib.sha1(" ".join(res.essay[:4096]).encode()).hexdigest()[:8]
    return f"books:{len(res.essay)}w:{digest}"


class Ruler(Task):
    name, label, metric, order = "ruler", "RULER", "RULER score", 3
    kind, value_key, counts = RETRIEVAL, "score", ("found", "refs")  # Wilson interval: expected strings found / asked
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
        haystack = haystack_label(cfg, res)
        cells = [(name, length) for name in names for length in cfg.lengths]
        for name, length in cells:  # bad input fails here, before any model work or any line is written
            if not writer.done(self.key(cfg, name, length, wrapper, haystack)):
                build_sample(name, length, 0, self.seed(cfg, name, length, 0), res, wrapper)
        share = cfg.share_prefix and prefix_sharing_allowed(model, rope)[0]
        if not writer.world.main:  # one process does RULER (its samples share caches); the others wait
            writer.settle()
            return writer.cells()
        out = []
        for name, length in cells:
            key = self.key(cfg, name, length, wrapper, haystack)
            if not writer.done(key):
                self.run_cell(model, tokenizer, cfg, writer, name, length, key, wrapper, res, haystack, share)
            out.append(writer.cell(key))
        writer.settle()
        return out

    @staticmethod
    def seed(cfg: Config, name: str, length: int, index: int) -> int:
        return trial_seed(cfg.seed, f"ruler/{name}", length, index)

    def run_cell(self, model, tokenizer, cfg, writer, name, length, key, wrapper, res, haystack, share) -> None:
        journal = self.key(cfg, name, length, wrapper, haystack, samples=False)  # more samples later reuse these
        have = writer.samples(journal)
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
            model, tokenizer, todo, share=share, stop_when_found=cfg.stop_when_found
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
        journaled = writer.samples(journal)
        samples = [journaled[i] for i in range(cfg.samples)]
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
            "threshold": cfg.threshold,
        }
        writer.append(cell)

    def variant(self, record: dict) -> tuple:
        return (record.get("chat_template"), record.get("haystack"))

    def variant_name(self, variant: tuple) -> str:
        return f"chat template {variant[0]}, essay haystack {variant[1]}"

    def values(self, records: list[dict]) -> dict[int, float]:
        """Length -> the mean score over the tasks run at that length (RULER's average when all were)."""
        by_length: dict[int, list[float]] = {}
        for record in records:
            if isinstance(record.get("score"), (int, float)):
                by_length.setdefault(record["length"], []).append(record["score"])
        return {n: sum(v) / len(v) for n, v in sorted(by_length.items())}

    def ci95(self, records: list[dict]) -> dict[int, list[float]]:
        return {n: wilson_interval(k, m) for n, (k, m) in self.trial_counts(records).items()}

    def trial_counts(self, records: list[dict]) -> dict[int, tuple[int, int]]:
        """Length -> (expected strings found, asked) pooled over the RULER tasks run there: what verdicts count."""
        return pooled_counts(records, *self.counts)

    def figures(self) -> list[Figure]:
        return []

    def report_lines(self, models) -> list[str]:
        from longctx.evals.tasks.ruler_report import report_lines

        return report_lines(models, self)


TASK = Ruler()
__all__ = ["Config", "Ruler", "TASK", "build_sample", "generate", "parse_tasks", "summarize", "Wrapper"]
