"""The settings of a rope patch: one `Option` per flag (`--beta-fast`), recipe flag and YAML key, with the check
that refuses a bad value in one line naming the flag. The methods that own them are `longctx.rope_methods`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from longctx.errors import require
from longctx.lengths import MAX_CONTEXT

# MAX_CONTEXT: the longest context a patch or an analysis may claim (2^24 = 16.8M tokens, above every published
# model): a larger factor or length is a typo (`--factor 1e300`) that would write a config no run could use, and
# `longctx analyze`'s exact bound search would take minutes.


# ------------------------------------------------------------------------------------------------ checks
def finite_positive(value, flag: str) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f"{flag} must be a finite number > 0, got {value}")


def rotary_base(value, flag: str) -> None:
    """θᵢ = b^(−2i/d) rotates slower with i only for b > 1: a base ≤ 1 is no rope transformers can use."""
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 1,
            f"{flag} must be a finite number > 1 (a rope base such as 1e6), got {value}")


def scale_factor(value, flag: str) -> None:
    finite_positive(value, flag)
    require(value <= MAX_CONTEXT, f"{flag} {value} is absurdly large: the context it claims would exceed "
                                  f"{MAX_CONTEXT:,} tokens (2^24)")


def token_length(value, flag: str) -> None:
    require(isinstance(value, int) and value > 0, f"{flag} must be a positive integer, got {value}")
    require(value <= MAX_CONTEXT, f"{flag} {value} is above {MAX_CONTEXT:,} tokens (2^24): check the number")


@dataclass(frozen=True)
class Option:
    """One patch setting: a PatchSpec field, a `longctx patch` flag (`--beta-fast`), a recipe flag and YAML key."""

    name: str
    type: type  # float, int or str: what argparse and the recipe's YAML reader coerce to
    help: str
    default: Any = None  # written to the config when the flag is not given (None: nothing, transformers derives it)
    default_text: str | None = None  # the default as the help says it, when not just `default`
    check: Callable[[Any, str], None] | None = finite_positive  # raises a UsageError naming the flag
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_shown(self) -> str | None:
        return self.default_text or (f"{self.default:g}" if self.default is not None else None)


COMMON_OPTIONS = (
    Option("base", float, "new rope_theta (e.g. 1e6); combines with every method", check=rotary_base),
    Option("factor", float, "scale factor s ≥ 1 (default: target length / trained length)", check=scale_factor),
    Option("target_length", int, "context to extend to (written as max_position_embeddings)", check=token_length),
    Option("original_length", int, "trained context (default: read from the config)", check=token_length),
)
