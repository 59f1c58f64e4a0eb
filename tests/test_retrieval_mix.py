"""Synthetic documents mixed into training text: passkey documents in the eval's format with the answer at the
end, copy documents whose every segment is repeated, each kind at the asked fraction of characters."""

from __future__ import annotations

import random
import re

import pytest

from longctx.errors import UsageError
from longctx.evals.tasks.passkey import QUESTION, TASK_LINE
from longctx.train.retrieval_mix import (
    COPY_ALPHABET,
    PIECE_ROWS,
    copy_document,
    cut_into_pieces,
    mix_in_passkeys,
    mix_in_synthetic,
    passkey_document,
)


def test_document_is_the_eval_prompt_followed_by_its_key():
    rng = random.Random(0)
    for _ in range(50):
        doc = passkey_document(rng, 600)
        assert len(doc) <= 600 and doc.startswith(TASK_LINE)
        key = re.search(r"The pass key is (\d+)\. Remember it\. \1 is the pass key\.", doc).group(1)
        assert doc.endswith(f"{QUESTION} {key}.")


def test_mix_has_the_fraction_of_characters_and_is_seeded():
    books = ["x" * 50_000, "y" * 30_000]
    mixed = mix_in_passkeys(books, 0.1, max_chars=512, seed=3)
    synthetic = [d for d in mixed if d.startswith(TASK_LINE)]
    share = sum(map(len, synthetic)) / sum(map(len, mixed))
    assert 0.1 <= share < 0.11
    data = "".join(d for d in mixed if not d.startswith(TASK_LINE))
    assert (data.count("x"), data.count("y")) == (50_000, 30_000)
    assert mixed == mix_in_passkeys(books, 0.1, max_chars=512, seed=3)
    assert mixed != mix_in_passkeys(books, 0.1, max_chars=512, seed=4)
    assert mix_in_passkeys(books, 0.0, max_chars=512) == books


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(UsageError, match="--retrieval-mix"):
        mix_in_passkeys(["text"], fraction, max_chars=512)


def test_copy_document_repeats_every_random_segment():
    rng = random.Random(0)
    for max_chars in (400, 460, 2000):
        doc = copy_document(rng, max_chars)
        lines = doc.splitlines()
        assert len(doc) <= max_chars and doc.endswith("\n") and len(lines) >= 5
        for line in lines:
            first, second = line.split("|")
            assert first == second and 8 <= len(first) <= 40 and set(first) <= set(COPY_ALPHABET)
    assert copy_document(random.Random(1), 500) == copy_document(random.Random(1), 500)


def test_both_kinds_at_their_fractions():
    books = ["x" * 60_000, "y" * 40_000]
    mixed = mix_in_synthetic(books, retrieval=0.2, copy=0.5, max_chars=512, seed=0)
    total = sum(map(len, mixed))
    passkeys = sum(len(d) for d in mixed if d.startswith(TASK_LINE))
    copies = sum(len(d) for d in mixed if "|" in d)
    assert 0.2 <= passkeys / total < 0.21 and 0.5 <= copies / total < 0.51
    assert passkeys + copies + sum(map(len, books)) == total
    assert mixed == mix_in_synthetic(books, retrieval=0.2, copy=0.5, max_chars=512, seed=0)


def test_books_are_cut_into_pieces_spread_through_the_mix():
    """A whole book shuffled among short synthetic documents would be hundreds of training steps of one kind."""
    rng = random.Random(0)
    book = " ".join("".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 12))) for _ in range(20_000))
    mixed = mix_in_synthetic([book], copy=0.5, max_chars=400, seed=0)
    pieces = [d for d in mixed if "|" not in d]
    assert len(pieces) > 50 and all(len(p) <= PIECE_ROWS * 400 for p in pieces)
    assert sorted(pieces) == sorted(cut_into_pieces(book, PIECE_ROWS * 400))
    assert "".join(cut_into_pieces(book, PIECE_ROWS * 400)) == book
    assert all(p.endswith(" ") for p in cut_into_pieces(book, PIECE_ROWS * 400)[:-1])  # cut between words
    longest = run = 0
    for doc in mixed:  # the longest stretch of book text between two synthetic documents
        run = run + len(doc) if "|" not in doc else 0
        longest = max(longest, run)
    assert longest <= 6 * PIECE_ROWS * 400


def test_cut_without_whitespace_is_exact():
    assert cut_into_pieces("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
    assert cut_into_pieces("", 4) == [] and cut_into_pieces("abc", 4) == ["abc"]


@pytest.mark.parametrize("retrieval, copy, flag", [(0.0, 1.0, "--copy-mix"), (0.0, -0.2, "--copy-mix"),
                                                   (0.6, 0.4, "stay below 1")])
def test_copy_fraction_outside_range_is_refused(retrieval, copy, flag):
    with pytest.raises(UsageError, match=flag):
        mix_in_synthetic(["text"], retrieval=retrieval, copy=copy, max_chars=512)


def test_copy_documents_fit_short_rows_passkeys_do_not():
    mixed = mix_in_synthetic(["x" * 5_000], copy=0.5, max_chars=230, seed=0)
    copies = [d for d in mixed if "|" in d]
    assert len(copies) + len(cut_into_pieces("x" * 5_000, PIECE_ROWS * 230)) == len(mixed)
    assert all(len(d) <= 230 for d in copies)
    with pytest.raises(UsageError, match="passkey samples need room"):
        mix_in_synthetic(["x" * 5_000], retrieval=0.5, max_chars=230)
