"""Greedy decoding of RULER and Kamradt samples, grades unchanged: samples taken in token order reuse one KV cache
cropped back to the prefix the next prompt shares (when that covers `MIN_SHARED` of it); consecutive samples of one
prompt length and budget (RULER's and Kamradt's prompts are exactly L − budget tokens) then decode together, one
batched forward per step (a decode step on CPU costs about as much for 8 rows as for 1: it is overhead, not
arithmetic, so the ~128 steps of a sample that never finds its answer stop dominating); a row leaves the batch at
EOS, at the budget, or, asked to, once every expected string is in its text (RULER's `string_match_all` and
Kamradt's key phrases can only gain from more text).
"""

from __future__ import annotations

import time

from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.ruler_prompts import Sample
from longctx.evals.tasks.scoring import common_prefix_length, crop_cache

MIN_SHARED = 0.5  # reuse a cached prefix only when it covers half the prompt (see scoring.grade_prompts)
BATCH = 8  # samples decoded together at most
BATCH_CACHE_BYTES = 3 << 30  # ... holding at most this much KV cache (SmolLM2 fp32 at 16K: 0.75 GiB a sample)


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _forward(model, tokens, cache):
    """Logits of the last position of every row; `tokens`: one list (one row) or a (rows, n) tensor."""
    import torch

    from longctx.modeling import reset_rope_state

    if cache.get_seq_length() == 0:
        reset_rope_state(model)
    ids = tokens if isinstance(tokens, torch.Tensor) else torch.tensor([tokens], dtype=torch.long)
    out = model(input_ids=ids.to(model.device), **{_cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {i for i in ids if i is not None}


def _snapshot(cache) -> list[tuple]:
    """Copies of every layer's keys and values: the shared cache is cropped for the next prompt."""
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def _batched(snapshots: list[list[tuple]]):
    import torch
    from transformers import DynamicCache

    layers = range(len(snapshots[0]))
    return DynamicCache(ddp_cache_data=[(torch.cat([s[i][0] for s in snapshots]),
                                         torch.cat([s[i][1] for s in snapshots])) for i in layers])


def _decode(model, tokenizer, rows: list[dict], eos: set[int], stop_when_found: bool) -> None:
    """Greedy decoding of prefilled rows ({sample, logits, kv}) together; fills each row's tokens and why it
    stopped. Finished rows leave the batch (`batch_select_indices`), so the rest cost what they alone would."""
    import torch

    cache = _batched([row.pop("kv") for row in rows])
    logits = torch.cat([row.pop("logits") for row in rows])
    live = list(range(len(rows)))
    for row in rows:
        row["tokens"], row["stopped"] = [], "budget"
    while live:
        picked = logits.argmax(-1).tolist()
        still = []
        for position, (i, token) in enumerate(zip(live, picked, strict=True)):
            row = rows[i]
            if token in eos:
                row["stopped"] = "eos"
                continue
            row["tokens"].append(token)
            if stop_when_found and rt.found(tokenizer.decode(row["tokens"], skip_special_tokens=True),
                                            row["sample"].draft.outputs) == len(row["sample"].draft.outputs):
                row["stopped"] = "found"
            elif len(row["tokens"]) < row["sample"].budget:
                still.append((position, i))
        if not still:
            break
        if len(still) < len(live):
            cache.batch_select_indices(torch.tensor([position for position, _ in still]))
        live = [i for _, i in still]
        logits = _forward(model, torch.tensor([[rows[i]["tokens"][-1]] for i in live], dtype=torch.long), cache)


def generate(model, tokenizer, samples: list[Sample], *, share: bool, stop_when_found: bool, batch: int = BATCH):
    """Greedy decoding of every sample, prefilled in the given order over one KV cache cropped back to the prefix
    the next prompt shares (when `share`), consecutive samples of one prompt length and budget decoded together
    (at most `batch`); yields (sample, text, tokens generated, why it stopped, seconds: its prefill plus its share
    of the batch's decoding) as each batch finishes."""
    import torch
    from transformers import DynamicCache

    eos = eos_ids(model, tokenizer)
    cache, cached = DynamicCache(), []
    pending: list[dict] = []

    def flush():
        start = time.perf_counter()
        _decode(model, tokenizer, pending, eos, stop_when_found)
        each = (time.perf_counter() - start) / len(pending)
        for row in pending:
            text = tokenizer.decode(row["tokens"], skip_special_tokens=True)
            yield row["sample"], text, len(row["tokens"]), row["stopped"], row["seconds"] + each
        pending.clear()

    with torch.inference_mode():
        for sample in samples:
            if pending and (len(pending) >= batch or (len(sample.ids), sample.budget) != pending[0]["shape"]
                            or (len(pending) + 1) * pending[0]["bytes"] > BATCH_CACHE_BYTES):
                yield from flush()
            start = time.perf_counter()
            keep = min(common_prefix_length(cached, sample.ids), len(sample.ids) - 1) if share else 0
            if keep < MIN_SHARED * len(sample.ids):
                cache, keep = DynamicCache(), 0
            else:
                crop_cache(cache, keep)
            logits = _forward(model, sample.ids[keep:], cache)
            cached = sample.ids
            kv = _snapshot(cache)
            pending.append({"sample": sample, "logits": logits, "kv": kv, "shape": (len(sample.ids), sample.budget),
                            "bytes": sum(k.nbytes + v.nbytes for k, v in kv),
                            "seconds": time.perf_counter() - start})
            if not share:
                cache, cached = DynamicCache(), []
        if pending:
            yield from flush()


__all__ = ["BATCH", "MIN_SHARED", "eos_ids", "generate"]
