"""Grading retrieval prompts fast and exactly, shared by passkey and needle-in-a-haystack.

Every answer gets two grades of the same greedy answer. The content grade (`Graded.correct`, the headline, as
the passkey anchors and RULER grade) asks whether greedy decoding's text holds the expected value: the task's
`grade(text, expected)` (passkey: its first integer is the key; NIAH: the key is a substring, ignoring case).
The strict grade (`Graded.strict`) asks whether greedy decoding emits exactly the gold answer's tokens first;
it counts wrong an answer that spells the key after a newline instead of a space, which content counts right.

Forced mode (default) runs ONE teacher-forced forward over prompt + gold answer and keeps the argmax at every
answer position and after the answer. While every argmax matches the gold token, greedy decoding's inputs equal
the teacher-forced ones (it feeds back its own argmax), so the forward yields greedy decoding's tokens up to and
including the first one that leaves the gold answer (or the one after it): exactly the strict grade, and the
start of greedy decoding's text. The content grade is taken from that start only where no continuation could
change it: `grade(start, expected, complete=False)` answers None otherwise (passkey: "81" then "5" already
makes a first integer other than 8109231, "8109231." already is the key; a newline and nothing else, or any
NIAH answer that misses the key so far, decide nothing). Where it is None, greedy decoding runs from the
context's cache as generate mode does (`len(answer) + 8` new tokens), so the content grade is generate mode's
grade; it costs decoding steps on a failed answer (and, without prefix sharing, a prefill of the context).
Decoding the argmax tokens of the forced pass and grading that text would not be the same: after the first
wrong token they are predicted from the gold prefix, not from the model's own answer.

This holds for rotary frequencies that do not change with the sequence length: under dynamic NTK or LongRoPE
the forced forward runs at the frequencies of prompt + answer, generation with a KV cache at the prefill's, so
a marginal trial can differ (`grading_warnings`; 1 of the 20 dynamic-NTK trials regraded in
docs/results/smollm2-extension-cpu). Generate mode decodes greedily and grades the text (strict: its first
tokens against the gold ones).

Within one NIAH (length, trial) the haystack is fixed and only the needle moves, so prompts of different
depths share the text before the needle (passkey draws each depth independently: they share the task line).
`grade_prompts` keeps one KV cache, crops it back to the longest prefix the next prompt shares and runs only
the rest; questions after the same context reuse the context's cache.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from longctx import rope_config
from longctx.evals.run.results import ResultsWriter, cell_key, format_value
from longctx.evals.tasks.intervals import wilson_interval  # noqa: F401  (re-exported: passkey, niah, task use it)


@dataclass
class Query:
    """One question about a context and the answer that proves retrieval."""

    question: list[int]  # tokens after the context, up to where the answer starts
    answer: list[int]    # gold answer tokens (teacher-forced in forced mode)
    expected: str        # the string a generated answer must contain (passkey: the integer)
    question_text: str = ""  # the text of `question` and of `answer`: the ids are their tokenization where
    answer_text: str = ""    # they stand in the prompt (tokenizer(context text + question + answer))


@dataclass
class Prompt:
    context: list[int]                 # BOS + haystack with needles: everything before the questions
    queries: list[Query]
    needle_positions: list[int] = field(default_factory=list)  # token index where each needle starts
    text: str = ""                     # the context's text after the BOS


@dataclass
class Graded:
    answer: str      # greedy decoding's text that the content grade read (forced: its start up to the first token
                     # that leaves the gold answer, or the one after it, where that settles the grade)
    correct: bool    # content: the answer holds the expected value (the task's `grade`)
    strict: bool     # token-exact: greedy decoding emits the gold answer's tokens first
    tokens: list[str] = field(default_factory=list)  # forced: the argmax at each answer position given the gold
                     # prefix, and after the answer; generate: the generated tokens; each decoded on its own
    generated: bool = False  # greedy decoding ran (generate mode, or forced where its pass left content open)
    logits: object = None  # [len(answer), vocab] fp32 answer-position logits, only when asked for
    hits: list[int] | None = None  # forced: 1 where the argmax is the gold token, per answer position (partial credit)


def prefix_sharing_allowed(model, rope=None) -> tuple[bool, str]:
    """Whether a KV cache computed for one prompt may be reused by another, and if not, why.

    Dynamic NTK picks its rotary base from the current sequence length, and LongRoPE its factors (short up to
    the trained length, long past it): keys cached for a short prefix were rotated under other frequencies than
    the queries of the full prompt (transformers #25104), so reuse would grade a model that does not exist.
    Sliding-window caches cannot be cropped back reliably.
    """
    config = model.config
    rope = rope or rope_config.model_rope(config)  # `rope_config.ModelRope`, when the caller parsed it already
    if rope.length_dependent:
        return False, (f"{rope.rope_type} rope changes its frequencies with the sequence length, so keys cached for a "
                       "shorter prefix would not match")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False, "sliding-window caches cannot be cropped back to a shared prefix"
    return True, ""


def strict_counts(samples: list[dict], hits: str, value: str, total: int) -> dict:
    """The token-exact counterpart of a cell's content grade: `<hits>_strict` summed over the samples and
    `<value>_strict` = that over `total`; {} unless every sample has it (trials journaled before content grading)."""
    key = f"{hits}_strict"
    if not all(key in sample for sample in samples):
        return {}
    strict = sum(sample[key] for sample in samples)
    return {key: strict, f"{value}_strict": strict / total if total else 0.0}


def first_integer(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def first_integer_is(text: str, expected: str, complete: bool = True) -> bool | None:
    """Passkey grading (the YaRN and LongLoRA passkey scripts): the first integer of the answer is `expected`.

    `complete=False`: `text` is only the start of the answer; None while what follows could change the grade
    (no digit yet, or the digits so far run to its end and begin `expected`)."""
    match = re.search(r"\d+", text)
    if complete or (match and (match.end() < len(text) or not expected.startswith(match.group(0)))):
        return bool(match) and match.group(0) == expected
    return None


def contains_answer(generated: str, expected: str, complete: bool = True) -> bool | None:
    """RULER's string_match_all for one expected string: it appears in the output, ignoring case.

    `complete=False`: `generated` is only the start of the answer; None while it does not hold `expected` yet."""
    found = expected.strip().lower() in generated.lower()
    return found if found or complete else None


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def crop_cache(cache, length: int) -> None:
    """Cut a DynamicCache back to `length` tokens (a negative argument works in transformers 4 and 5)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _cache_kwarg(model) -> str:
    """The KV-cache argument of the model's forward: `cache` in transformers 5 (where `past_key_values` is
    deprecated, to be removed in 5.40), `past_key_values` in transformers 4."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _forward(model, tokens: list[int], cache, logits_to_keep: int):
    import torch

    from longctx.modeling import reset_rope_state

    if cache is None or cache.get_seq_length() == 0:
        reset_rope_state(model)  # a fresh sequence: dynamic NTK must not keep the base of an earlier prompt
    ids = torch.tensor([tokens], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, **{_cache_kwarg(model): cache}, use_cache=cache is not None,
                logits_to_keep=logits_to_keep)
    return out.logits[0].float()  # [logits_to_keep, vocab]


def _eos(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _forced(model, tokenizer, query: Query, cache, context: list[int] | None, keep_logits: bool,
            grade: Callable[..., bool | None]) -> Graded:
    """Teacher-forced answer: from `cache` (context already in it) or from scratch over `context` + query.

    `correct` is None where the forced pass leaves the content grade open (see the module docstring)."""
    n = len(query.answer)
    logits = _forward(model, (context or []) + query.question + query.answer, cache, logits_to_keep=n + 1)
    predicted = logits.argmax(-1).tolist()  # [n + 1]: greedy's token i given the gold tokens before it
    hits = [int(p == g) for p, g in zip(predicted[:n], query.answer, strict=True)]
    wrong = hits.index(0) if 0 in hits else n
    greedy = query.answer[:wrong] + predicted[wrong:wrong + 1]  # greedy decoding's first tokens, provably
    complete = greedy[-1] in _eos(tokenizer)  # greedy decoding stops there
    text = tokenizer.decode(greedy[:-1] if complete else greedy, skip_special_tokens=True)
    # a byte-level token may end inside a character that the next token completes: judge only whole characters
    correct = grade(text if complete else text.rstrip("\ufffd"), query.expected, complete=complete)
    return Graded(answer=text, correct=correct, strict=wrong == n, tokens=_pieces(tokenizer, predicted),
                  logits=logits[:n].cpu() if keep_logits else None, hits=hits)


def _generate(model, tokenizer, query: Query, cache, grade: Callable[..., bool | None], max_new_tokens: int) -> Graded:
    """Greedy decoding continuing `cache` (which holds the context); stops at EOS."""
    eos = _eos(tokenizer)
    logits = _forward(model, query.question, cache, logits_to_keep=1)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits[-1].argmax())
        if token in eos:
            break
        generated.append(token)
        logits = _forward(model, [token], cache, logits_to_keep=1)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    return Graded(answer=text, correct=bool(grade(text, query.expected)), generated=True,
                  strict=generated[:len(query.answer)] == query.answer, tokens=_pieces(tokenizer, generated))


def grade_prompts(model, tokenizer, prompts: list[Prompt], *, mode: str = "forced", share_prefix: bool = True,
                  grade: Callable[..., bool | None] = contains_answer, keep_logits: bool = False,
                  timings: list[float] | None = None, rope=None) -> list[list[Graded]]:
    """Grades of every query of every prompt, in order; `timings` receives each prompt's seconds; `rope`: the
    model's `rope_config.ModelRope` when the caller parsed it already.

    `grade(text, expected, complete=True)` is the content grade of greedy decoding's text; with complete=False
    it sees only the start of that text and answers None while the rest could change it (`first_integer_is`,
    `contains_answer`).

    With share_prefix the prompts run in the given order over one cache; give them sorted so neighbours
    share long prefixes (the task builders keep the filler fixed and move only the needle). Without it
    every query is one full forward (forced) or a fresh prefill (generate): the reference path.
    """
    import torch
    from transformers import DynamicCache

    if mode not in ("forced", "generate"):
        raise ValueError(f"mode must be 'forced' or 'generate', not {mode!r}")
    if share_prefix and not prefix_sharing_allowed(model, rope)[0]:
        share_prefix = False
    results: list[list[Graded]] = []
    cache, cached = (DynamicCache(), []) if share_prefix else (None, [])
    with torch.inference_mode():
        for prompt in prompts:
            start = time.perf_counter()
            graded = []
            if share_prefix:
                keep = common_prefix_length(cached, prompt.context)
                if keep < len(prompt.context) // 2:
                    # Continuing a cache takes an explicit mask, off SDPA's causal fast path (SmolLM2 on CPU: 1.4x
                    # slower than a fresh forward at 4K, more at longer lengths), so a short shared prefix costs
                    # more than it saves.
                    cache, keep = DynamicCache(), 0
                else:
                    crop_cache(cache, keep)
                if keep < len(prompt.context):
                    _forward(model, prompt.context[keep:], cache, logits_to_keep=1)
                cached = prompt.context
            for query in prompt.queries:
                forced = None
                if mode == "forced":
                    forced = (_forced(model, tokenizer, query, cache, None, keep_logits, grade) if share_prefix else
                              _forced(model, tokenizer, query, None, prompt.context, keep_logits, grade))
                    if share_prefix:
                        crop_cache(cache, len(prompt.context))
                if forced is None or forced.correct is None:  # greedy decoding settles the content grade
                    if not share_prefix:  # the reference path: a fresh prefill of this context
                        cache = DynamicCache()
                        _forward(model, prompt.context, cache, logits_to_keep=1)
                    decoded = _generate(model, tokenizer, query, cache, grade, len(query.answer) + 8)
                    crop_cache(cache, len(prompt.context))
                    if forced is not None:  # the strict grade and the argmax tokens stay the forced pass's
                        forced.answer, forced.correct, forced.generated = decoded.answer, decoded.correct, True
                graded.append(decoded if forced is None else forced)
            results.append(graded)
            if timings is not None:
                timings.append(time.perf_counter() - start)
    return results


def trial_seed(seed: int, task: str, length: int, trial: int, depth: float | None = None) -> int:
    """A stable per-trial seed (recorded in each sample): the same run seed rebuilds the same prompts.

    With a depth, every (length, depth, trial) gets its own seed, so cells at different depths are independent.
    """
    text = f"{seed}|{task}|{length}|{trial}" + ("" if depth is None else f"|{format_value(float(depth))}")
    digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def trial_seeds(seed: int, task: str, length: int, depths: list[float], trials: int,
                independent_depths: bool) -> dict[tuple[float, int], int]:
    """(depth, trial) -> the seed its prompt is built from; without independent depths a trial's seed is the
    same at every depth (one trial object moves its needle)."""
    return {(depth, trial): trial_seed(seed, task, length, trial, depth if independent_depths else None)
            for depth in depths for trial in range(trials)}


def length_warnings(rope, length: int) -> list[str]:
    """Why a cell of `length` tokens may mean less: beyond the length `rope` (`rope_config.ModelRope`) claims."""
    claimed = rope.claimed_length
    if length > claimed:
        return [f"length {length} exceeds the {claimed} tokens the config claims (rope_config.max_length); ran anyway"]
    return []


def grading_warnings(model, mode: str, rope=None) -> list[str]:
    """Why forced grades may differ from greedy decoding for this model (see the module docstring)."""
    rope = rope or rope_config.model_rope(model.config)
    if mode == "forced" and rope.length_dependent:
        return [f"{rope.rope_type} rope: forced grading scores the answer at the frequencies of prompt + answer, "
                "greedy decoding with a KV cache at the prefill's (transformers #25104): a marginal trial can grade "
                "differently in generate mode"]
    return []


def run_grid(model, tokenizer, writer: ResultsWriter, *, task: str, lengths: list[int], depths: list[float],
             trials: int, seed: int, mode: str, key_fields: Callable[[int, float], dict],
             build: Callable[[int, random.Random], object], grade: Callable[..., bool | None],
             summarize: Callable[[list[dict]], dict], share_prefix: bool = True,
             independent_depths: bool = False) -> list[dict]:
    """Run a lengths × depths grid of retrieval cells, `trials` trials each; returns every cell (old + new).

    `build(length, rng)` returns a trial object with `.prompt(depth) -> Prompt` and
    `.sample(seed, grades) -> dict`. One trial object serves every depth of a (length, trial), so they
    share the filler's KV cache, unless `independent_depths`: then each (length, depth, trial) is built from
    its own seed. One trial's prompts of all depths are graded together: a (length, trial) is the unit of
    work, journaled when done, and what processes share under data parallel (`parallel.run_units`); a cell
    is written once all its trials are journaled.
    """
    from tqdm.auto import tqdm

    from longctx.evals.run.parallel import run_units

    main, rope = writer.world.main, writer.model_rope(model)
    grading = grading_warnings(model, mode, rope)
    if grading and main:
        print(f"warning: {task}: {grading[0]}", file=sys.stderr)
    if share_prefix:
        allowed, why = prefix_sharing_allowed(model, rope)
        share_prefix = allowed
        if not allowed and main:
            print(f"{task}: full forwards for every depth: {why}", file=sys.stderr)
    keys = {(length, depth): cell_key(task, **key_fields(length, depth)) for length in lengths for depth in depths}
    todo = {length: [depth for depth in depths if not writer.done(keys[length, depth])] for length in lengths}
    seeds = {length: trial_seeds(seed, task, length, depths, trials, independent_depths) for length in lengths}

    def need(length: int, trial: int) -> list[float]:
        # a trial journaled before content grading (no `correct_strict`) is graded again
        return [d for d in sorted(todo[length])
                if "correct_strict" not in writer.samples(keys[length, d]).get(seeds[length][d, trial], {})]

    bar = tqdm(total=len(keys), desc=f"{writer.dir.name} {task}", unit="cell", disable=None if main else True)
    bar.update(sum(len(depths) - len(todo[length]) for length in lengths))
    for length in lengths:
        warnings = length_warnings(rope, length)
        if todo[length] and warnings and main:
            print(f"warning: {task}: {warnings[0]}", file=sys.stderr)

    def work(length: int, trial: int) -> list[tuple[str, int, dict]]:
        depths_needed = need(length, trial)
        if independent_depths:
            trial_objs = [build(length, random.Random(seeds[length][d, trial])) for d in depths_needed]
        else:
            trial_objs = [build(length, random.Random(seeds[length][depths_needed[0], trial]))] * len(depths_needed)
        prompts = [obj.prompt(depth) for obj, depth in zip(trial_objs, depths_needed, strict=True)]
        timings: list[float] = []
        grades = grade_prompts(model, tokenizer, prompts, mode=mode, share_prefix=share_prefix, grade=grade,
                               timings=timings, rope=rope)
        bar.update(len(depths_needed) / trials)
        return [(keys[length, depth], seeds[length][depth, trial],
                 {**obj.sample(seeds[length][depth, trial], graded), "seconds": round(spent, 3)})
                for depth, obj, graded, spent in zip(depths_needed, trial_objs, grades, timings, strict=True)]

    def finish(length: int) -> None:
        for depth in todo[length]:
            if writer.done(keys[length, depth]):
                continue
            journal = writer.samples(keys[length, depth])
            cell_seeds = [seeds[length][depth, trial] for trial in range(trials)]
            samples = [{k: v for k, v in journal[s].items() if k != "seconds"} for s in cell_seeds]
            seconds = sum(journal[s].get("seconds") or 0.0 for s in cell_seeds)
            cell = {"task": task, "key": keys[length, depth], **key_fields(length, depth), "trials": trials,
                    **summarize(samples), "samples": samples, "seconds": round(seconds, 3),
                    "warnings": length_warnings(rope, length) + grading}
            writer.append(cell)
        bar.n = sum(writer.done(key) for key in keys.values())
        bar.refresh()

    rows = [(length, [trial for trial in range(trials) if need(length, trial)]) for length in lengths if todo[length]]
    run_units(writer, rows, work, finish)
    bar.close()
    return [writer.cell(keys[length, depth]) for length in lengths for depth in depths]
