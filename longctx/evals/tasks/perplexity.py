"""Perplexity by context length, in bounded memory.

For each length L, `docs` windows of L tokens are scored, each taken from ONE document (never from
concatenated documents, which would reset the context mid-window): documents holding at least L tokens are
taken in an order fixed by the seed, those long enough for the sweep's longest length first (so every length
reads the same documents where the corpus allows), one window each, several non-overlapping ones when fewer
documents qualify (`longctx.evals.tasks.data.DocumentTokens.windows`). Without a stride every length reads the
first L tokens of the longest length's windows (one forward of each scores every length where the rope allows,
`prefix_evaluation`; else a forward per length on the same texts), so ratios between lengths and between models
pair window by window. Each cell records which document and offset every window came from. Without a stride each
window is one forward; with `stride` S, each window is a span of up
to 2L tokens read by L-token windows moving S at a time, scoring only tokens no earlier window scored, so
those tokens see at least L − S tokens of context. Reported: mean NLL over scored tokens, ppl = exp(NLL), a
95% interval from the spread of per-window NLLs, bits per byte (total NLL in bits / UTF-8 bytes of the
scored text: comparable across tokenizers), and the NLL by position in the window, in buckets, which shows
where a model stops extrapolating.

Memory: [L × vocab] fp32 logits would be 25 GB at L=128K for a 49K vocabulary. `token_nll` runs the decoder
once, then applies `lm_head` to `chunk_tokens` positions at a time with an fp32 cross-entropy. Past one device:
several processes share the (length, window) units (`longctx.evals.run.parallel`), or, with `context_parallel`,
split each window's sequence between them (`longctx.evals.run.nll`) when one window does not fit one.
"""

from __future__ import annotations

import bisect
import math
import sys
import time
from dataclasses import dataclass, field

from longctx.corpus import data_name, load_named_documents
from longctx.errors import UsageError
from longctx.evals.run.nll import nll_function, token_nll
from longctx.evals.run.results import ResultsWriter, cell_key
from longctx.evals.tasks.base import PERPLEXITY, Figure, Task, as_float
from longctx.evals.tasks.data import DATA_SPEC, DocumentTokens, Window, special_prefix
from longctx.evals.tasks.intervals import mean_ci95
from longctx.evals.tasks.scoring import length_warnings
from longctx.lengths import fmt_len


@dataclass
class Config:
    """What a perplexity sweep runs; each field is also a key of `tasks.ppl` in a suite YAML."""

    lengths: list[int]           # window lengths in tokens
    stride: int | None = None    # sliding-window step; None = non-overlapping windows
    data: str | None = field(default=None, metadata=DATA_SPEC)  # data spec (longctx.evals.tasks.data); pydoc if None
    docs: int = 4                # single-document windows scored per length (the interval is over these)
    buckets: int = 8             # position buckets of the loss-by-position curve
    chunk_tokens: int = 1024     # positions per lm_head + cross-entropy step
    seed: int = 0
    context_parallel: bool = False  # several processes: each window's sequence split across all of them
    prefix: bool = True          # one forward of each longest window scores every shorter length on its prefix
                                 # (rope that does not depend on the sequence length, no stride; else separate)


def score_windows(model, prefix: list[int], tokens: list[int], window: int, stride: int, *, chunk_tokens: int,
                  nll_fn=token_nll):
    """(text index, position in its window, nll) of every scored token of `tokens`, by sliding windows.

    Each window is `prefix` (e.g. BOS) + up to `window` text tokens and scores only the tokens no earlier
    window scored; the first text token is scored only when a prefix predicts it. `nll_fn` is `token_nll` or
    its context-parallel counterpart.
    """
    import torch

    scored, done = [], 0 if prefix else 1
    for begin in range(0, len(tokens), stride):
        end = min(begin + window, len(tokens))
        ids = torch.tensor([prefix + tokens[begin:end]], dtype=torch.long)
        nll = nll_fn(model, ids, chunk_tokens=chunk_tokens).tolist()
        for index in range(max(done, begin), end):
            position = len(prefix) + index - begin  # of the target token in this window
            if position > 0:
                scored.append((index, position, nll[position - 1]))
        done = end
        if end == len(tokens):
            break
    return scored


