"""Kamradt's prompts as he builds them (gkamradt/LLMTest_NeedleInAHaystack, main at 7b90d28), fitted to exact
lengths of the model's own tokenizer: his literal strings, the frame around the haystack (chat template or his
plain-text prompt), the books of `--haystack-dir`, sentence-end needle placement and exact token counts. No model
here; `longctx.evals.tasks.kamradt` runs and grades these prompts (its docstring lists where we differ from him).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re

from longctx.errors import UsageError
from longctx.evals.tasks import ruler_prompts
from longctx.evals.tasks import ruler_tasks as rt

NAME = "kamradt"  # the task's name (its samples carry it)
# needlehaystack/run.py (CommandArgs defaults)
NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
BUFFER = 200  # final_context_length_buffer
# needlehaystack/providers/openai.py (generate_prompt): system message, context, question as three messages
SYSTEM = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
QUESTION_TURN = "{retrieval_question} Don't give information outside the document or repeat your findings"
# needlehaystack/providers/Anthropic_prompt.txt, the plain-text prompt (no trailing newline)
PLAIN_PROMPT = (
    "You are a helpful AI bot that answers questions for a user. Keep your response short and direct\n\n"
    "Human: <context>\n{context}\n</context>\n\n"
    "{retrieval_question} Don't give information outside the document or repeat your findings\n\n"
    "Assistant: Here is the most relevant sentence in the context:")
KEY_PHRASES = ("sandwich", "Dolores Park")  # the needle's facts; a sample's score is the fraction present
SHIFTS = (0, 1, 2, 3, 5, 8)  # words the haystack's start moves when no cut gives the exact count (as RULER's essays)


class Frame:
    """Everything around the haystack: the chat template with his three messages (system, context, question), or
    his plain-text prompt. Messages a template refuses are merged (recorded as `chat_layout`)."""

    def __init__(self, tokenizer, mode: str):
        has = bool(getattr(tokenizer, "chat_template", None))
        if mode == "on" and not has:
            raise UsageError("--chat-template on: this tokenizer has no chat template (pass --chat-template off for "
                             "Kamradt's plain-text prompt)")
        self.tokenizer, self.chat = tokenizer, has if mode == "auto" else mode == "on"
        question = QUESTION_TURN.format(retrieval_question=QUESTION)
        if not self.chat:
            self.head, self.tail = PLAIN_PROMPT.format(context="\x00", retrieval_question=QUESTION).split("\x00")
            self.layout = "plain: Anthropic_prompt.txt"
            return
        from jinja2 import TemplateError

        marker = "\x00context\x00"
        layouts = {
            "system, user: context, user: question": [("system", SYSTEM), ("user", marker), ("user", question)],
            "system, user: context + question": [("system", SYSTEM), ("user", f"{marker}\n\n{question}")],
            "user: system + context + question": [("user", f"{SYSTEM}\n\n{marker}\n\n{question}")],
        }
        for layout, messages in layouts.items():
            try:
                text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                                     add_generation_prompt=True)
            except (TemplateError, ValueError):
                continue
            self.head, self.tail = text.split(marker)
            self.layout = layout
            return
        raise UsageError("--chat-template: this tokenizer's chat template refuses every message layout of Kamradt's "
                         "prompt: pass --chat-template off")

    def text(self, haystack: str) -> str:
        return self.head + haystack + self.tail

    def ids(self, haystack: str) -> list[int]:
        return self.tokenizer.encode(self.text(haystack), add_special_tokens=not self.chat)  # a template writes BOS

    def record(self) -> dict:
        return {"chat_template": "on" if self.chat else "off", "chat_layout": self.layout,
                "chat_wrapper": [self.head, self.tail]}


def read_books(folder) -> str:
    """The `.txt` files of `folder` in name order, concatenated as they are (his `read_context_files`), each cut to
    the text between Project Gutenberg's "*** START OF TH…" and "*** END OF TH…" lines where it has them."""
    from longctx.corpus import read_utf8
    from longctx.evals.tasks.data import book_files

    return "".join(without_gutenberg_license(read_utf8(p)) for p in book_files(folder))


