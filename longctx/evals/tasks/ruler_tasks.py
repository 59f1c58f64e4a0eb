"""RULER's synthetic tasks as pure functions: templates, sample generators and scorers (no model, no I/O).

Every literal string below was copied from NVIDIA/RULER (main at commit c3f5e3b, read in full):
`scripts/data/synthetic/constants.py` (templates, answer prefixes, token budgets), `scripts/synthetic.yaml` (the
13 task presets), `scripts/data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction}.py`
(needles, haystacks, sampling) and `scripts/eval/synthetic/constants.py` (`string_match_all`/`string_match_part`).
`tests/test_ruler.py` pins each of them. The generators are our own code following those scripts; where we
differ, on purpose:

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
- QA (qa_1 SQuAD, qa_2 HotpotQA) is not generated here (see `longctx.evals.tasks.ruler`).
"""

from __future__ import annotations

import random
import re
import string
import uuid
from dataclasses import dataclass, field

from longctx.errors import UsageError

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


# --- samples ------------------------------------------------------------------------------------------


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


def vt_chains(rng: random.Random, num_chains: int, num_hops: int, icl: bool = False) -> tuple[list, list]:
    """variable_tracking.py `generate_chains`: distinct upper-case names (5 letters; 3 in the few-shot example)."""
    letters = 3 if icl else 5
    hops = min(10, num_hops) if icl else num_hops
    names = ["".join(rng.choices(string.ascii_uppercase, k=letters)) for _ in range((hops + 1) * num_chains)]
    while len(set(names)) < num_chains * (hops + 1):
        names.append("".join(rng.choices(string.ascii_uppercase, k=letters)))
    variables, chains = [], []
    for i in range(0, len(names), hops + 1):
        chain_vars = names[i : i + hops + 1]
        variables.append(chain_vars)
        value = "12345" if icl else str(rng.randint(10000, 99998))  # np.random.randint(10000, 99999)
        chain = [f"VAR {chain_vars[0]} = {value}"]
        chain += [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(hops)]
        chains.append(chain)
    return variables, chains


def vt_context(rng: random.Random, n: int, chains: list[list[str]]) -> str:
    lines = [NOISE] * n
    for chain in chains:
        positions = sorted(rng.sample(range(len(lines)), len(chain)))
        for j, position in enumerate(positions):
            lines.insert(position + j, chain[j])
    return "\n".join(lines).replace(". \n", ".\n")


def vt_icl(args: dict, rng: random.Random, fits) -> str:
    """RULER's one-shot example: a variable-tracking prompt of at most 500 tokens (answer prefix included) with
    value 12345 and 3-letter names, answered, then `randomize_icl`: the answer's names and 12345 replaced."""
    template = TASKS["variable_tracking"]["template"] + TASKS["variable_tracking"]["answer_prefix"]
    hops = args["num_hops"]

    def example(n: int) -> tuple[str, list[str]]:
        state = random.Random(seed)
        variables, chains = vt_chains(state, args["num_chains"], hops, icl=True)
        text = template.format(context=vt_context(state, n, chains), query="12345", num_v=hops + 1)
        return text, variables[0]

    seed = rng.getrandbits(32)
    n = 5
    while fits(example(n * 2)[0], 500):
        n *= 2
    low, high = n, n * 2  # the largest count of noise blocks whose example fits in 500 tokens (at least 5)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(example(mid)[0], 500) else (low, mid)
    text, names = example(low)
    text = text + " " + " ".join(names) + "\n"
    for item in text.strip().split()[-hops - 1 :]:
        text = text.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))))
    return text.replace("12345", str(rng.randint(10000, 99998)))


def variable_tracking(args: dict, rng: random.Random, n: int, res: Resources, length: int, *, icl: str = "") -> Draft:
    variables, chains = vt_chains(rng, args["num_chains"], args["num_hops"])
    value = chains[0][0].split("=")[-1].strip()
    context = vt_context(rng, n, chains)
    fields = {"query": value, "num_v": args["num_hops"] + 1}
    before, after = split_template(TASKS["variable_tracking"]["template"], **fields)
    prefix = TASKS["variable_tracking"]["answer_prefix"].format(**fields)
    return Draft(
        (icl + "\n" if icl else "") + before,
        context,
        after,
        prefix,
        variables[0],
        "".join("\n" + NOISE for _ in range(2)),
        {"chains": chains},
    )


