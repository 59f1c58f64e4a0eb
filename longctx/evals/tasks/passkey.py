"""Passkey retrieval in the landmark-attention form (Mohtashami & Jaggi 2023).

A task line, the filler "The grass is green. ..." repeated, the needle "The pass key is K. Remember it. K is
the pass key." at a chosen depth, more filler, then "What is the pass key? The pass key is". Every
(length, depth, trial) draws its own key K and filler from its own seed (`scoring.trial_seed`, recorded in
each sample): K has `key_digits` digits (default 5-7, each count equally likely; the landmark and LongLoRA
scripts draw randint(1, 50000)) and the filler cycle starts at a random sentence, so cells at different
depths are independent trials. Each cell reports accuracy with its Wilson 95% interval.

L counts everything the model reads before the answer (BOS, task line, filler, needle, question) and is
exact. Every piece is tokenized where it stands in the prompt (`data.encode_after`), so the ids are the
tokenization of the prompt's text and the gold answer is what the tokenizer makes of " K" after the
question (a SentencePiece tokenizer would otherwise add a "▁" to each piece). The needle goes after the
last filler sentence at or before depth × filler length (depth 1: after the last whole one); the filler
ends after a word where the question follows cleanly.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field

from longctx.errors import UsageError
from longctx.evals.tasks.base import RetrievalTask
from longctx.evals.tasks.data import (
    AFTER_SENTENCE,
    AFTER_WORD,
    Piece,
    continuation,
    encode,
    fill_exactly,
    join_pieces,
    special_prefix,
    tokenize_pieces,
)
from longctx.evals.tasks.scoring import Graded, Prompt, Query, first_integer_is, strict_counts, wilson_interval

TASK_LINE = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
             "I will quiz you about the important information there.")
FILLER = (" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.", " There and back again.")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclass
class Config:
    """What a passkey sweep runs; each field is also a key of `tasks.passkey` in a suite YAML."""

    lengths: list[int]                                     # prompt lengths in tokens
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # needle depth, 0 = start
    trials: int = 5                                        # passkeys per (length, depth)
    mode: str = "forced"                                   # forced (one teacher-forced forward) or generate
    seed: int = 0
    share_prefix: bool = True                              # reuse the KV cache of a shared prompt start
    control: bool | int = True                             # lengths all beyond the trained length: also run one
                                                           # inside it (true: the longest power of two <= trained;
                                                           # a number: that length; false: none)
    key_digits: str = "5-7"                                # passkey digits: a count (5) or a range (5-7)

    def __post_init__(self):
        low, high = key_digit_range(self.key_digits)
        self.key_digits = f"{low}-{high}" if low != high else str(low)


def key_digit_range(spec) -> tuple[int, int]:
    """'5-7' -> (5, 7): keys of 5 to 7 digits, each count equally likely; 5 or '5' -> (5, 5)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(spec))
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not 1 <= low <= high <= 30:
        raise UsageError(f"bad key_digits {spec!r} for task passkey: use a count (5) or a range (5-7) within 1..30")
    return low, high


def place(boundaries: list[int], depth: float, total: int) -> int:
    """The last boundary at or before depth × total (boundaries sorted), or the first one."""
    target = round(depth * total)
    return boundaries[max(bisect.bisect_right(boundaries, target) - 1, 0)]


