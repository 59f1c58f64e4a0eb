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

# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by whitespace and then an
# uppercase letter, a quote or bracket, or a line break before anything but a lowercase letter; never at an
# ellipsis ("from ... import *"), an abbreviation ("e.g.", "Mr.") or an initial. A blank line also ends a
# piece. Pieces split before the whitespace, which stays with the next one: "".join(pieces) == text.
SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*(?=(\s+)(.?))", re.DOTALL)
BLANK_LINE = re.compile(r"(?<=\S)(?=[ \t]*\n[ \t]*\n)")
ABBREVIATIONS = frozenset({"e.g", "i.e", "cf", "vs", "viz", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "fig"})
OPENERS = "\"'“‘(["


def load_texts(spec: str | None = None) -> list[str]:
    """Evaluation text: `longctx.corpus.load_documents`, taking the held-out `test` split of hf: datasets."""
    return load_documents(spec, default_split="test")


def book_files(folder) -> list:
    """The `.txt` files of a `--haystack-dir` in name order; a missing folder, or one without any, is refused."""
    from pathlib import Path

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"--haystack-dir {folder}: not a folder (give a folder of .txt books, e.g. ../shared/data/books)"
        )
    files = sorted(p for p in path.glob("*.txt") if p.is_file())
    if not files:
        raise UsageError(f"--haystack-dir {folder} holds no .txt file")
    return files


DATA_SPEC = {"data_spec": True}  # metadata of a task Config field that names evaluation text (`data_specs`)


def data_specs(cfg) -> list[str]:
    """The data specs a task's Config names, from its fields marked with DATA_SPEC metadata."""
    import dataclasses

    return [getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("data_spec") and getattr(cfg, f.name) is not None]


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
    """Token ids of `text` on its own, as the start of a text (SentencePiece tokenizers prepend "▁" here)."""
    return tokenizer.encode(text, add_special_tokens=False)


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_after(tokenizer, before: str | None, text: str) -> list[int] | None:
    """The ids `text` gets where it continues `before` (None: where it starts the text).

    They are the tokens that tokenizing before + text adds to the tokens of `before`, so pieces tokenized
    this way concatenate to the tokenization of the joined text. Tokenizing a piece on its own does not:
    a SentencePiece tokenizer (Llama-2, Mistral) puts "▁" before every piece, so " 42" becomes "▁▁42".
    None when one token spans the junction (Llama-3 glues a period to the newlines after it): `text`
    cannot start a piece there.
    """
    if before is None:
        return encode(tokenizer, text)
    head, full = _encode_batch(tokenizer, [before, before + text])
    return full[len(head):] if full[: len(head)] == head else None


def continuation(tokenizer, before: str, text: str) -> list[int]:
    """`encode_after` for the fixed parts of a prompt (needle, question, answer), which must start a token."""
    ids = encode_after(tokenizer, before, text)
    if not ids:
        raise UsageError(f"this tokenizer joins {text[:30]!r} to the text before it ({before[-30:]!r}) into one "
                         "token: the prompt cannot be built with exact token boundaries")
    return ids


@dataclass
class Piece:
    """A stretch of prompt text and its token ids where it stands: ids of consecutive pieces concatenate to
    the tokenization of their joined text."""

    text: str
    ids: list[int]
    ends_sentence: bool = False  # a needle may go right after it


def join_pieces(pieces: list[Piece]) -> tuple[list[int], str, list[int], dict[int, int]]:
    """(ids, text, sentence ends, chars) of `pieces` one after another: the token offsets right after each piece
    that ends a sentence (where a needle may go), and {token offset: character offset} at each of them and at 0."""
    ids, text, ends, chars = [], "", [], {0: 0}
    for piece in pieces:
        ids += piece.ids
        text += piece.text
        if piece.ends_sentence:
            ends.append(len(ids))
            chars[len(ids)] = len(text)
    return ids, text, ends, chars


