"""RULER's synthetic tasks: its literal definitions (templates, the 13 presets, needles, token budgets), its scorers
and what every sample generator shares (`Draft`, `Resources`, the word lists and essay haystack). No model.

Every literal string below was copied from NVIDIA/RULER (main at commit c3f5e3b, read in full):
`scripts/data/synthetic/constants.py` (templates, answer prefixes, token budgets), `scripts/synthetic.yaml` (the
13 task presets), `scripts/data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction}.py`
(needles, haystacks, sampling) and `scripts/eval/synthetic/constants.py` (`string_match_all`/`string_match_part`).
`tests/test_ruler.py` pins each of them. The generators are our own code following those scripts
(`longctx.evals.tasks.ruler_niah` for niah_*, `longctx.evals.tasks.ruler_vt_cwe_fwe` for vt, cwe and fwe); where
we differ, on purpose:

- Sampling uses one `random.Random` per sample (recorded seed); RULER seeds the process once and reuses a fixed
  `Random(42)` for some shuffles (needle order, CWE/FWE word lists), so its draws cannot be reproduced here.
- Length: RULER grows the haystack while prompt + `tokens_to_generate` ≤ L (a prompt ends up to one haystack unit
  short: 25 noise sentences' worth below 4K...). We fit whole units, then cut the next unit (`spill`) inside so
  that prompt + `tokens_to_generate` == L exactly; the prompt's last haystack sentence may be cut mid-word.
- Essay haystack: RULER uses Paul Graham's essays (not redistributable here); we use the `.txt` books of a
  folder the user names, whitespace-normalised and read from the start like RULER's, split into sentences by
  `longctx.evals.tasks.data.sentence_pieces` instead of NLTK's punkt.
- Words: RULER draws words from the `wonderwords` package's noun/adjective/verb lists (the same lists are
  used here; `pip install 'longctx[eval]'`). A NIAH word key is RULER's "adjective-noun", drawn as a random
  adjective then a random noun instead of one choice over the 6.2M sorted pairs (the same pairs, equally
  likely, without building the list). CWE past ~8,100 distinct words falls back to RULER's
  `english_words.json`, which we do not ship: such lengths are refused.
- Chat template: RULER keeps one hand-written template per model family (`scripts/data/template.py`); we use
  the tokenizer's own chat template (or none), with the answer prefix after the assistant turn starts, as RULER
  places it. The NIAH singular rewrite ('Some' -> 'A', ...) is applied to the task template only, not to the
  chat wrapper.
- vt's one-shot example: RULER builds it once per run and re-randomizes its answer's names and value for each
  sample (`randomize_icl`); here each sample builds its own (from its seed: its own noise count and chain
  positions, still at most 500 tokens), then randomizes names and value the same way.
- QA (qa_1 SQuAD, qa_2 HotpotQA) is not generated here (see `longctx.evals.tasks.ruler`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# --- RULER's literal definitions ----------------------------------------------------------------------

# scripts/data/synthetic/constants.py
TASKS = {
    "niah": {
        "tokens_to_generate": 128,
        "template": "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?",  # noqa: E501
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",  # noqa: E501
        "answer_prefix": " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ",  # noqa: E501
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",  # noqa: E501
        "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?",  # noqa: E501
        "answer_prefix": " Answer: According to the coded text above, the three most frequently appeared words are:",
    },
    "qa": {
        "tokens_to_generate": 32,
        "template": "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",  # noqa: E501
        "answer_prefix": " Answer:",
    },
}

# scripts/synthetic.yaml
SYNTHETIC = {
    "niah_single_1": ("niah", dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_single_2": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_single_3": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="uuids", num_needle_k=1, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_multikey_1": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=4, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_multikey_2": ("niah", dict(type_haystack="needle", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_multikey_3": ("niah", dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids", num_needle_k=1, num_needle_v=1, num_needle_q=1)),  # noqa: E501
    "niah_multivalue": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=4, num_needle_q=1)),  # noqa: E501
    "niah_multiquery": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=4)),  # noqa: E501
    "vt": ("variable_tracking", dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0)),
    "qa_1": ("qa", dict(dataset="squad")),
    "qa_2": ("qa", dict(dataset="hotpotqa")),
}

# scripts/data/synthetic/niah.py and variable_tracking.py
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, num=40)).astype(int)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's QA metric: per sample 1 if any reference is in the prediction (case-insensitive); mean × 100."""
    score = sum(
        max(1.0 if r.lower() in pred.lower() else 0.0 for r in ref) for pred, ref in zip(preds, refs, strict=True)
    )
    return round(score / len(preds) * 100, 2)


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's synthetic metric: per sample the fraction of references in the prediction (case-insensitive);
    mean × 100."""
    score = sum(
        sum(1.0 if r.lower() in pred.lower() else 0.0 for r in ref) / len(ref)
        for pred, ref in zip(preds, refs, strict=True)
    )
    return round(score / len(preds) * 100, 2)


METRICS = {
    "niah": string_match_all,
    "variable_tracking": string_match_all,
    "common_words_extraction": string_match_all,
    "freq_words_extraction": string_match_all,
    "qa": string_match_part,
}


def postprocess(pred: str) -> str:
    """RULER's `postprocess_pred`: strip, every control character -> newline, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def found(pred: str, refs: list[str]) -> int:
    """How many references the (postprocessed) prediction holds, ignoring case: RULER's per-sample numerator."""
    pred = postprocess(pred).lower()
    return sum(r.lower() in pred for r in refs)


