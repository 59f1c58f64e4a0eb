"""Synthetic retrieval documents mixed into training text (`--retrieval-mix FRACTION`).

A model trained from scratch on books cannot do passkey retrieval unless it learns the format, so retrieval
at long range would measure nothing. These documents are the eval's passkey prompt (`longctx.evals.passkey`:
task line, filler, "The pass key is K. Remember it. K is the pass key.", filler, the question) followed by
the answer " K.", at random lengths up to the training length and random depths: the model learns to copy
the key within the trained context, and the eval then asks how far past it the skill carries — the
setting of *Base of RoPE Bounds Context Length* (arXiv 2405.14591), where perplexity alone hides failure.
"""

from __future__ import annotations

import random

from longctx.errors import require


def passkey_document(rng: random.Random, max_chars: int) -> str:
    """One prompt-plus-answer text of at most `max_chars` characters, key and depth drawn from `rng`."""
    from longctx.evals.passkey import FILLER, NEEDLE, QUESTION, TASK_LINE

    key = str(rng.randint(10_000, 9_999_999))
    needle = NEEDLE.format(key=key)
    answer = f" {key}."
    room = max(0, max_chars - len(TASK_LINE) - len(needle) - len(QUESTION) - len(answer))
    filler, start = [], rng.randrange(len(FILLER))
    target = rng.randint(0, room)
    while sum(map(len, filler)) + len(FILLER[(start + len(filler)) % len(FILLER)]) <= target:
        filler.append(FILLER[(start + len(filler)) % len(FILLER)])
    cut = rng.randint(0, len(filler))
    return TASK_LINE + "".join(filler[:cut]) + needle + "".join(filler[cut:]) + QUESTION + answer


def mix_in_passkeys(docs: list[str], fraction: float, *, max_chars: int, seed: int = 0) -> list[str]:
    """`docs` plus passkey documents making up `fraction` of all characters (0 ≤ fraction < 1), in a seeded
    order, so every run with the same seed trains on the same mix."""
    require(0 <= fraction < 1, f"--retrieval-mix must be in [0, 1), got {fraction}")
    require(max_chars >= 400, f"retrieval samples need room: the training length gives only {max_chars} characters")
    if fraction == 0:
        return list(docs)
    rng = random.Random(seed)
    wanted = fraction / (1 - fraction) * sum(map(len, docs))
    extra, total = [], 0
    while total < wanted:
        extra.append(passkey_document(rng, max_chars))
        total += len(extra[-1])
    mixed = list(docs) + extra
    rng.shuffle(mixed)
    return mixed


def mix_for_training(docs: list[str], tokenizer, seq_len: int, fraction: float, *, seed: int = 0) -> list[str]:
    """`mix_in_passkeys` with documents that fit the training length: its characters per token measured on
    the corpus with the run's tokenizer (1 for the byte tokenizer), minus 10% for safety."""
    sample = "".join(docs)[:50_000]
    ids = tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"] if sample else []
    chars_per_token = len(sample) / max(len(ids), 1)
    return mix_in_passkeys(docs, fraction, max_chars=int(0.9 * seq_len * chars_per_token), seed=seed)
