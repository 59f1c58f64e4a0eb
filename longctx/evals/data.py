"""Text for evaluation: token streams, sentence-split haystacks and prompt prefixes.

`--data` and `--haystack` take any spec of `longctx.corpus` (pydoc by default, stdlib, files, hf:NAME with
the `test` split unless given). Document order is shuffled by the run's seed, so the same seed always scores
the same text.
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass

from longctx.corpus import DEFAULT_DATA, load_documents
from longctx.errors import UsageError

# A sentence ends after . ! or ? followed by whitespace, or after a blank line; the whitespace stays with
# the next piece, so "".join(pieces) == text and each piece can be tokenized on its own.
SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)|(?<![.!?]\n\n)(?<=\n\n)(?=\S)")


def load_texts(spec: str | None = None) -> list[str]:
    """Evaluation text: `longctx.corpus.load_documents`, taking the held-out `test` split of hf: datasets."""
    return load_documents(spec, default_split="test")


def check_spec(spec: str | None) -> None:
    """Fail on a bad data spec before any model is loaded: local sources are read, hf: needs datasets."""
    if spec and spec.startswith("hf:"):
        if importlib.util.find_spec("datasets") is None:
            raise UsageError("--data hf:... needs the datasets package: pip install 'longctx[eval]'")
    elif spec not in (None, DEFAULT_DATA, "stdlib"):
        load_texts(spec)


def special_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before text by itself (a BOS, or nothing): every prompt starts with them."""
    plain = tokenizer.encode("x", add_special_tokens=False)
    full = tokenizer.encode("x", add_special_tokens=True)
    if len(full) > len(plain) and full[len(full) - len(plain):] == plain:
        return full[: len(full) - len(plain)]
    return []


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def token_stream(tokenizer, texts: list[str], n_tokens: int, seed: int) -> list[int]:
    """At most n_tokens of the documents in a seeded order, each followed by a blank line.

    Only as many documents as needed are tokenized, so a large corpus costs no more than a small one.
    """
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    for index in order:
        if len(stream) >= n_tokens:
            break
        stream.extend(encode(tokenizer, texts[index] + "\n\n"))
    return stream[:n_tokens]


def sentence_pieces(text: str) -> list[str]:
    """Split text after each sentence end; the pieces join back to the text exactly."""
    return [piece for piece in SENTENCE_END.split(text) if piece]


class SentenceTokens:
    """Tokenized documents split at sentence ends, cached per document: haystacks are built from these."""

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer = tokenizer
        self.texts = texts
        self._cache: dict[int, list[list[int]]] = {}

    def pieces(self, index: int) -> list[list[int]]:
        """Token ids of each sentence of document `index`."""
        if index not in self._cache:
            pieces = sentence_pieces(self.texts[index])
            self._cache[index] = [ids for ids in self.tokenizer(pieces, add_special_tokens=False)["input_ids"] if ids]
        return self._cache[index]

    def take(self, n_tokens: int, start: int) -> list[list[int]]:
        """Sentences from document `start` on (wrapping around) until they hold at least n_tokens."""
        taken, total, index = [], 0, start
        while total < n_tokens:
            pieces = self.pieces(index % len(self.texts))
            taken.extend(pieces)
            total += sum(len(piece) for piece in pieces)
            index += 1
            if index - start > len(self.texts) and total == 0:
                raise UsageError("the haystack text tokenizes to nothing")
        return taken


@dataclass
class Window:
    """A stretch of ONE document to score: its name, first token index, and token ids."""

    doc: str
    start: int
    tokens: list[int]


class DocumentTokens:
    """Named documents tokenized on demand and cached, so several lengths tokenize each document once."""

    def __init__(self, tokenizer, named_docs: list[tuple[str, str]]):
        self.tokenizer = tokenizer
        self.docs = named_docs
        self._ids: dict[int, list[int]] = {}

    def ids(self, index: int) -> list[int]:
        if index not in self._ids:
            self._ids[index] = encode(self.tokenizer, self.docs[index][1])
        return self._ids[index]

    def longest(self) -> int:
        return max(len(self.ids(i)) for i in range(len(self.docs)))

    def windows(self, length: int, count: int, seed: int, *, span: int | None = None) -> list[Window]:
        """Up to `count` windows of `span` (default `length`) tokens, each inside one document.

        Only documents holding at least `length` tokens qualify, taken in an order fixed by `seed` (the same
        documents at every length for one seed); windows go round-robin over them, so `count` qualifying
        documents give one window each, fewer give several non-overlapping windows per document, at seeded
        offsets. A document never shares a window with another: no window crosses a document boundary.
        """
        span = span or length
        order = list(range(len(self.docs)))
        random.Random(seed).shuffle(order)
        eligible = []
        for index in order:
            # a token covers at least one UTF-8 byte: shorter documents cannot qualify, skip tokenizing them
            if len(self.docs[index][1].encode("utf-8")) >= length and len(self.ids(index)) >= length:
                eligible.append(index)
                if len(eligible) == count:
                    break
        if not eligible:
            return []
        rng = random.Random(f"{seed}|{length}|{span}")
        capacity = [len(self.ids(index)) // length for index in eligible]  # windows never overlap
        per_doc = [0] * len(eligible)
        while sum(per_doc) < count and per_doc != capacity:  # round-robin over documents with room left
            for i in range(len(eligible)):
                if per_doc[i] < capacity[i] and sum(per_doc) < count:
                    per_doc[i] += 1
        windows = []
        for index, k in zip(eligible, per_doc, strict=True):
            ids = self.ids(index)
            slot = len(ids) // k
            for j in range(k):
                size = min(span, slot)
                start = j * slot + rng.randint(0, slot - size)
                windows.append(Window(self.docs[index][0], start, ids[start:start + size]))
        return windows
