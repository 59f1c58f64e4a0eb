"""RULER's prompts at exact lengths: the chat wrapper around a user turn, the generator of each task family, and
the search for the haystack size and `spill` cut that make a prompt exactly L − tokens_to_generate tokens of the
model's own tokenizer (chat wrapper, answer prefix and BOS included). No model here: `longctx.evals.tasks.ruler`
runs these samples through `longctx.evals.tasks.ruler_decode`; Kamradt's prompts reuse `Sample` and `exact_cut`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from longctx.errors import UsageError
from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.ruler_niah import niah
from longctx.evals.tasks.ruler_vt_cwe_fwe import cwe, fwe, variable_tracking, vt_icl

GENERATORS = {
    "niah": niah,
    "variable_tracking": variable_tracking,
    "common_words_extraction": cwe,
    "freq_words_extraction": fwe,
}


def min_units(task: str, args: dict) -> int:
    """The smallest haystack a generator accepts."""
    if task == "niah":
        return (
            1
            if args["type_haystack"] == "essay"
            else max(args["num_needle_k"], args["num_needle_q"]) * args["num_needle_v"]
        )
    if task == "variable_tracking":
        return args["num_chains"] * (args["num_hops"] + 1)
    return {"common_words_extraction": args.get("num_cw", 10) + 1}.get(task, 64)


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
    generator = GENERATORS[task]
    extra = {}
    if task == "variable_tracking":
        encode = wrapper.tokenizer.encode
        extra["icl"] = vt_icl(args, random.Random(f"{seed}|icl"),
                              lambda text, limit: len(encode(text, add_special_tokens=False)) <= limit)

    def make(n: int) -> rt.Draft:
        return generator(args, random.Random(seed), n, res, length, **extra)

    def count(draft: rt.Draft, cut: int = 0) -> list[int]:
        return wrapper.ids(wrapper.text(draft.user(cut), draft.answer_prefix))

    cap = len(res.essay) - 64 if rt.needs_essay(name) else 1 << 30

    def fits(n: int) -> bool:
        return len(count(make(min(n, cap)))) <= target

    low = min_units(task, args)
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
        if n < min_units(task, args):
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


__all__ = ["GENERATORS", "Sample", "Wrapper", "build_sample", "exact_cut", "min_units"]
