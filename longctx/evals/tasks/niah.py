"""Needle in a haystack (Kamradt style), graded deterministically (RULER style).

The haystack is real prose: documents one after another (a blank line between) from a random one. A needle
"The special magic number for {city} is {7-digit number}." goes after the last sentence end at or before
depth × haystack length (the first one if none: depth 0 is after the first sentence); then each needle is
asked for with "What is the special magic number for {city}? The special magic number for {city} is".
Sentence ends are real ones (`data.sentence_pieces`: not "...", "e.g.", "Mr." or "3.5"), so a needle never
lands inside a sentence or a line of code. With `needles` N > 1 the others follow the first, evenly spaced
over the rest of the haystack (Kamradt's multi-needle layout) and each is asked for on its own; a trial's
score is the fraction retrieved. `distractors` K adds needle-like sentences about other cities at random
sentence ends.

Length convention (RULER's): L is the whole prompt the model reads before the answer, BOS + haystack +
needles + the question, exactly, for every depth and every question (the needles' cities are drawn among
those whose questions take the same number of tokens); the answer is not counted. The haystack is cut to
fit after a word where the question follows cleanly. Every piece is tokenized where it stands in the
prompt (`data.encode_after`): the ids are the tokenization of the prompt's text, and each gold answer is
what the tokenizer makes of " {number}" after its question. For one (length, trial) the haystack,
distractors and needles are fixed and only the needles move.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field

from longctx.errors import UsageError
from longctx.evals.tasks.base import RetrievalTask
from longctx.evals.tasks.data import (
    AFTER_SENTENCE,
    AFTER_WORD,
    DATA_SPEC,
    Piece,
    SentenceTokens,
    continuation,
    join_pieces,
    load_texts,
    special_prefix,
)
from longctx.evals.tasks.passkey import place
from longctx.evals.tasks.scoring import Graded, Prompt, Query, contains_answer, strict_counts, wilson_interval

NEEDLE = " The special magic number for {city} is {number}."
QUESTION = "\n\nWhat is the special magic number for {city}? The special magic number for {city} is"
PROTOCOL = 2  # part of every cell key: bump it when prompts change, so old cells are recomputed, not mixed in
CITIES = (
    "Amsterdam", "Bangkok", "Barcelona", "Berlin", "Bogota", "Boston", "Budapest", "Cairo", "Chicago",
    "Copenhagen", "Dublin", "Edinburgh", "Helsinki", "Istanbul", "Jakarta", "Kyoto", "Lagos", "Lima", "Lisbon",
    "London", "Madrid", "Manila", "Melbourne", "Montreal", "Mumbai", "Nairobi", "Oslo", "Paris", "Prague",
    "Santiago", "Seattle", "Seoul", "Singapore", "Stockholm", "Sydney", "Taipei", "Toronto", "Vienna", "Warsaw",
    "Zurich",
)


@dataclass
class Config:
    """What a needle-in-a-haystack sweep runs; each field is also a key of `tasks.niah` in a suite YAML."""

    lengths: list[int]                                     # prompt lengths in tokens
    depths: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])  # first needle's depth
    trials: int = 3                                        # haystacks/needles per (length, depth)
    needles: int = 1                                       # needles to retrieve, each asked for separately
    distractors: int = 0                                   # needle-like sentences about other cities
    haystack: str | None = field(default=None, metadata=DATA_SPEC)  # data spec (evals.tasks.data); pydoc if None
    mode: str = "forced"                                   # forced (one teacher-forced forward) or generate
    seed: int = 0
    share_prefix: bool = True                              # reuse the haystack's KV cache across depths
    control: bool | int = True                             # lengths all beyond the trained length: also run one
                                                           # inside it (true: the longest power of two <= trained;
                                                           # a number: that length; false: none)


@functools.lru_cache(maxsize=8)
def question_ids(tokenizer) -> dict[str, list[int]]:
    """Each city's question, tokenized as it follows the haystack (cut after a word)."""
    return {city: continuation(tokenizer, AFTER_WORD, QUESTION.format(city=city)) for city in CITIES}


