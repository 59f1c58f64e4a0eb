"""RULER's retrieval family (niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery) as one pure
generator, following `scripts/data/synthetic/niah.py`: needle keys and values (words, 7-digit numbers, UUIDs), the
three haystacks (the noise sentences, the essay with needles at RULER's depths, lines of other needles) and the
singular rewrite of the template when one value is asked for. Definitions and where we differ from RULER:
`longctx.evals.tasks.ruler_tasks`.
"""

from __future__ import annotations

import random
import uuid

from longctx.errors import UsageError
from longctx.evals.tasks.ruler_tasks import DEPTHS, NEEDLE, NOISE, TASKS, Draft, Resources, split_template


def niah_templates(args: dict) -> tuple[str, str, str]:
    """(template, answer prefix, type_needle_v as the question names it): RULER's singular rewrite when one value
    is asked for ('Some' -> 'A', 'are all' -> 'is', 'are' -> 'is', 'answers' -> 'answer', 'numbers' -> 'number')."""
    template, prefix, kind = TASKS["niah"]["template"], TASKS["niah"]["answer_prefix"], args["type_needle_v"]
    if args["num_needle_q"] * args["num_needle_v"] == 1:
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        kind = kind[:-1]
    return template, prefix, kind


def random_value(kind: str, rng: random.Random, res: Resources) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))  # 7 digits
    if kind == "words":  # RULER: choice over its 6.2M sorted adjective-noun pairs; here adjective, then noun
        if not res.nouns:
            raise UsageError("RULER's word keys come from the wonderwords package: pip install 'longctx[eval]'")
        return f"{rng.choice(res.adjectives)}-{rng.choice(res.nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle kind {kind!r}")


def split_sentences(text: str) -> list[str]:
    from longctx.evals.tasks.data import sentence_pieces

    return [piece.strip() for piece in sentence_pieces(text) if piece.strip()]


def essay_words(res: Resources, n: int) -> list[str]:
    if n > len(res.essay):
        raise TooLittleText(len(res.essay))
    return list(res.essay[:n])


class TooLittleText(Exception):
    """The essay haystack holds fewer words than a prompt needs."""

    def __init__(self, words: int):
        super().__init__(words)
        self.words = words


def niah(args: dict, rng: random.Random, n: int, res: Resources, length: int) -> Draft:
    """scripts/data/synthetic/niah.py `generate_input_output(n)`: n haystack units (noise sentences' blocks, essay
    words or needle-like lines)."""
    k = max(args["num_needle_k"], args["num_needle_q"])
    keys, values, needles = [], [], []
    for _ in range(k):
        keys.append(random_value(args["type_needle_k"], rng, res))
        values.append([random_value(args["type_needle_v"], rng, res) for _ in range(args["num_needle_v"])])
        needles += [NEEDLE.format(type_needle_v=args["type_needle_v"], key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)
    asked = rng.sample(range(k), args["num_needle_q"])
    queries = [keys[i] for i in asked]
    answers = [a for i in asked for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    kind = args["type_haystack"]
    if kind == "essay":
        depths = rng.sample(DEPTHS, len(needles))
        sentences = split_sentences(" ".join(essay_words(res, n)))
        cuts = [0, *sorted(int(len(sentences) * d / 100) for d in depths), len(sentences)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        context = " ".join(parts)
        spill = " " + " ".join(essay_words(res, n + 64)[n:])
        where = {"depths": sorted(depths)}
    elif kind in ("noise", "needle"):

        def line() -> str:
            if kind == "noise":
                return NOISE
            return NEEDLE.format(
                type_needle_v=args["type_needle_v"],
                key=random_value(args["type_needle_k"], rng, res),
                value=random_value(args["type_needle_v"], rng, res),
            )

        if n < len(needles):
            n = len(needles)
        indexes = sorted(rng.sample(range(n), len(needles)), reverse=True)
        lines = [line() for _ in range(n)]
        for index, needle in zip(indexes, needles, strict=True):
            lines.insert(index, needle)
        context = "\n".join(lines)
        spill = "".join("\n" + line() for _ in range(3))
        where = {"indexes": sorted(indexes)}
    else:
        raise ValueError(f"unknown haystack {kind!r}")
    template, prefix, kind_v = niah_templates(args)
    before, after = split_template(template, type_needle_v=kind_v, query=query)
    return Draft(
        before,
        context,
        after,
        prefix.format(type_needle_v=kind_v, query=query),
        answers,
        spill,
        {"needles": needles, "query": query, **where},
    )