def plan_windows(tokenizer, cfg: Config, lengths: list[int]) -> dict[int, list[Window]]:
    """The single-document windows of every length, found before any model work (a too-short corpus fails
    here, not after an hour of scoring). Without a stride a window is L tokens (prefix included); with a
    stride S it is a span of up to 2L tokens of one document read by L-token windows moving S at a time."""
    name = data_name(cfg.data)
    prefix = special_prefix(tokenizer)
    documents = DocumentTokens(tokenizer, load_named_documents(cfg.data, default_split="test"))
    plans = {}
    for length in lengths:
        body = length - len(prefix)
        span = body if cfg.stride is None else 2 * body
        plans[length] = documents.windows(body, cfg.docs, cfg.seed, span=span,
                                          prefer_length=max(cfg.lengths) - len(prefix))
        if not plans[length]:
            raise UsageError(f"no document of data {name!r} holds {length} tokens (the longest holds "
                             f"{documents.longest()}): perplexity at a length needs single documents that long, "
                             "e.g. --data stdlib or a folder of long .txt files")
    return plans


def window_id(window: Window) -> str:
    """A window's unit id in the journal: its document and first token."""
    return f"{window.doc}@{window.start}"


def prefix_evaluation(model, cfg: Config, rope=None) -> tuple[bool, str]:
    """Whether one forward of the longest window may score every shorter length on its prefix, and if not, why.

    In a causal model the loss of token t depends on tokens <= t only, so the first L tokens of a longer window
    score exactly as a window of L would, as long as the rotary frequencies do not depend on the sequence length:
    dynamic NTK and LongRoPE pick them from it, so they keep separate forwards (`scoring.prefix_sharing_allowed`).
    """
    from longctx.evals.tasks.scoring import prefix_sharing_allowed

    if not cfg.prefix:
        return False, "prefix evaluation is off"
    if cfg.stride is not None or cfg.context_parallel:
        return False, "sliding windows and context parallel score each length separately"
    return prefix_sharing_allowed(model, rope)


def window_record(tokenizer, window: Window, scored: list[tuple[int, int, float]], edges: list[int],
                  seconds: float) -> dict:
    """One window's journal record: its totals (NLL, tokens, UTF-8 bytes of the scored text) and per bucket of
    position [NLL sum, tokens], from which `cell` adds up the length's numbers."""
    buckets = [[0.0, 0] for _ in range(len(edges) - 1)]
    for _, position, nll in scored:
        bucket = buckets[bisect.bisect_right(edges, position) - 1]
        bucket[0] += nll
        bucket[1] += 1
    text = tokenizer.decode([window.tokens[index] for index, _, _ in scored])
    return {"doc": window.doc, "start": window.start, "tokens": len(window.tokens),
            "nll_sum": sum(nll for _, _, nll in scored), "n_tokens": len(scored), "n_bytes": len(text.encode("utf-8")),
            "buckets": buckets, "seconds": round(seconds, 3)}


def score_window(model, tokenizer, window: Window, prefix: list[int], cfg: Config, edges: list[int], nll_fn) -> dict:
    """One window scored by its own forward(s)."""
    start = time.perf_counter()
    body = edges[-1] - len(prefix)
    scored = score_windows(model, prefix, window.tokens, body, cfg.stride or body, chunk_tokens=cfg.chunk_tokens,
                           nll_fn=nll_fn)
    return window_record(tokenizer, window, scored, edges, time.perf_counter() - start)


def score_prefixes(model, tokenizer, window: Window, prefix: list[int], cfg: Config, edges: dict[int, list[int]],
                   nll_fn) -> dict[int, dict]:
    """Length -> the record of `window`'s first `length` tokens, every length from ONE forward of the window
    (the longest length's); `seconds` of each record is that forward's, shared."""
    start = time.perf_counter()
    scored = score_windows(model, prefix, window.tokens, len(window.tokens), len(window.tokens),
                           chunk_tokens=cfg.chunk_tokens, nll_fn=nll_fn)
    seconds = time.perf_counter() - start
    records = {}
    for length, length_edges in edges.items():
        body = length - len(prefix)
        head = Window(doc=window.doc, start=window.start, tokens=window.tokens[:body])
        records[length] = window_record(tokenizer, head, [t for t in scored if t[0] < body], length_edges, seconds)
    return records