def needle_cities(questions: dict[str, list[int]], needles: int, rng: random.Random) -> list[str]:
    """`needles` random cities whose questions take the same number of tokens, so that every question
    completes the prompt to exactly L tokens."""
    sizes = Counter(len(ids) for ids in questions.values())
    allowed = [city for city in CITIES if sizes[len(questions[city])] >= needles]
    if not allowed:
        raise UsageError(f"--needles {needles}: at most {max(sizes.values())} cities have questions of the same "
                         "length in tokens with this tokenizer")
    first = rng.choice(allowed)
    same = [c for c in CITIES if c != first and len(questions[c]) == len(questions[first])]
    return [first, *rng.sample(same, needles - 1)]


def needle_depths(depth: float, needles: int) -> list[float]:
    """The first needle at `depth`, the others spaced evenly after it: d + i·(1 − d)/N."""
    step = (1.0 - depth) / needles
    return [depth + i * step for i in range(needles)]


class NiahTrial:
    """One (length, trial): fixed haystack, distractors and needles; `prompt(depth)` only moves the needles."""

    def __init__(self, tokenizer, length: int, rng: random.Random, sentences: SentenceTokens, *,
                 needles: int = 1, distractors: int = 0):
        if needles < 1 or distractors < 0 or needles + distractors > len(CITIES):
            raise UsageError(f"--needles must be at least 1 and --needles + --distractors at most {len(CITIES)}")
        self.tokenizer = tokenizer
        questions = question_ids(tokenizer)
        cities = needle_cities(questions, needles, rng)
        cities += rng.sample([c for c in CITIES if c not in cities], distractors)
        numbers = rng.sample(range(1_000_000, 10_000_000), needles + distractors)
        self.cities, self.numbers = cities[:needles], [str(n) for n in numbers[:needles]]
        self.head = special_prefix(tokenizer)
        pairs = list(zip(self.cities, self.numbers, strict=True))
        self.needle_texts = [NEEDLE.format(city=c, number=n) for c, n in pairs]
        self.needles = [continuation(tokenizer, AFTER_SENTENCE, text) for text in self.needle_texts]
        self.queries = []
        for city, number in pairs:
            question = QUESTION.format(city=city)
            self.queries.append(Query(questions[city], continuation(tokenizer, question, " " + number), number,
                                      question_text=question, answer_text=" " + number))
        decoys = [NEEDLE.format(city=c, number=n) for c, n in zip(cities[needles:], numbers[needles:], strict=True)]
        decoys = [Piece(text, continuation(tokenizer, AFTER_SENTENCE, text), True) for text in decoys]
        n_body = length - len(self.head) - sum(map(len, self.needles)) - len(self.queries[0].question)
        n_haystack = n_body - sum(len(decoy.ids) for decoy in decoys)
        if n_haystack < 1:
            raise UsageError(f"niah length {length} is too short for {needles} needles and {distractors} distractors")
        pieces = sentences.take(n_haystack, start=rng.randrange(len(sentences.texts)),
                                tails=[(q.question_text, q.question) for q in self.queries])
        ends = [i + 1 for i, piece in enumerate(pieces) if piece.ends_sentence]
        if not ends:
            raise UsageError(f"the haystack has no sentence end in its first {n_haystack} tokens to put a needle after")
        # Distractors go after random sentence ends, chosen before any insertion and inserted back to front.
        spots = [rng.choice(ends) for _ in decoys]
        for where, decoy in sorted(zip(spots, decoys, strict=True), key=lambda pair: -pair[0]):
            pieces.insert(where, decoy)
        # boundaries: sentence ends in the haystack, where needles may go
        self.body, self.body_text, self.boundaries, self._chars = join_pieces(pieces)

    def needle_positions(self, depth: float) -> list[int]:
        """Indices in the haystack where each needle goes (non-decreasing)."""
        return [place(self.boundaries, d, len(self.body)) for d in needle_depths(depth, len(self.needles))]

    def prompt(self, depth: float) -> Prompt:
        context, text, starts, previous = list(self.head), "", [], 0
        for cut, needle, needle_text in zip(self.needle_positions(depth), self.needles, self.needle_texts, strict=True):
            context += self.body[previous:cut]
            text += self.body_text[self._chars[previous]:self._chars[cut]]
            starts.append(len(context))
            context += needle
            text += needle_text
            previous = cut
        context += self.body[previous:]
        text += self.body_text[self._chars[previous]:]
        return Prompt(context=context, queries=self.queries, needle_positions=starts, text=text)

    def sample(self, seed: int, grades: list[Graded]) -> dict:
        """`retrieved`: questions whose greedy answer holds the number (RULER's string_match_all, ignoring case);
        `retrieved_strict`: those answered with exactly the gold tokens; `tokens`: per question, the argmax
        (forced) or generated tokens."""
        retrieved = sum(bool(g.correct) for g in grades)
        strict = sum(bool(g.strict) for g in grades)
        return {"seed": seed, "expected": self.numbers, "answer": " | ".join(g.answer.strip() for g in grades),
                "retrieved": retrieved, "correct": retrieved == len(grades), "retrieved_strict": strict,
                "correct_strict": strict == len(grades), "tokens": [g.tokens for g in grades],
                "generated": [g.generated for g in grades]}