def tokenize_pieces(tokenizer, texts: list[str], before: str | None = None) -> list[Piece]:
    """Consecutive text pieces (continuing `before`, or starting the text when None), each with the ids it
    gets in the joined text; a piece that does not start on a token boundary joins the piece before it."""
    contexts = [before, *texts[:-1]]
    heads = iter(_encode_batch(tokenizer, [c for c in contexts if c is not None]))
    fulls = _encode_batch(tokenizer, [(c or "") + t for c, t in zip(contexts, texts, strict=True)])
    pieces: list[Piece] = []
    for context, text, full in zip(contexts, texts, fulls, strict=True):
        head = next(heads) if context is not None else []
        ids = full[len(head):] if full[: len(head)] == head else None
        while ids is None:  # a token spans the junction: glue the text onto the piece before until it starts one
            if not pieces:
                raise UsageError(f"this tokenizer joins {text[:30]!r} to the text before it into one token")
            text = pieces.pop().text + text
            ids = encode_after(tokenizer, pieces[-1].text if pieces else before, text)
        pieces.append(Piece(text, ids, is_sentence_end(text)))
    return pieces


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
    """Split text after each sentence end and before each blank line; the pieces join back to the text."""
    cuts = {m.end() for m in SENTENCE_END.finditer(text) if _ends_sentence(text, m.start(), m.group(1), m.group(2))}
    cuts |= {m.start() for m in BLANK_LINE.finditer(text)}
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def _ends_sentence(text: str, stop: int, space: str, following: str) -> bool:
    """Whether the [.!?] at `stop`, followed by `space` and the character `following`, ends a sentence."""
    if text[stop] == "." and (text[stop - 1:stop] in (".", "…") or text[stop + 1:stop + 2] == "."):
        return False  # an ellipsis
    if text[stop] == ".":
        word = re.search(r"[A-Za-z.]*$", text[max(0, stop - 12):stop]).group(0).lstrip(".")
        if word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper()):
            return False  # "e.g.", "Mr.", an initial
    if following.isupper() or (following and following in OPENERS):
        return True
    return "\n" in space and not following.islower()


def is_sentence_end(piece: str) -> bool:
    """Whether a piece ends with a sentence end (judged without what follows): a needle may go after it."""
    match = re.search(r"[.!?][\"'’”)\]]*$", piece)
    return match is not None and _ends_sentence(piece + " A", match.start(), " ", "A")


# Text a needle follows (a sentence end) and text a question follows (the haystack is cut after a word):
# the ids of those fixed parts are taken as continuations of these, and every junction is then checked.
AFTER_SENTENCE = "It ends here."
AFTER_WORD = "It ends here"


def fill_exactly(tokenizer, stream: list[Piece], n_tokens: int, before: str | None,
                 tails: list[tuple[str, list[int]]], skips: int = 64) -> list[Piece]:
    """Exactly n_tokens of `stream` (pieces continuing `before`): whole pieces, then the start of a piece,
    cut so that each tail (text, ids) still tokenizes to exactly its ids after them.

    The cut goes after a word (inside one only if no piece allows that). A piece that cannot be cut to the
    count is skipped, and so is a cut that a tail's first token would swallow (Llama-3 glues "." to a
    newline): either would make the ids differ from the tokenization of the joined text.
    """
    def clean_end(text: str) -> bool:
        return all(encode_after(tokenizer, text, tail) == ids for tail, ids in tails)

    for inside_words in (False, True):
        taken, total, skipped, gap = [], 0, 0, False
        for piece in stream:
            previous = taken[-1].text if taken else before
            need = n_tokens - total
            if gap and previous is not None:  # after a gap the piece follows other text: tokenize it there
                ids = encode_after(tokenizer, previous, piece.text)
                piece = Piece(piece.text, ids, piece.ends_sentence) if ids is not None else Piece("", [])
            if piece.ids and (len(piece.ids) < need or len(piece.ids) == need and clean_end(piece.text)):
                taken.append(piece)
                total, gap = total + len(piece.ids), False
                if total == n_tokens:
                    return taken
                continue
            cut = _cut(tokenizer, previous, piece, need, clean_end, inside_words) if piece.ids and need else None
            if cut is not None:
                return [*taken, cut]
            skipped, gap = skipped + 1, True
            if skipped > skips:
                break
        if total == n_tokens and clean_end((taken[-1].text if taken else before) or ""):
            return taken
    # no clean end (not seen with real tokenizers): the ids are still exact, the last junction may differ
    taken, total = [], 0
    for piece in stream:
        if total + len(piece.ids) > n_tokens:
            ids = piece.ids[: n_tokens - total]
            return [*taken, Piece(tokenizer.decode(ids), ids)] if ids else taken
        taken.append(piece)
        total += len(piece.ids)
    return taken