# --- what every generator shares ----------------------------------------------------------------------


@dataclass
class Draft:
    """One sample at haystack size n: the user turn is before + context + spill[:c] + after (c ≥ 0 characters
    of `spill`, the text that would continue the haystack), then the answer prefix after the assistant turn."""

    before: str
    context: str
    after: str
    answer_prefix: str
    outputs: list[str]
    spill: str = ""
    meta: dict = field(default_factory=dict)

    def user(self, cut: int = 0) -> str:
        return self.before + self.context + self.spill[:cut] + self.after


@dataclass(frozen=True)
class Resources:
    """What generators read besides the rng: word lists and the essay haystack's words."""

    adjectives: tuple[str, ...] = ()  # wonderwords' lists, sorted and distinct: NIAH words are "adjective-noun"
    nouns: tuple[str, ...] = ()
    cwe_words: tuple[str, ...] = ()  # wonderwords nouns + adjectives + verbs, sorted (CWE)
    essay: tuple[str, ...] = ()  # the essay haystack, split on whitespace


def split_template(template: str, **fields) -> tuple[str, str]:
    """A template filled except for {context}: the text before it and after it."""
    marker = "\x00context\x00"
    before, after = template.format(context=marker, **fields).split(marker)
    return before, after


def needs_essay(name: str) -> bool:
    task, args = SYNTHETIC[name]
    return args.get("type_haystack") == "essay"


def load_words() -> Resources:
    """wonderwords' lists as RULER reads them (`_get_words_from_text_file`: lines, right-stripped)."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("wonderwords") is None:
        return Resources()

    def read(name: str) -> list[str]:
        text = importlib.resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
        return [line.rstrip() for line in text.splitlines()]

    nouns, adjs, verbs = read("nounlist.txt"), read("adjectivelist.txt"), read("verblist.txt")
    return Resources(
        adjectives=tuple(sorted(set(adjs))),
        nouns=tuple(sorted(set(nouns))),
        cwe_words=tuple(sorted(set(nouns + adjs + verbs))),
    )


def essay_from_folder(folder) -> tuple[str, ...]:
    """The `.txt` files of `folder` in name order, whitespace-normalised into words (RULER: re.sub(r"\\s+", " ")
    over its essays, then split on spaces)."""
    from longctx.corpus import read_utf8
    from longctx.evals.tasks.data import book_files

    return tuple(re.sub(r"\s+", " ", " ".join(read_utf8(p) for p in book_files(folder))).split())


def with_essay(res: Resources, essay: tuple[str, ...]) -> Resources:
    return Resources(adjectives=res.adjectives, nouns=res.nouns, cwe_words=res.cwe_words, essay=essay)


__all__ = [
    "TASKS",
    "SYNTHETIC",
    "NEEDLE",
    "NOISE",
    "DEPTHS",
    "string_match_all",
    "string_match_part",
    "postprocess",
    "found",
    "Draft",
    "Resources",
]