def cell(key: str, length: int, name: str, cfg: Config, windows: list[dict], edges: list[int],
         warnings: list[str]) -> dict:
    """A length's cell from its windows' records (in plan order). A NaN sum (a model that blew up) is null in
    JSON and NaN again here."""
    def number(value) -> float:
        return math.nan if value is None else value

    total_nll, n_tokens = sum(number(w["nll_sum"]) for w in windows), sum(w["n_tokens"] for w in windows)
    n_bytes = sum(w["n_bytes"] for w in windows)
    mean_nll = total_nll / n_tokens
    _, half = mean_ci95([number(w["nll_sum"]) / w["n_tokens"] for w in windows])
    sums = [[sum(number(w["buckets"][b][i]) for w in windows) for i in (0, 1)] for b in range(len(edges) - 1)]
    return {
        "task": "ppl", "key": key, "length": length, "stride": cfg.stride, "data": name,
        "n_docs": len({w["doc"] for w in windows}), "n_windows": len(windows),
        "windows": [{"doc": w["doc"], "start": w["start"], "tokens": w["tokens"], "nll_sum": w["nll_sum"],
                     "n_tokens": w["n_tokens"]} for w in windows],  # per window: what paired ratios compare
        "n_tokens": n_tokens, "nll": mean_nll, "ppl": math.exp(mean_nll),
        "ppl_ci95": [math.exp(mean_nll - half), math.exp(mean_nll + half)] if half is not None else None,
        "bpb": total_nll / math.log(2) / n_bytes if n_bytes else None,
        "buckets": [{"start": edges[b], "end": edges[b + 1], "nll": total / count}
                    for b, (total, count) in enumerate(sums) if count],
        "seconds": round(sum(w["seconds"] for w in windows), 3), "warnings": warnings,
    }


def run(model, tokenizer, cfg: Config, writer: ResultsWriter) -> list[dict]:
    """Every length's cell, finished ones read back from `writer`. A (length, window) is the unit of work:
    journaled when scored, shared between processes under data parallel (`parallel.run_units`); with
    `context_parallel` every process scores every window together (`longctx.evals.run.nll`)."""
    from tqdm.auto import tqdm

    from longctx.evals.run.parallel import run_units

    if cfg.docs < 1:
        raise UsageError("--docs must be at least 1")
    if cfg.stride is not None and not 0 < cfg.stride < min(cfg.lengths):
        raise UsageError(f"--stride must be between 1 and the smallest length - 1 ({min(cfg.lengths) - 1})")
    name, main, rope = data_name(cfg.data), writer.world.main, writer.model_rope(model)
    shared, why = prefix_evaluation(model, cfg, rope)
    keys = {length: cell_key("ppl", length=length, stride=cfg.stride, data=name,
                             windows="prefix" if shared else "document") for length in cfg.lengths}
    todo = [length for length in cfg.lengths if not writer.done(keys[length])]
    if todo and not shared and cfg.prefix and main:
        print(f"ppl: a separate forward per length: {why}", file=sys.stderr)
    nll_fn = token_nll
    if cfg.context_parallel and todo:
        nll_fn = nll_function(model, writer.world, rope)
    longest, prefix = max(cfg.lengths), special_prefix(tokenizer)
    same_text = shared or cfg.stride is None  # every length reads the first L tokens of the longest windows
    plans = plan_windows(tokenizer, cfg, [longest] if same_text else todo) if todo else {}
    if shared and todo:  # one forward of each longest window scores every length
        plans = {length: plans[longest] for length in todo}
    elif same_text and todo:  # a forward per length (dynamic NTK), on the same texts: ratios pair by window
        plans = {length: [Window(w.doc, w.start, w.tokens[:length - len(prefix)]) for w in plans[longest]]
                 for length in todo}
    edges = {length: [round(i * length / cfg.buckets) for i in range(cfg.buckets + 1)] for length in todo}
    warnings = {length: length_warnings(rope, length) for length in todo}
    for length in todo:
        if len(plans[length]) < cfg.docs:
            warnings[length].append(f"data {name!r} holds only {len(plans[length])} windows of {length} tokens in "
                                    f"single documents, not {cfg.docs}")
        for warning in warnings[length] if main else ():
            print(f"warning: ppl: {warning}", file=sys.stderr)
    bar = tqdm(total=len(cfg.lengths), desc=f"{writer.dir.name} ppl", unit="cell", disable=None if main else True)
    bar.update(len(cfg.lengths) - len(todo))

    def work(length: int, index: int) -> list[tuple[str, str, dict]]:
        window = plans[length][index]
        if shared:  # `length` is the row of every length: one forward, a record for each
            records = score_prefixes(model, tokenizer, window, prefix, cfg, edges, nll_fn)
            bar.update(len(records) / len(plans[length]))
            return [(keys[n], window_id(window), record) for n, record in records.items()]
        record = score_window(model, tokenizer, window, prefix, cfg, edges[length], nll_fn)
        bar.update(1 / len(plans[length]))
        return [(keys[length], window_id(window), record)]

    def finish_one(length: int) -> None:
        if writer.done(keys[length]):
            return
        journal = writer.samples(keys[length])
        writer.append(cell(keys[length], length, name, cfg, [journal[window_id(w)] for w in plans[length]],
                           edges[length], warnings[length]))
        bar.n = sum(writer.done(keys[n]) for n in cfg.lengths)
        bar.refresh()

    def finish(row: int) -> None:
        for length in (todo if shared else [row]):
            finish_one(length)

    if shared and todo:
        missing = [i for i, w in enumerate(plans[todo[0]])
                   if any(window_id(w) not in writer.samples(keys[n]) for n in todo)]
        rows = [(todo[0], missing)]
    else:
        rows = [(length, [i for i, w in enumerate(plans[length]) if window_id(w) not in writer.samples(keys[length])])
                for length in todo]
    run_units(writer, rows, work, finish, shard=not cfg.context_parallel)
    bar.close()
    return [writer.cell(keys[length]) for length in cfg.lengths]


