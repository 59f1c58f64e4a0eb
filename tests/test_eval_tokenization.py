"""Retrieval prompts under every tokenizer family: the ids are the tokenization of the prompt's text, and a
model that emits the key is graded correct (SentencePiece tokenizers used to add "▁" to every piece)."""

from __future__ import annotations

import random

import pytest
from scripted_model import ScriptedModel

from longctx.evals.tasks.data import SentenceTokens, load_texts
from longctx.evals.tasks.niah import NiahTrial
from longctx.evals.tasks.passkey import PasskeyTrial, grade_passkey
from longctx.evals.tasks.scoring import contains_answer, grade_prompts

FAMILIES = ["byte-level", "sentencepiece-legacy", "sentencepiece-reloaded", "llama3", "smollm2"]


@pytest.fixture(scope="module", params=FAMILIES)
def tokenizer(request, retrieval_tokenizers):
    if request.param == "smollm2":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(request.getfixturevalue("smollm2_dir"))
    return retrieval_tokenizers[request.param]


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return SentenceTokens(tokenizer, load_texts("pydoc"))


def _prompts(tokenizer, haystack):
    """(prompt, grade) pairs: passkey and NIAH at several lengths, seeds and depths, 1 and 3 needles."""
    out = []
    for length, seed in ((180, 0), (333, 1), (700, 2)):
        trial = PasskeyTrial(tokenizer, length, random.Random(seed))
        out += [(trial.prompt(d), grade_passkey) for d in (0.0, 0.4, 1.0)]
    for length, seed, needles, distractors in ((300, 3, 1, 0), (600, 4, 3, 2), (1200, 5, 2, 1)):
        trial = NiahTrial(tokenizer, length, random.Random(seed), haystack, needles=needles, distractors=distractors)
        out += [(trial.prompt(d), contains_answer) for d in (0.0, 0.5, 1.0)]
    return out


def test_prompt_ids_are_the_tokenization_of_the_joined_text(tokenizer, haystack):
    for prompt, _ in _prompts(tokenizer, haystack):
        for query in prompt.queries:
            joined = prompt.text + query.question_text + query.answer_text
            assert tokenizer(joined)["input_ids"] == prompt.context + query.question + query.answer
            assert query.answer_text == " " + query.expected


class KnowsTheAnswer(ScriptedModel):
    """A perfect retriever trained on the tokenizer's own tokenization: after any prompt it emits the
    tokenization of (prompt text + " " + key), then EOS. The prompt text is what the ids decode to, so it
    reads the prompt as a model would, whatever pieces built it."""

    def __init__(self, tokenizer, prompts):
        expected = []  # every sequence the model knows: prompt + canonical answer + EOS
        for prompt in prompts:
            for query in prompt.queries:
                text = tokenizer.decode(prompt.context + query.question, skip_special_tokens=True)
                expected.append(tokenizer(text + " " + query.expected)["input_ids"] + [tokenizer.eos_token_id])
        super().__init__(tokenizer, expected)


@pytest.mark.parametrize("mode", ["forced", "generate"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_model_that_emits_the_key_is_graded_correct(tokenizer, haystack, mode, share_prefix):
    pairs = _prompts(tokenizer, haystack)
    model = KnowsTheAnswer(tokenizer, [prompt for prompt, _ in pairs])
    for grade in (grade_passkey, contains_answer):
        prompts = [prompt for prompt, g in pairs if g is grade]
        graded = grade_prompts(model, tokenizer, prompts, mode=mode, share_prefix=share_prefix, grade=grade)
        for prompt, grades in zip(prompts, graded, strict=True):
            for query, result in zip(prompt.queries, grades, strict=True):
                assert result.correct, (query.expected, result.answer)
                assert query.expected in result.answer