def without_gutenberg_license(text: str) -> str:
    start = re.search(r"^\*\*\* ?START OF TH.*$", text, re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF TH", text, re.MULTILINE)
    first = start.end() + 1 if start else 0
    last = end.start() if end and (not start or end.start() > start.end()) else None
    return text[first:last]


class Haystack:
    """The books' text, its sentence ends, and prompts of exactly a given number of tokens built from it."""

    def __init__(self, text: str, frame: Frame):
        from longctx.evals.tasks.data import is_sentence_end, sentence_pieces

        self.text, self.frame, self.ends, end = text, frame, [], 0
        for piece in sentence_pieces(text):
            end += len(piece)
            if is_sentence_end(piece):
                self.ends.append(end)  # characters: a needle may go right after text[:end]
        self.label = f"books:{len(text)}c:{hashlib.sha1(text.encode()).hexdigest()[:8]}"
        self._tokens: dict[tuple[int, int], int] = {}

    def tokens(self, start: int, stop: int) -> int:
        """Tokens of text[start:stop] on its own (his `len(tokens_context)`), cached: sentence ends recur."""
        if (start, stop) not in self._tokens:
            text = self.text[start:stop]
            self._tokens[start, stop] = len(self.frame.tokenizer.encode(text, add_special_tokens=False))
        return self._tokens[start, stop]

    def offset(self, rng: random.Random) -> int:
        """A sentence start in the first half of the text (samples after the first)."""
        half = self.ends[: bisect.bisect_right(self.ends, len(self.text) // 2)]
        return rng.choice(half) if half else 0

    def needle_at(self, start: int, chars: int, depth: float) -> int:
        """Characters into the haystack text[start:start + chars] where the needle goes: his insertion point,
        int(haystack tokens × depth), moved back to the last sentence end at or before it (0 if none)."""
        target = int(self.tokens(start, start + chars) * depth)
        ends = self.ends[bisect.bisect_right(self.ends, start): bisect.bisect_right(self.ends, start + chars)]
        low, high = 0, len(ends)  # ends[:low] are at or before the target (token counts grow with the text)
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if self.tokens(start, ends[mid]) <= target else (low, mid)
        return ends[low - 1] - start if low else 0

    def context(self, start: int, chars: int, depth: float) -> tuple[str, int]:
        """(haystack with the needle, the needle's character position in it)."""
        body = self.text[start:start + chars]
        at = self.needle_at(start, chars, depth)
        return body[:at] + NEEDLE + body[at:], at

    def size(self, start: int, chars: int, depth: float) -> int:
        return len(self.frame.ids(self.context(start, chars, depth)[0]))

    def fit(self, start: int, depth: float, length: int, buffer: int, near: int | None = None) -> tuple[int, bool]:
        """(characters of haystack, exact): the prompt takes exactly L − buffer tokens (or the closest count below).
        The longest haystack that fits (binary search, bracketed around `near` when given), then
        `ruler_prompts.exact_cut` in the characters after it."""
        available, target = len(self.text) - start, length - buffer
        if self.size(start, 0, depth) > target:
            raise UsageError(f"kamradt: length {length} is too short: the prompt without haystack takes "
                             f"{self.size(start, 0, depth)} tokens, plus {buffer} for the answer")
        low, high = 0, min(available, 8 * target)
        if near is not None and self.size(start, max(near - 1024, 0), depth) <= target < self.size(
                start, min(near + 1024, available), depth):
            low, high = max(near - 1024, 0), min(near + 1024, available)
        while self.size(start, high, depth) <= target:
            if high == available:
                raise UsageError(f"kamradt: the --haystack-dir books hold {available:,} characters from this "
                                 f"sample's start, too little text for {length} tokens: add books or ask for shorter "
                                 "lengths")
            low, high = high, min(available, high * 2)
        while high - low > 1:  # the longest haystack whose prompt fits
            mid = (low + high) // 2
            low, high = (mid, high) if self.size(start, mid, depth) <= target else (low, mid)
        spill = rt.Draft("", "", "", "", [], spill=self.text[start + low:start + low + 256])
        cut = ruler_prompts.exact_cut(spill, lambda c: self.size(start, low + c, depth), target)
        return (low + cut, True) if cut is not None else (low, False)

    def word_start(self, start: int, words: int) -> int:
        """The start of the `words`-th word after `start` (0: `start` itself)."""
        for _ in range(words):
            space = self.text.find(" ", start + 1)
            start = space + 1 if space >= 0 else start
        return start


def build_sample(hay: Haystack, length: int, depth: float, index: int, seed: int, buffer: int) -> ruler_prompts.Sample:
    """Sample `index` of cell (length, depth): a prompt of exactly L − buffer tokens. Where no end of the haystack
    hits the count (one more character adding two tokens there), it starts a few words later (`shift_words`)."""
    origin = 0 if index == 0 else hay.offset(random.Random(seed))
    first = None
    for shift in SHIFTS:
        start = hay.word_start(origin, shift)
        chars, exact = hay.fit(start, depth, length, buffer, near=None if first is None else first[1])
        first = first or (start, chars, shift)
        if exact:
            break
    else:
        start, chars, shift = first
    context, at = hay.context(start, chars, depth)
    ids = hay.frame.ids(context)
    meta = {"depth": depth, "offset": start, "shift_words": shift, "haystack_chars": chars,
            "haystack_tokens": hay.tokens(start, start + chars), "needle_char": at,
            "needle_after": hay.text[start:start + at][-40:], "question": QUESTION}
    draft = rt.Draft(hay.frame.head, context, hay.frame.tail, "", list(KEY_PHRASES), meta=meta)
    return ruler_prompts.Sample(NAME, length, index, seed, ids, draft, buffer, exact)