class Perplexity(Task):
    name, label, metric, kind, order, value_key = "ppl", "perplexity", "perplexity", PERPLEXITY, 0, "ppl"
    help = "perplexity and bits per byte by context length"
    Config = Config
    run = staticmethod(run)

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--data", help="pydoc (default, embedded), stdlib, FILE, DIR, *.jsonl or hf:NAME[:CONFIG][:SPLIT]"
        )
        parser.add_argument(
            "--stride", type=int, help="sliding-window step in tokens (default: non-overlapping windows)"
        )
        parser.add_argument("--docs", type=int, default=4, help="chunks of each length to score (default: 4)")
        parser.add_argument("--no-prefix-eval", dest="prefix", action="store_false",
                            help="a separate forward per length, on windows of its own, instead of scoring every "
                                 "length on the prefixes of the longest windows (dynamic NTK and LongRoPE always do)")
        parser.add_argument("--context-parallel", action="store_true",
                            help="launched as several processes: split each window's sequence across all of them "
                                 "(torch context parallel) instead of sharing out the windows")

    def variant(self, record: dict) -> tuple:
        return (record.get("data"), record.get("stride"))

    def variant_name(self, variant: tuple) -> str:
        return f"data={variant[0]}, stride={'none' if variant[1] is None else variant[1]}"

    def value(self, record: dict) -> float:
        """A cell's perplexity; a missing or NaN one counts as infinite (it blew up)."""
        return as_float(record.get(self.value_key), default=math.inf)

    def values(self, records: list[dict]) -> dict[int, float]:
        return {r["length"]: self.value(r) for r in sorted(records, key=lambda r: r["length"])}

    def ci95(self, records: list[dict]) -> dict[int, list[float] | None]:
        """The t interval over windows each cell records."""
        return {r["length"]: r.get("ppl_ci95") for r in sorted(records, key=lambda r: r["length"])}

    def windows_text(self, records: list[dict]) -> str | None:
        """Which documents the windows came from, per length: '2K: 2 windows (a.txt, b.txt); …'."""
        parts = []
        for record in sorted(records, key=lambda r: r["length"]):
            windows = record.get("windows")
            if not isinstance(windows, list) or not windows:
                continue
            docs = ", ".join(dict.fromkeys(str(w.get("doc")) for w in windows if isinstance(w, dict)))
            parts.append(f"{fmt_len(record['length'])}: {len(windows)} window{'s' * (len(windows) != 1)} ({docs})")
        return "; ".join(parts) or None

    def figures(self) -> list[Figure]:
        return [Figure("ppl_vs_length.png", "Perplexity by context length (dashed: each model's trained length; bars: "
                       "95% CI).", "ppl_vs_length", self),
                Figure("ppl_buckets.png", "Loss by token position at each model's longest evaluated length: where "
                       "extrapolation breaks.", "ppl_buckets", self, detail=True)]


TASK = Perplexity()
