"""Synthetic documents mixed into training text: passkey documents (`--retrieval-mix FRACTION`) and dense copy
documents (`--copy-mix FRACTION`).

A model trained from scratch on books cannot do passkey retrieval unless it learns the format, so retrieval
at long range would measure nothing. These documents are the eval's passkey prompt (`longctx.evals.tasks.passkey`:
task line, filler, "The pass key is K. Remember it. K is the pass key.", filler, the question) followed by
the answer " K.", at random lengths up to the training length and random depths: the model learns to copy
the key within the trained context, and the eval then asks how far past it the skill carries — the
setting of *Base of RoPE Bounds Context Length* (arXiv 2405.14591), where perplexity alone hides failure.

Copying is what retrieval needs and what a small model from scratch learns last: an induction circuit forms
abruptly after enough copy targets (Olsson et al. 2022). A passkey document has ~14 of ~300 bytes to copy, and
4.1M bytes of a half-passkey mix formed none (docs/results/rope-base-scratch). Copy documents are random
segments each written twice ("x7fq2|x7fq2"), so half their bytes are copy targets: the 4x256 byte Llama of that
study forms the circuit after ~3M tokens of them (loss on the repeats 3.6 → 0.4 nats within 100 steps).
"""

from __future__ import annotations

import random

from longctx.errors import require


def passkey_document(rng: random.Random, max_chars: int) -> str:
    """One prompt-plus-answer text of at most `max_chars` characters, key and depth drawn from `rng`."""
    from longctx.evals.tasks.passkey import FILLER, NEEDLE, QUESTION, TASK_LINE

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


COPY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def copy_document(rng: random.Random, max_chars: int) -> str:
    """Random segments of 8-40 letters and digits, each written twice ("seg|seg\n"), up to `max_chars`."""
    lines, size = [], 0
    while True:
        segment = "".join(rng.choice(COPY_ALPHABET) for _ in range(rng.randint(8, 40)))
        line = f"{segment}|{segment}\n"
        if size + len(line) > max_chars:
            return "".join(lines) or line[:max_chars]
        lines.append(line)
        size += len(line)


PIECE_ROWS = 4  # data documents are cut into pieces of about this many training rows before the shuffle


def cut_into_pieces(doc: str, size: int) -> list[str]:
    """`doc` in consecutive pieces of at most `size` characters, cut after the last whitespace of a piece's second
    half where there is one; the pieces concatenate back to `doc`."""
    pieces, start = [], 0
    while len(doc) - start > size:
        window = doc[start:start + size]
        space = max(window.rfind(" "), window.rfind("\n"))
        end = start + (space + 1 if space >= size // 2 else size)
        pieces.append(doc[start:end])
        start = end
    return pieces + ([doc[start:]] if start < len(doc) else [])


def mix_in_synthetic(docs: list[str], *, retrieval: float = 0.0, copy: float = 0.0, max_chars: int,
                     seed: int = 0) -> list[str]:
    """`docs` plus passkey documents making up `retrieval` of all characters and copy documents making up
    `copy` of them (each ≥ 0, together < 1), in a seeded order, so every run with the same seed trains on the
    same mix.

    The data documents are cut into pieces of PIECE_ROWS × `max_chars` characters first, so that every stretch
    of training sees the asked mix. Shuffled whole, three books among thousands of short synthetic documents
    made stretches of hundreds of steps of one kind: a byte model trained on copy text alone, then met a book,
    and its loss jumped from 3.4 to 10.5 nats per byte at each switch (docs/results/rope-base-scratch).
    Each piece is its own document when packed: positions restart and no label crosses into the next piece."""
    require(0 <= retrieval < 1, f"--retrieval-mix must be in [0, 1), got {retrieval}")
    require(0 <= copy < 1, f"--copy-mix must be in [0, 1), got {copy}")
    require(
        retrieval + copy < 1,
        f"--retrieval-mix + --copy-mix must stay below 1 (leave some of --data), got {retrieval + copy}",
    )
    if retrieval == copy == 0:
        return list(docs)
    require(not retrieval or max_chars >= 400,
            f"passkey samples need room: the training length gives only {max_chars} characters, 400 needed")
    require(
        not copy or max_chars >= 100,
        f"copy samples need room: the training length gives only {max_chars} characters, 100 needed",
    )
    rng = random.Random(seed)
    data_chars = sum(map(len, docs)) / (1 - retrieval - copy)
    mixed = [piece for doc in docs for piece in cut_into_pieces(doc, PIECE_ROWS * max_chars)]
    for fraction, make in ((retrieval, passkey_document), (copy, copy_document)):
        total = 0
        while total < fraction * data_chars:
            mixed.append(make(rng, max_chars))
            total += len(mixed[-1])
    rng.shuffle(mixed)
    return mixed


def mix_in_passkeys(docs: list[str], fraction: float, *, max_chars: int, seed: int = 0) -> list[str]:
    """`docs` plus passkey documents making up `fraction` of all characters (0 ≤ fraction < 1)."""
    return mix_in_synthetic(docs, retrieval=fraction, max_chars=max_chars, seed=seed)


def mix_for_training(docs: list[str], tokenizer, seq_len: int, *, retrieval: float = 0.0, copy: float = 0.0,
                     seed: int = 0) -> list[str]:
    """`mix_in_synthetic` with documents that fit the training length: its characters per token measured on
    the corpus with the run's tokenizer (1 for the byte tokenizer), minus 10% for safety."""
    sample = "".join(docs)[:50_000]
    ids = tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"] if sample else []
    chars_per_token = len(sample) / max(len(ids), 1)
    return mix_in_synthetic(docs, retrieval=retrieval, copy=copy, max_chars=int(0.9 * seq_len * chars_per_token),
                            seed=seed)
