"""The training forward: a causal LM whose forward returns the summed next-token loss from its hidden states
(`longctx.loss`), with PoSE's block-causal mask where position ids jump inside a document."""

from __future__ import annotations

import torch

from longctx.loss import chunked_cross_entropy, liger_cross_entropy, liger_supports, logit_transform
from longctx.train.pose import block_causal_mask


class CausalLMLoss(torch.nn.Module):
    """A causal LM whose forward returns the summed next-token loss, computed from hidden states.

    Wrapping (rather than calling the decoder and lm_head from outside) keeps the output projection inside
    the module that accelerate prepares, so FSDP/DeepSpeed gather its weight during this forward.
    """

    def __init__(
        self, model: torch.nn.Module, *, chunk: int = 1024, use_liger: bool = False, flatten_batch: bool | None = None
    ):
        super().__init__()
        self.model, self.chunk, self.use_liger = model, chunk, use_liger
        attn = str(getattr(self.hf_model().config, "_attn_implementation", "") or "")
        # flash-attn reads document boundaries from position_ids only for a batch of ONE row
        # (transformers `_is_packed_sequence`); [B, T] rows become [1, B·T] (each row starts at position 0).
        self.flatten_batch = attn.startswith("flash") if flatten_batch is None else flatten_batch

    def hf_model(self):
        """The transformers model (inside a peft wrapper when there is one)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        hf = self.hf_model()
        decoder = getattr(hf, hf.base_model_prefix)
        mask = None
        if segment_ids is not None and bool((segment_ids == segment_ids[:, :1]).all()):
            # PoSE rows of one document each: an all-ones 2-D mask stops transformers from reading the position
            # jumps as document starts and keeps SDPA on its causal fast path (a 4-D mask does not; -17% time
            # per SmolLM2 step at 2K on CPU).
            mask = torch.ones_like(input_ids)
        elif segment_ids is not None:
            # PoSE position ids jump inside a document, so they no longer mark documents: mask explicitly.
            mask = block_causal_mask(segment_ids, attn_implementation=hf.config._attn_implementation,
                                     dtype=hf.get_input_embeddings().weight.dtype)
        elif self.flatten_batch and input_ids.shape[0] > 1:
            input_ids, position_ids, labels = (x.reshape(1, -1) for x in (input_ids, position_ids, labels))
        # Without segment_ids: no attention_mask and no cache, so transformers derives the per-document mask
        # from the restarting position_ids.
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         use_cache=False).last_hidden_state
        head = hf.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if getattr(hf.config, "tie_word_embeddings", False):
            # Tied head: use the embedding as trained (peft trains a copy of it with --trainable-extra embed),
            # which is what a merged, re-tied checkpoint will use.
            weight = hf.get_input_embeddings().weight
        transform = logit_transform(hf.config)
        if self.use_liger and hidden.is_cuda and liger_supports(hf.config):
            softcap = getattr(hf.config, "final_logit_softcapping", None) or None
            return liger_cross_entropy(hidden, weight, labels, bias=bias, softcap=softcap)
        return chunked_cross_entropy(hidden, weight, labels, bias=bias, chunk=self.chunk, transform=transform)
