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

import random
from collections.abc import Iterator

from longctx.errors import require

IGNORE_INDEX = -100


class PackedRows:
    """Rows of `seq_len` tokens packed from shuffled documents: dicts of input_ids, position_ids, labels.

    Epoch e visits the documents in the order of `random.Random(seed + e)`; the token stream (each document's
    tokens, then EOS) is cut into consecutive rows. A document cut by a row boundary continues in the next
    row with positions restarting at 0 there. Infinite: iterate as far as the run needs.
    """

    def __init__(self, docs: list[str], tokenizer, seq_len: int, seed: int = 0, *,
                 pose_target_length: int | None = None, pose_chunks: int = 2):
        require(tokenizer.eos_token_id is not None, "the tokenizer has no EOS token to separate packed documents")
        self.docs, self.tokenizer, self.seq_len, self.seed = docs, tokenizer, seq_len, seed
        # PoSE (longctx.train.pose): skip-wise position ids per document, drawn from (seed, row index)
        self.pose_target_length, self.pose_chunks = pose_target_length, pose_chunks
        self._cache: dict[int, list[int]] = {}

    def tokens(self, index: int) -> list[int]:
        if index not in self._cache:
            # no length warning
            ids = self.tokenizer(self.docs[index], add_special_tokens=True, verbose=False)["input_ids"]
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

        ids, segment_of, segment, index = [], [], 0, 0
        for doc in self._segments():
            start = 0
            while start < len(doc):
                take = doc[start:start + self.seq_len - len(ids)]
                ids.extend(take)
                segment_of.extend([segment] * len(take))
                start += len(take)
                if len(ids) == self.seq_len:
                    row = row_tensors(torch.tensor(ids), torch.tensor(segment_of))
                    if self.pose_target_length:
                        from longctx.train.pose import pose_row

                        rng = random.Random(f"{self.seed}|pose|{index}")
                        row = pose_row(row, torch.tensor(segment_of), self.pose_target_length, rng, self.pose_chunks)
                    yield row
                    ids, segment_of, index = [], [], index + 1
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
