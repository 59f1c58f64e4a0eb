"""PoSE: positional skip-wise fine-tuning (Zhu et al. 2023, arXiv 2309.10400).

Training stays at the original length, but each document in a row gets position ids that jump: the
document is cut into `chunks` contiguous chunks and every later chunk is shifted by a skip, so the model
sees relative distances up to the target length N without ever holding N tokens. Skips are drawn uniformly
and non-decreasing (u₁ ≤ u₂ ≤ … ≤ N − ℓ for a document of ℓ tokens, as in the paper), so position ids stay
increasing and the last one is at most N − 1. Chunk boundaries are uniform over the document.

Packing: transformers reads a jump in position ids as the start of a new packed document
(`masking_utils.find_packed_sequence_indices`), which would cut attention between the chunks of one document.
So PoSE rows carry `segment_ids`, and the loss wrapper passes an explicit block-diagonal causal mask built
from them (`block_causal_mask`) instead of relying on position ids. flash_attention_2 derives its varlen
boundaries from position ids and has no mask input, so PoSE refuses it (use sdpa).
"""

from __future__ import annotations

import random


def skip_positions(length: int, target_length: int, rng: random.Random, chunks: int = 2) -> list[int]:
    """Position ids for one document of `length` tokens: `chunks` contiguous runs with non-decreasing skips,
    every id < target_length. A document already as long as the target keeps 0..length-1."""
    if length >= target_length or length < 2 or chunks < 2:
        return list(range(length))
    chunks = min(chunks, length)
    cuts = sorted(rng.sample(range(1, length), chunks - 1))  # chunk i covers [edges[i], edges[i+1])
    skips = sorted(rng.randint(0, target_length - length) for _ in range(chunks - 1))
    edges, offsets = [0, *cuts, length], [0, *skips]
    positions: list[int] = []
    for begin, end, offset in zip(edges[:-1], edges[1:], offsets, strict=True):
        positions.extend(range(begin + offset, end + offset))
    return positions


def pose_row(row: dict, segment_ids, target_length: int, rng: random.Random, chunks: int = 2) -> dict:
    """A packed row (`longctx.train.data.row_tensors`) with PoSE position ids per document and its
    `segment_ids` (needed to build the attention mask, since the position ids no longer mark documents)."""
    import torch

    positions = row["position_ids"].clone()
    boundaries = [0, *(torch.nonzero(segment_ids[1:] != segment_ids[:-1]).flatten() + 1).tolist(), len(segment_ids)]
    for begin, end in zip(boundaries, boundaries[1:], strict=False):
        positions[begin:end] = torch.tensor(skip_positions(end - begin, target_length, rng, chunks))
    return {**row, "position_ids": positions, "segment_ids": segment_ids.clone()}


def block_causal_mask(segment_ids, *, attn_implementation: str, dtype):
    """[B, 1, T, T] mask letting each token attend to earlier tokens of its own document only.

    sdpa takes a boolean mask (True = attend); eager adds the mask to the scores, so it gets 0 / dtype-min.
    """
    import torch

    if str(attn_implementation).startswith("flash"):
        from longctx.errors import UsageError

        raise UsageError("PoSE needs an attention mask, which flash_attention_2 does not take: "
                         "use --attn-implementation sdpa")
    # segment_ids: [B, T]
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal  # [B, T, T]
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
