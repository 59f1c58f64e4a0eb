"""Greedy decoding of RULER and Kamradt samples, grades unchanged: samples taken in token order reuse one KV cache
cropped back to the prefix the next prompt shares (when that covers `MIN_SHARED` of it), and decoding stops at EOS,
at the budget, or, asked to, once every expected string is in the text (RULER's `string_match_all` and Kamradt's
key phrases can only gain from more text). Batched decoding is not done: on CPU the prefill dominates.
"""

from __future__ import annotations

import time

from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.ruler_prompts import Sample
from longctx.evals.tasks.scoring import common_prefix_length, crop_cache

MIN_SHARED = 0.5  # reuse a cached prefix only when it covers half the prompt (see scoring.grade_prompts)


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _forward(model, tokens: list[int], cache):
    import torch

    from longctx.modeling import reset_rope_state

    if cache.get_seq_length() == 0:
        reset_rope_state(model)
    ids = torch.tensor([tokens], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, **{_cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {i for i in ids if i is not None}


def generate(model, tokenizer, samples: list[Sample], *, share: bool, stop_when_found: bool):
    """Greedy decoding of every sample, in the given order, over one KV cache cropped back to the prefix the next
    prompt shares (when `share`); yields (sample, text, tokens generated, why it stopped, seconds)."""
    import torch
    from transformers import DynamicCache

    eos = eos_ids(model, tokenizer)
    cache, cached = DynamicCache(), []
    with torch.inference_mode():
        for sample in samples:
            start = time.perf_counter()
            keep = min(common_prefix_length(cached, sample.ids), len(sample.ids) - 1) if share else 0
            if keep < MIN_SHARED * len(sample.ids):
                cache, keep = DynamicCache(), 0
            else:
                crop_cache(cache, keep)
            logits = _forward(model, sample.ids[keep:], cache)
            cached = sample.ids
            tokens, stopped = [], "budget"
            for _ in range(sample.budget):
                token = int(logits.argmax())
                if token in eos:
                    stopped = "eos"
                    break
                tokens.append(token)
                if stop_when_found and rt.found(tokenizer.decode(tokens, skip_special_tokens=True),
                                                sample.draft.outputs) == len(sample.draft.outputs):
                    stopped = "found"
                    break
                if len(tokens) < sample.budget:
                    logits = _forward(model, [token], cache)
            if share:
                crop_cache(cache, len(sample.ids))
                cached = sample.ids
            seconds = time.perf_counter() - start
            yield sample, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), stopped, seconds


__all__ = ["MIN_SHARED", "eos_ids", "generate"]
