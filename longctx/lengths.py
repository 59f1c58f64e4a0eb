"""Token counts as people write them, read and written in one place.

`16k` means 16,384 tokens everywhere: `longctx analyze`, `longctx patch --target-length`, suite and
`longctx eval --lengths`, and the recipe's length settings. Written back, 16384 is `16K` (`fmt_len`).
"""

from __future__ import annotations

import argparse
import math
import re

MAX_CONTEXT = 1 << 24  # the longest context longctx accepts anywhere (a larger number is a typo)
_COUNT = re.compile(r"^(\d+(?:\.\d*)?(?:e\d+)?)([km]?)$", re.IGNORECASE)
SYNTAX = "e.g. 16k, 1.5k, 1M or 65536"


def parse_tokens(text) -> int:
    """'16k' -> 16384, '1.5K' -> 1536, '1M' -> 1048576, '65536', '1e6' -> 1000000 (an int passes through).
    ValueError, whose message says why, for anything that is not a whole number of tokens (the caller checks the
    range: its message names the flag)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _COUNT.match(str(text).strip())
        if not match:
            raise ValueError(f"use {SYNTAX}")
        value = float(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[match.group(2).lower()]
    if not math.isfinite(value) or value != int(value):
        raise ValueError("it must be a whole number of tokens")
    return int(value)


def token_count(text: str) -> int:
    """`parse_tokens` as an argparse `type=`: a bad value is argparse's one-line error naming the flag."""
    try:
        return parse_tokens(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad token count {text!r}: {exc}") from None


def fmt_len(length: int) -> str:
    """4096 -> '4K', 1536 -> '1.5K', 1000 -> '1000': how context lengths are usually spoken of."""
    if length >= 1024 and length % 512 == 0:
        return f"{length / 1024:g}K"
    return str(length)