def cwe(args: dict, rng: random.Random, n: int, res: Resources, length: int) -> Draft:
    """common_words_extraction.py: one answered example, then a numbered list of n distinct words, the num_cw
    common ones freq_cw times each, the rest freq_ucw times (below 4K: 6 and 1, example 20 words 3/1)."""
    words = res.cwe_words
    if not words:
        raise UsageError("RULER's cwe words come from the wonderwords package: pip install 'longctx[eval]'")
    num_cw = args["num_cw"]

    def example(count: int, common_repeats: int, uncommon_repeats: int) -> tuple[list[str], list[str]]:
        if count > len(words):
            raise UsageError(
                f"cwe at {length} tokens needs more than the {len(words)} distinct wonderwords words "
                "(RULER then uses its english_words.json, which longctx does not ship)"
            )
        chosen = rng.sample(words, count)
        common, uncommon = chosen[:num_cw], chosen[num_cw:]
        listed = common * common_repeats + uncommon * uncommon_repeats
        rng.shuffle(listed)
        return listed, common

    def numbered(items: list[str], start: int = 0) -> str:
        return " ".join(f"{start + i + 1}. {word}" for i, word in enumerate(items))

    short = length < 4096
    shot_list, shot_answer = example(20, 3, 1) if short else example(40, 10, 3)
    n = max(n, num_cw + 1)
    listed, common = example(n, 6, 1) if short else example(n, args["freq_cw"], args["freq_ucw"])
    template, prefix = TASKS["common_words_extraction"]["template"], TASKS["common_words_extraction"]["answer_prefix"]
    shot = template.format(num_cw=num_cw, context=numbered(shot_list), query="") + prefix + " " + numbered(shot_answer)
    before, after = split_template(template, num_cw=num_cw, query="")
    extra = [w for w in listed if w not in common][:16]
    return Draft(
        shot + "\n" + before,
        numbered(listed),
        after,
        prefix,
        common,
        " " + numbered(extra, len(listed)) if extra else "",
        {"distinct_words": n},
    )


def zeta(s: float, terms: int = 1000) -> float:
    """Riemann ζ(s) for s > 1 (Euler–Maclaurin tail; scipy.special.zeta in RULER)."""
    total = sum(k**-s for k in range(1, terms))
    return total + terms ** (1 - s) / (s - 1) + terms**-s / 2 + s * terms ** (-s - 1) / 12


def fwe(args: dict, rng: random.Random, n: int, res: Resources, length: int) -> Draft:
    """freq_words_extraction.py: coded 6-letter words with Zipf counts n·k^-α/ζ(α); rank 1 is '...' (noise);
    the answer is ranks 2-4. The vocabulary holds (L − 50) // 50 words, as RULER sizes it."""
    alpha = args["alpha"]
    size = max(8, (length - TASKS["freq_words_extraction"]["tokens_to_generate"]) // 50)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(size)]
    while len(set(vocab)) < size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab = sorted(set(vocab))
    rng.shuffle(vocab)
    vocab[0] = "..."
    norm = zeta(alpha)
    n = max(n, 64)
    sampled = [word for k, word in enumerate(vocab, 1) for _ in range(int(n * k**-alpha / norm))]
    rng.shuffle(sampled)
    before, after = split_template(TASKS["freq_words_extraction"]["template"], query="")
    spill = " " + " ".join(rng.choices(sampled, k=32))
    return Draft(
        before,
        " ".join(sampled),
        after,
        TASKS["freq_words_extraction"]["answer_prefix"],
        vocab[1:4],
        spill,
        {"words": len(sampled)},
    )


GENERATORS = {
    "niah": niah,
    "variable_tracking": variable_tracking,
    "common_words_extraction": cwe,
    "freq_words_extraction": fwe,
}


def min_units(task: str, args: dict) -> int:
    """The smallest haystack a generator accepts."""
    if task == "niah":
        return (
            1
            if args["type_haystack"] == "essay"
            else max(args["num_needle_k"], args["num_needle_q"]) * args["num_needle_v"]
        )
    if task == "variable_tracking":
        return args["num_chains"] * (args["num_hops"] + 1)
    return {"common_words_extraction": args.get("num_cw", 10) + 1}.get(task, 64)


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
    "GENERATORS",
]