def summarize_for(needles: int):
    def summarize(samples: list[dict]) -> dict:
        """score: the fraction of questions answered (content); its Wilson 95% interval counts each question once;
        score_strict: the token-exact fraction (only when every sample has it)."""
        retrieved, questions = sum(sample["retrieved"] for sample in samples), needles * len(samples)
        out = {"score": retrieved / questions if questions else 0.0, "retrieved": retrieved,
               "questions": questions, "accuracy_ci95": wilson_interval(retrieved, questions)}
        return out | strict_counts(samples, "retrieved", "score", questions)
    return summarize


class Niah(RetrievalTask):
    name, label, metric, order = "niah", "NIAH", "NIAH score", 2
    help = "needle in a haystack: lengths × depths grid"
    Config = Config
    value_key, counts = "score", ("retrieved", "questions")
    grade = staticmethod(contains_answer)
    flag_defaults = {"depths": "11", "trials": 3}
    heatmap_title = "Needle in a haystack score"
    heatmap_caption = "Needle in a haystack: score by context length and needle depth (0% = start)."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--haystack", help="haystack text: pydoc (default), stdlib, FILE, DIR or hf:NAME")
        parser.add_argument("--needles", type=int, default=1, help="needles to retrieve, spaced evenly after the first")
        parser.add_argument("--distractors", type=int, default=0, help="needle-like sentences with other cities")

    def variant(self, record: dict) -> tuple:  # one heatmap row per variant
        return (record.get("needles", 1), record.get("distractors", 0), record.get("mode"))

    def variant_name(self, variant: tuple) -> str:
        return f"needles={variant[0]}, distractors={variant[1]}, mode={variant[2]}"

    def key_fields(self, cfg: Config, length: int, depth: float) -> dict:
        # protocol 2: exact lengths, needles between real sentences (older results are not resumed into it)
        return {"length": length, "depth": depth, "needles": cfg.needles, "distractors": cfg.distractors,
                "mode": cfg.mode, "protocol": PROTOCOL}

    def builder(self, tokenizer, cfg: Config):
        sentences = SentenceTokens(tokenizer, load_texts(cfg.haystack))
        return lambda length, rng: NiahTrial(tokenizer, length, rng, sentences, needles=cfg.needles,
                                             distractors=cfg.distractors)

    def summarizer(self, cfg: Config):
        return summarize_for(cfg.needles)


TASK = Niah()