def filler_stream(tokenizer, n_tokens: int, start: int = 0) -> list[Piece]:
    """Filler sentences from FILLER[start] on, after the task line, as tokenized in the joined text, holding
    n_tokens and more."""
    order = [*FILLER[start:], *FILLER[:start]]
    two = tokenize_pieces(tokenizer, order * 2, before=TASK_LINE)
    if len(two) != 2 * len(FILLER):  # a tokenizer that glues sentences together: tokenize all of it
        count = 2 + 2 * (n_tokens + 256) // max(1, sum(len(p.ids) for p in two))
        return tokenize_pieces(tokenizer, order * count, before=TASK_LINE)
    cycle = two[len(FILLER):]  # each sentence after the one before it, as everywhere but first
    per_cycle = sum(len(p.ids) for p in cycle)
    return [*two[: len(FILLER)], *cycle * (2 + (n_tokens + 256) // per_cycle)]


class PasskeyTrial:
    """A passkey and a filler drawn from `rng`; `prompt(depth)` only moves the needle (`run` builds one per
    (length, depth, trial), each from its own seed)."""

    def __init__(self, tokenizer, length: int, rng: random.Random, *, key_digits: tuple[int, int] = (5, 7)):
        self.tokenizer = tokenizer
        digits = rng.randint(*key_digits)
        self.passkey = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        self.filler_start = rng.randrange(len(FILLER))  # the filler cycle starts at a random sentence
        self.head = special_prefix(tokenizer) + encode(tokenizer, TASK_LINE)
        self.needle_text = NEEDLE.format(key=self.passkey)
        self.needle = continuation(tokenizer, AFTER_SENTENCE, self.needle_text)
        self.question = continuation(tokenizer, AFTER_WORD, QUESTION)
        self.answer = continuation(tokenizer, QUESTION, " " + self.passkey)
        n_filler = length - len(self.head) - len(self.needle) - len(self.question)
        if n_filler < 0:
            raise UsageError(f"passkey length {length} is too short: the prompt without filler already takes "
                             f"{length - n_filler} tokens")
        pieces = fill_exactly(tokenizer, filler_stream(tokenizer, n_filler, self.filler_start), n_filler, TASK_LINE,
                              [(QUESTION, self.question)])
        # boundaries: sentence ends in the filler (0: after the task line), where the needle may go
        self.filler, self.filler_text, ends, self._chars = join_pieces(pieces)
        self.boundaries = [0, *ends]

    def needle_position(self, depth: float) -> int:
        """Index in the filler where the needle goes."""
        return place(self.boundaries, depth, len(self.filler))

    def prompt(self, depth: float) -> Prompt:
        cut = self.needle_position(depth)
        chars = self._chars[cut]
        context = self.head + self.filler[:cut] + self.needle + self.filler[cut:]
        text = TASK_LINE + self.filler_text[:chars] + self.needle_text + self.filler_text[chars:]
        query = Query(self.question, self.answer, self.passkey, question_text=QUESTION, answer_text=" " + self.passkey)
        return Prompt(context=context, queries=[query], needle_positions=[len(self.head) + cut], text=text)

    def sample(self, seed: int, grades: list[Graded]) -> dict:
        """`correct`: greedy decoding's first integer is the key; `correct_strict`: its first tokens are those of
        " K"; `tokens`: the argmax (forced) or generated tokens, which show why an answer failed."""
        graded = grades[0]
        sample = {"seed": seed, "passkey": self.passkey, "filler_start": self.filler_start,
                  "answer": graded.answer.strip(), "correct": bool(graded.correct),
                  "correct_strict": bool(graded.strict), "tokens": graded.tokens, "generated": graded.generated}
        if graded.hits is not None:  # forced: which answer tokens (" " + key) the argmax got right, for partial credit
            sample["answer_hits"] = graded.hits
        return sample


def grade_passkey(generated: str, expected: str, complete: bool = True) -> bool | None:
    """The first integer of the answer must be the passkey (`scoring.first_integer_is`)."""
    return first_integer_is(generated, expected, complete)


def summarize(samples: list[dict]) -> dict:
    """accuracy: the content grade, with its Wilson 95% interval; accuracy_strict: the token-exact one (only when
    every sample has it: trials journaled before content grading have not)."""
    correct = sum(sample["correct"] for sample in samples)
    out = {"correct": correct, "accuracy": correct / len(samples) if samples else 0.0,
           "accuracy_ci95": wilson_interval(correct, len(samples))}
    return out | strict_counts(samples, "correct", "accuracy", len(samples))


class Passkey(RetrievalTask):
    name, label, metric, order = "passkey", "passkey", "passkey accuracy", 1
    help = "passkey retrieval accuracy by length and depth"
    Config = Config
    value_key, counts = "accuracy", ("correct", "trials")
    grade = staticmethod(grade_passkey)
    independent_depths = True
    flag_defaults = {"depths": "0:1:5", "trials": 5}
    heatmap_title = "Passkey accuracy"
    heatmap_caption = "Passkey retrieval accuracy by context length and depth of the key."

    def variant(self, record: dict) -> tuple:  # keys of another digit count are another experiment (older: None)
        return (record.get("mode"), record.get("key_digits"))

    def variant_name(self, variant: tuple) -> str:
        return f"mode={variant[0]}" + (f", key_digits={variant[1]}" if variant[1] else "")

    # key_digits in the key: other keys, other cells
    def key_fields(self, cfg: Config, length: int, depth: float) -> dict:
        return {"length": length, "depth": depth, "key_digits": cfg.key_digits, "mode": cfg.mode}

    def builder(self, tokenizer, cfg: Config):
        digits = key_digit_range(cfg.key_digits)
        return lambda length, rng: PasskeyTrial(tokenizer, length, rng, key_digits=digits)

    def summarizer(self, cfg: Config):
        return summarize


TASK = Passkey()
