"""The tiny random Llama that stands in for a real model where only the code path matters: the test suite's
fixture, the bench's `tiny` shape and the studies' dry runs all build it here.

2 layers, hidden 64, 4 query and 2 key/value heads of 16 dimensions, untied embeddings; random weights from
`seed`. A few MB on disk, a forward in milliseconds on CPU.
"""

from __future__ import annotations

from pathlib import Path

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)


def tiny_llama_config(tokenizer, *, max_position_embeddings: int = 256, rope_theta: float = 10000.0):
    """A transformers LlamaConfig of the tiny shape for `tokenizer` (its vocabulary and special ids)."""
    from transformers import LlamaConfig

    return LlamaConfig(**TINY_LLAMA, vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                       rope_theta=rope_theta, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def write_tiny_llama(out: Path, tokenizer, *, max_position_embeddings: int = 256, rope_theta: float = 10000.0,
                     seed: int = 0) -> Path:
    """Save a random tiny Llama and `tokenizer` as the checkpoint folder `out` (safetensors), published whole
    (`longctx.files`): a stopped run leaves no half-written model. Returns `out`."""
    import torch
    from transformers import LlamaForCausalLM

    from longctx.files import partial_dir, publish_dir

    out = Path(out)
    config = tiny_llama_config(tokenizer, max_position_embeddings=max_position_embeddings, rope_theta=rope_theta)
    torch.manual_seed(seed)
    partial = partial_dir(out)
    LlamaForCausalLM(config).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    publish_dir(partial, out)
    return out
