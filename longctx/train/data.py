"""Training text: documents from a corpus, tokenized and packed into rows of exactly the training length.

Packing puts several documents in one row with EOS after each. Position ids restart at 0 for every
document, and nothing attends across documents: transformers (5.x, `masking_utils.find_packed_sequence_indices`)
turns restarting position ids into a block-diagonal causal mask for SDPA/eager when no attention_mask is
passed, and flash_attention_2 turns them into varlen sequence boundaries (for a batch of one row only, so
`loss.CausalLMLoss` flattens [B, T] to [1, B·T] there). Cross-document attention is a
known way to spoil long-context training (trl #3526, axolotl #3608). The label of a document's last token
(its EOS) would be the next document's first token, so it is ignored (-100).

The row order is a pure function of (corpus, tokenizer, seq_len, seed), so a resumed run skips the rows it
already consumed and sees exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from longctx.errors import UsageError, require

IGNORE_INDEX = -100
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


def pydoc_documents() -> list[str]:
    """Python's own help topics (~465K characters of English prose), shipped with every CPython."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def stdlib_documents() -> list[str]:
    """Python standard-library sources: code, a different distribution from prose."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    return [text for text in (p.read_text(encoding="utf-8", errors="replace") for p in files) if text.strip()]


def hf_documents(spec: str, text_field: str) -> list[str]:
    """`hf:NAME[:CONFIG][:SPLIT]` through `datasets` (split defaults to train)."""
    parts = spec.split(":")[1:]
    require(parts and parts[0], f"--data {spec}: write hf:NAME[:CONFIG][:SPLIT]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (parts[2] if len(parts) > 2 else "train")
    try:
        import datasets
    except ImportError:
        raise UsageError("--data hf:… needs datasets: pip install 'longctx[train]'") from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, …)
        raise UsageError(f"could not load dataset {name!r} (config {config}, split {split}): {type(exc).__name__}") from None
    require(text_field in rows.column_names, f"dataset {name} has no column {text_field!r} (has {', '.join(rows.column_names)}): pass --text-field")
    return [t for t in rows[text_field] if isinstance(t, str) and t.strip()]


def file_documents(path: Path, text_field: str) -> list[str]:
    """A .jsonl file gives one document per line (field `text_field`); any other text file is one document."""
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{path}:{number} is not valid JSON") from None
            require(isinstance(row, dict) and isinstance(row.get(text_field), str),
                    f"{path}:{number} has no string field {text_field!r}: pass --text-field")
            docs.append(row[text_field])
        return docs
    return [path.read_text(encoding="utf-8", errors="replace")]


def load_documents(spec: str, text_field: str = "text") -> list[str]:
    """The documents named by --data, in a fixed order (shuffling happens in `PackedRows`)."""
    if spec == "pydoc":
        docs = pydoc_documents()
    elif spec == "stdlib":
        docs = stdlib_documents()
    elif spec.startswith("hf:"):
        docs = hf_documents(spec, text_field)
    else:
        docs = []
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            path = Path(item).expanduser()
            require(path.exists(), f"--data {item} does not exist: give pydoc, stdlib, hf:NAME or text/JSONL files")
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl")) if path.is_dir() else [path]
            require(files, f"--data {item} holds no .txt/.md/.jsonl files")
            for file in files:
                docs.extend(file_documents(file, text_field))
    docs = [d for d in docs if d.strip()]
    require(docs, f"--data {spec} has no non-empty documents")
    return docs


class PackedRows:
    """Rows of `seq_len` tokens packed from shuffled documents: dicts of input_ids, position_ids, labels.

    Epoch e visits the documents in the order of `random.Random(seed + e)`; the token stream (each document's
    tokens, then EOS) is cut into consecutive rows. A document cut by a row boundary continues in the next
    row with positions restarting at 0 there. Infinite: iterate as far as the run needs.
    """

    def __init__(self, docs: list[str], tokenizer, seq_len: int, seed: int = 0):
        require(tokenizer.eos_token_id is not None, "the tokenizer has no EOS token to separate packed documents")
        self.docs, self.tokenizer, self.seq_len, self.seed = docs, tokenizer, seq_len, seed
        self._cache: dict[int, list[int]] = {}

    def tokens(self, index: int) -> list[int]:
        if index not in self._cache:
            ids = self.tokenizer(self.docs[index], add_special_tokens=True, verbose=False)["input_ids"]  # no length warning
            self._cache[index] = list(ids) + [self.tokenizer.eos_token_id]
        return self._cache[index]

    def _segments(self) -> Iterator[list[int]]:
        """Tokenized documents (EOS included) in the seeded order, epoch after epoch."""
        epoch = 0
        while True:
            order = list(range(len(self.docs)))
            random.Random(self.seed + epoch).shuffle(order)
            for index in order:
                yield self.tokens(index)
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        import torch

        ids, segment_of, segment = [], [], 0
        for doc in self._segments():
            start = 0
            while start < len(doc):
                take = doc[start:start + self.seq_len - len(ids)]
                ids.extend(take)
                segment_of.extend([segment] * len(take))
                start += len(take)
                if len(ids) == self.seq_len:
                    yield row_tensors(torch.tensor(ids), torch.tensor(segment_of))
                    ids, segment_of = [], []
            segment += 1

    def rows(self, start: int = 0) -> Iterator[dict]:
        """Rows from index `start` on (resume skips what was consumed; tokenizing them again is cheap)."""
        import itertools

        return itertools.islice(iter(self), start, None)


def row_tensors(input_ids, segment_ids) -> dict:
    """position ids restarting per segment, and next-token labels that never cross a segment boundary."""
    import torch

    # input_ids, segment_ids: [T]
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[1:] = segment_ids[1:] != segment_ids[:-1]
    index = torch.arange(len(input_ids))
    segment_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=0).values
    position_ids = index - segment_start
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    same = segment_ids[1:] == segment_ids[:-1]
    labels[:-1] = torch.where(same, input_ids[1:], torch.full_like(input_ids[1:], IGNORE_INDEX))
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def collate(rows: list[dict]) -> dict:
    import torch

    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
