"""Text for evaluation: an embedded default that needs no download, local files, or a `datasets` corpus.

`--data` (and `--haystack`) accept:
  pydoc                      the prose of Python's own documentation (`pydoc_data.topics`, ~465K chars; default)
  stdlib                     the standard library's top-level `*.py` sources (code, ~10 MB)
  FILE / DIR                 a text file (one document), a `.jsonl` file (field `text` per line), or a
                             directory of `*.txt` / `*.md` / `*.jsonl` files
  hf:NAME[:CONFIG][:SPLIT]   a Hugging Face dataset (field `text`, split `test` unless given)
Document order is shuffled by the run's seed, so the same seed always scores the same text.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sysconfig
from pathlib import Path

from longctx.errors import UsageError

DEFAULT_DATA = "pydoc"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")

# A sentence ends after . ! or ? followed by whitespace, or after a blank line; the whitespace stays with
# the next piece, so "".join(pieces) == text and each piece can be tokenized on its own.
SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)|(?<![.!?]\n\n)(?<=\n\n)(?=\S)")


def data_name(spec: str | None) -> str:
    """The short name a cell key records: 'pydoc', 'stdlib', a file's name, or the hf: spec."""
    if not spec or spec == DEFAULT_DATA:
        return DEFAULT_DATA
    if spec == "stdlib" or spec.startswith("hf:"):
        return spec
    return Path(spec).name


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{number} is not valid JSON: a .jsonl file needs one object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UsageError(f"{path}:{number} has no string field 'text'")
        texts.append(record["text"])
    return texts


def _file_texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return _jsonl_texts(path)
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def _hf_texts(spec: str) -> list[str]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise UsageError(f"bad dataset spec {spec!r}: use hf:NAME[:CONFIG][:SPLIT]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (parts[2] if len(parts) > 2 else "test")
    try:
        from datasets import load_dataset
    except ImportError:
        raise UsageError("--data hf:... needs the datasets package: pip install 'longctx[eval]'") from None
    try:
        dataset = load_dataset(name, config, split=split)
    except (OSError, ValueError, ConnectionError) as exc:
        raise UsageError(f"cannot load dataset {spec!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if "text" not in dataset.column_names:
        raise UsageError(f"dataset {spec!r} has no 'text' field (fields: {', '.join(dataset.column_names)})")
    return list(dataset["text"])


def load_texts(spec: str | None = None) -> list[str]:
    """The non-empty documents of a data spec (see the module docstring); UsageError when there are none."""
    spec = spec or DEFAULT_DATA
    if spec == DEFAULT_DATA:
        from pydoc_data.topics import topics

        texts = [topics[name] for name in sorted(topics)]
    elif spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        texts = [path.read_text(encoding="utf-8", errors="replace") for path in sorted(root.glob("*.py"))]
    elif spec.startswith("hf:"):
        texts = _hf_texts(spec)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            texts = [text for file in files for text in _file_texts(file)]
        elif path.is_file():
            texts = _file_texts(path)
        else:
            raise UsageError(f"data {spec!r} is neither pydoc, stdlib, hf:NAME nor an existing file or directory")
    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise UsageError(f"data {spec!r} holds no text")
    return texts


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
