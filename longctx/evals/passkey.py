"""Passkey retrieval in the landmark-attention form (Mohtashami & Jaggi 2023).

A task line, the filler "The grass is green. ..." repeated, the needle "The pass key is K. Remember it. K is
the pass key." at a chosen depth, more filler, then "What is the pass key? The pass key is"; K is a random
5-digit integer. Prompts are built from separately tokenized pieces so their length is exact in tokens:
L counts everything the model reads before the answer (BOS, task line, filler, needle, question). The
needle goes to the last filler sentence end at or before depth × filler length, and never splits a token
or holds a BOS. For one (length, trial) the filler and K are fixed and only the needle moves, which lets
`scoring.grade_prompts` reuse the KV cache of the filler before the needle across depths.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from longctx.errors import UsageError
from longctx.evals.data import encode, special_prefix
from longctx.evals.results import ResultsWriter
from longctx.evals.scoring import Graded, Prompt, Query, first_integer, run_grid

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
    share_prefix: bool = True                              # reuse the filler's KV cache across depths


def place(boundaries: list[int], depth: float, total: int) -> int:
    """The last boundary at or before depth × total (boundaries sorted, starting at 0)."""
    target = round(depth * total)
    return boundaries[bisect.bisect_right(boundaries, target) - 1]


class PasskeyTrial:
    """One (length, trial): fixed passkey and filler; `prompt(depth)` only moves the needle."""

    def __init__(self, tokenizer, length: int, rng: random.Random):
        self.tokenizer = tokenizer
        self.passkey = str(rng.randint(10000, 99999))
        self.head = special_prefix(tokenizer) + encode(tokenizer, TASK_LINE)
        self.needle = encode(tokenizer, NEEDLE.format(key=self.passkey))
        self.question = encode(tokenizer, QUESTION)
        self.answer = encode(tokenizer, " " + self.passkey)
        n_filler = length - len(self.head) - len(self.needle) - len(self.question)
        if n_filler < 0:
            raise UsageError(f"passkey length {length} is too short: the prompt without filler already takes "
                             f"{length - n_filler} tokens")
        sentences = [encode(tokenizer, sentence) for sentence in FILLER]
        self.filler: list[int] = []
        self.boundaries = [0]  # sentence ends inside the filler, where the needle may go
        while len(self.filler) < n_filler:
            for sentence in sentences:
                self.filler.extend(sentence)
                self.boundaries.append(len(self.filler))
        self.filler = self.filler[:n_filler]
        self.boundaries = [b for b in self.boundaries if b < n_filler] + [n_filler]

    def needle_position(self, depth: float) -> int:
        """Index in the filler where the needle goes."""
        return place(self.boundaries, depth, len(self.filler))

    def prompt(self, depth: float) -> Prompt:
        cut = self.needle_position(depth)
        context = self.head + self.filler[:cut] + self.needle + self.filler[cut:]
        return Prompt(context=context, queries=[Query(self.question, self.answer, self.passkey)],
                      needle_positions=[len(self.head) + cut])

    def sample(self, seed: int, grades: list[Graded]) -> dict:
        graded = grades[0]
        return {"seed": seed, "passkey": self.passkey, "answer": graded.answer.strip(), "correct": bool(graded.correct)}


def grade_passkey(generated: str, expected: str) -> bool:
    """Generate mode: the first integer of the answer must be the passkey."""
    return first_integer(generated) == expected


def summarize(samples: list[dict]) -> dict:
    correct = sum(sample["correct"] for sample in samples)
    return {"correct": correct, "accuracy": correct / len(samples) if samples else 0.0}


def run(model, tokenizer, cfg: Config, writer: ResultsWriter) -> list[dict]:
    """Every (length, depth) cell of the sweep, finished ones read back from `writer`."""
    if cfg.trials < 1:
        raise UsageError("--trials must be at least 1")
    return run_grid(model, tokenizer, writer, task="passkey", lengths=cfg.lengths, depths=cfg.depths,
                    trials=cfg.trials, seed=cfg.seed, mode=cfg.mode,
                    key_fields=lambda length, depth: {"length": length, "depth": depth, "mode": cfg.mode},
                    build=lambda length, rng: PasskeyTrial(tokenizer, length, rng), grade=grade_passkey,
                    summarize=summarize, share_prefix=cfg.share_prefix)
