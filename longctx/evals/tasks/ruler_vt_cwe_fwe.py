"""RULER's other synthetic families as pure generators: multi-hop tracing (vt: chains of variable assignments
in noise, with RULER's one-shot example, `variable_tracking.py`) and aggregation (cwe: the most common words of a
numbered list, `common_words_extraction.py`; fwe: the most frequent coded words under Zipf counts,
`freq_words_extraction.py`). Definitions and where we differ from RULER: `longctx.evals.tasks.ruler_tasks`.
"""

from __future__ import annotations

import random
import string

from longctx.errors import UsageError
from longctx.evals.tasks.ruler_tasks import NOISE, TASKS, Draft, Resources, split_template


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
