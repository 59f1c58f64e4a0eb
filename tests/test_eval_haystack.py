"""NIAH haystacks: real sentence ends only, and a prompt of exactly L tokens for every depth and question."""

from __future__ import annotations

import random
import re

import pytest

from longctx.evals.tasks.data import SentenceTokens, load_texts, sentence_pieces
from longctx.evals.tasks.niah import NiahTrial

DEPTHS = [i / 10 for i in range(11)]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_sentence_ends_are_real_ones():
    text = ('The statement "from ... import *" binds all names. Use e.g. a list, i.e. a sequence. Mr. Smith '
            'paid 3.50 dollars to J. Doe... He left?! "Quoted." (Bracketed.) Next one.\nA wrapped line. but '
            'this goes on\nlike so. And a code block:\n\n   from spam import *\n\nLast paragraph.')
    pieces = sentence_pieces(text)
    assert "".join(pieces) == text
    assert pieces == [
        'The statement "from ... import *" binds all names.',
        " Use e.g. a list, i.e. a sequence.",
        " Mr. Smith paid 3.50 dollars to J. Doe... He left?!",
        ' "Quoted."',
        " (Bracketed.)",
        " Next one.",
        "\nA wrapped line. but this goes on\nlike so.",
        " And a code block:",
        "\n\n   from spam import *",
        "\n\nLast paragraph.",
    ]


def _is_sentence_end(before: str, after: str) -> bool:
    """Checked from the decoded text around a needle: the text before ends a sentence, the text after starts
    another one (or the question)."""
    if not re.search(r"[.!?][\"')\]]*$", before) or re.search(r"(\.\.|…|\b(e\.g|i\.e|Mr|Dr|[A-Z]))\.$", before):
        return False
    return re.match(r"\s+([A-Z\"'(\[]|\n)|\s*\n\s*[^a-z\s]", after) is not None


@pytest.mark.parametrize("family", ["byte-level", "smollm2"])
def test_the_needle_always_lands_between_sentences(family, retrieval_tokenizers, request):
    tokenizer = (request.getfixturevalue("smollm2_tokenizer") if family == "smollm2"
                 else retrieval_tokenizers[family])
    haystack = SentenceTokens(tokenizer, load_texts("pydoc"))
    checked = 0
    for seed in range(12):
        trial = NiahTrial(tokenizer, 700, random.Random(seed), haystack, needles=2, distractors=1)
        for depth in DEPTHS:
            prompt = trial.prompt(depth)
            for start, needle in zip(prompt.needle_positions, trial.needles, strict=True):
                before = tokenizer.decode(prompt.context[:start], skip_special_tokens=True)
                after = tokenizer.decode(prompt.context[start + len(needle):] + prompt.queries[0].question)
                assert _is_sentence_end(before, after), (before[-60:], after[:60])
                checked += 1
    assert checked == 12 * len(DEPTHS) * 2


@pytest.mark.parametrize("family", ["sentencepiece-legacy", "smollm2"])
@pytest.mark.parametrize("needles, distractors", [(1, 0), (3, 2)])
def test_every_niah_prompt_is_exactly_l_tokens(family, needles, distractors, retrieval_tokenizers, request):
    """L = BOS + haystack + needles + question (RULER): for every depth and every question."""
    tokenizer = (request.getfixturevalue("smollm2_tokenizer") if family == "smollm2"
                 else retrieval_tokenizers[family])
    haystack = SentenceTokens(tokenizer, load_texts("pydoc"))
    for length, seed in ((512, 0), (1000, 1), (2048, 2)):
        trial = NiahTrial(tokenizer, length, random.Random(seed), haystack, needles=needles, distractors=distractors)
        for depth in DEPTHS:
            prompt = trial.prompt(depth)
            assert len(prompt.queries) == needles
            for query in prompt.queries:
                assert len(prompt.context) + len(query.question) == length
                assert tokenizer(prompt.text + query.question_text)["input_ids"] == prompt.context + query.question
