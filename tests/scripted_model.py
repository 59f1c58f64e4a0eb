"""A stand-in causal LM for grading tests: it follows token sequences it was given, so what a grader sees is
decided by the test, not by a trained model."""

from __future__ import annotations

import types

import torch


class ScriptedModel(torch.nn.Module):
    """After any prefix of one of `sequences`, emits that sequence's next token; after anything else, token 0.
    Keeps a DynamicCache's length in step (dummy keys), so forced and generated passes can reuse a cache."""

    def __init__(self, tokenizer, sequences: list[list[int]]):
        from transformers import LlamaConfig

        super().__init__()
        self.config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, num_attention_heads=1,
                                  num_hidden_layers=1, intermediate_size=8)
        self.vocab = len(tokenizer)
        self.sequences = sequences
        self.seen: list[int] = []

    @property
    def device(self):
        return torch.device("cpu")

    def _next(self, history: list[int]) -> int:
        for sequence in self.sequences:
            if len(sequence) > len(history) and sequence[: len(history)] == history:
                return sequence[len(history)]
        return 0  # a context it does not know: some unrelated token

    def forward(self, input_ids, past_key_values=None, use_cache=False, logits_to_keep=1):
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        new = input_ids[0].tolist()
        self.seen = self.seen[:past] + new
        if past_key_values is not None:
            dummy = torch.zeros(1, 1, len(new), 1)
            past_key_values.update(dummy, dummy, 0)
        logits = torch.zeros(1, logits_to_keep, self.vocab)
        for row, end in enumerate(range(len(self.seen) - logits_to_keep + 1, len(self.seen) + 1)):
            logits[0, row, self._next(self.seen[:end])] = 1.0
        return types.SimpleNamespace(logits=logits)
