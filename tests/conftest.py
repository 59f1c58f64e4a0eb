"""Shared fixtures: a tiny random Llama for fast unit tests, the real SmolLM2-135M for claims about behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LONGCTX_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _train_tiny_tokenizer(out_dir: Path, vocab_size: int = 512):
    """A byte-level BPE trained on the embedded pydoc topics: real text, tiny vocabulary, no download."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(topics.values()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_llama(out_dir: Path, *, rope_theta: float = 10000.0, max_position_embeddings: int = 256,
                    seed: int = 0) -> Path:
    """A 2-layer, hidden-64 random Llama with a 512-token BPE tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(out_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Read-only tiny checkpoint shared by the session: copy it before changing anything in it."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir):
    """(model, tokenizer) of the tiny checkpoint, loaded once for the evaluation tests (read-only: hooks a
    test adds must be removed by it)."""
    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(tiny_llama_dir, device="cpu")
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct (8K context, base 1e5), dequantized once into LONGCTX_CACHE."""
    from longctx.sources import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def retrieval_tokenizers(tiny_llama_dir, tmp_path_factory) -> dict:
    """One small tokenizer of each family retrieval prompts must handle (see tests/tokenizer_fixtures.py)."""
    from tokenizer_fixtures import sentencepiece_llama, tiktoken_llama3
    from transformers import AutoTokenizer

    return {
        "byte-level": AutoTokenizer.from_pretrained(tiny_llama_dir),
        "sentencepiece-legacy": sentencepiece_llama(),
        "sentencepiece-reloaded": sentencepiece_llama(tmp_path_factory.mktemp("spm"), saved=True),
        "llama3": tiktoken_llama3(),
    }