def _cut(tokenizer, before: str | None, piece: Piece, need: int, clean_end, inside_words: bool) -> Piece | None:
    """The start of `piece` that takes exactly `need` tokens after `before` and ends cleanly: up to the end of a
    word, or with `inside_words` up to any character."""
    def count(end: int) -> int:
        ids = encode_after(tokenizer, before, piece.text[:end])
        return len(ids) if ids is not None else -1

    def first_reaching(points: list[int]) -> int:
        low, high = 0, len(points) - 1
        while low < high:  # the token count grows with the text
            mid = (low + high) // 2
            low, high = (low, mid) if count(points[mid]) >= need else (mid + 1, high)
        return low

    text = piece.text
    if inside_words:
        points = list(range(1, len(text) + 1))
    else:
        points = [i for i in range(1, len(text)) if text[i].isspace() and not text[i - 1].isspace()] + [len(text)]
    first = first_reaching(points)
    for end in points[first:first + 8]:
        if count(end) != need:
            break
        if clean_end((before or "") + text[:end]):
            return Piece(text[:end], encode_after(tokenizer, before, text[:end]),
                         ends_sentence=piece.ends_sentence and end == len(text))
    return None


class SentenceTokens:
    """A haystack: documents one after another (a blank line between), split at sentence ends and tokenized
    where they stand in it, so its ids are the tokenization of its text. Documents are tokenized once."""

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer = tokenizer
        self.texts = texts
        self._cache: dict[int, list[Piece]] = {}

    def pieces(self, index: int) -> list[Piece]:
        """The sentences of document `index`, tokenized as the start of a text."""
        if index not in self._cache:
            self._cache[index] = tokenize_pieces(self.tokenizer, sentence_pieces(self.texts[index].strip()))
        return self._cache[index]

    def stream(self, n_tokens: int, start: int, spare: int = 2048) -> list[Piece]:
        """Sentences from document `start` on (wrapping around) holding n_tokens + `spare` tokens."""
        stream: list[Piece] = []
        total, index = 0, start
        while total < n_tokens + spare:
            if index - start >= len(self.texts) and total == 0:
                raise UsageError("the haystack text tokenizes to nothing")
            pieces = self.pieces(index % len(self.texts))
            index += 1
            if not pieces:
                continue
            if stream:  # the document follows the one before after a blank line
                first = "\n\n" + pieces[0].text
                ids = encode_after(self.tokenizer, stream[-1].text, first)
                while ids is None:  # a token spans the junction: glue the piece onto the one before
                    first = stream.pop().text + first
                    ids = encode_after(self.tokenizer, stream[-1].text if stream else None, first)
                pieces = [Piece(first, ids, pieces[0].ends_sentence), *pieces[1:]]
            stream.extend(pieces)
            total = sum(len(piece.ids) for piece in stream)
        return stream

    def take(self, n_tokens: int, start: int, tails: list[tuple[str, list[int]]]) -> list[Piece]:
        """Exactly n_tokens of haystack from document `start` on, cut where every tail follows cleanly."""
        return fill_exactly(self.tokenizer, self.stream(n_tokens, start), n_tokens, None, tails)


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

    def windows(self, length: int, count: int, seed: int, *, span: int | None = None,
                prefer_length: int | None = None) -> list[Window]:
        """Up to `count` windows of `span` (default `length`) tokens, each inside one document.

        Only documents holding at least `length` tokens qualify, taken in an order fixed by `seed`; documents
        that also hold `prefer_length` tokens (the longest length of a sweep) come first, so every length of
        a sweep reads the same documents where the corpus allows and lengths compare like with like. Windows
        go round-robin over the chosen documents, so `count` documents give one window each, fewer give
        several non-overlapping windows per document, at seeded offsets. No window crosses a document boundary.
        """
        span = span or length
        order = list(range(len(self.docs)))
        random.Random(seed).shuffle(order)

        def holds(index: int, n: int) -> bool:
            # a token covers at least one UTF-8 byte: shorter documents cannot qualify, skip tokenizing them
            return len(self.docs[index][1].encode("utf-8")) >= n and len(self.ids(index)) >= n

        eligible: list[int] = []
        for threshold in dict.fromkeys([max(length, prefer_length or length), length]):
            for index in order:
                if len(eligible) == count:
                    break
                if index not in eligible and holds(index, threshold):
                    eligible.append(index)
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
