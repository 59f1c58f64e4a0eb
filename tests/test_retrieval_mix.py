"""Synthetic passkey documents mixed into training text: the eval's format, the answer at the end, the asked fraction."""

from __future__ import annotations

import random
import re

import pytest

from longctx.errors import UsageError
from longctx.evals.passkey import QUESTION, TASK_LINE
from longctx.train.retrieval_mix import mix_in_passkeys, passkey_document


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
    assert set(books) <= set(mixed)
    assert mixed == mix_in_passkeys(books, 0.1, max_chars=512, seed=3)
    assert mixed != mix_in_passkeys(books, 0.1, max_chars=512, seed=4)
    assert mix_in_passkeys(books, 0.0, max_chars=512) == books


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(UsageError, match="--retrieval-mix"):
        mix_in_passkeys(["text"], fraction, max_chars=512)
