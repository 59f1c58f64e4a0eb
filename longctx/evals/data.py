"""Text for evaluation: token streams, sentence-split haystacks and prompt prefixes.

`--data` and `--haystack` take any spec of `longctx.corpus` (pydoc by default, stdlib, files, hf:NAME with
the `test` split unless given). Document order is shuffled by the run's seed, so the same seed always scores
the same text.
"""

from __future__ import annotations

import importlib.util
import random
import re

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
