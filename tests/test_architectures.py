"""Any transformers causal LM with RoPE patches and loads; models without RoPE are refused."""

from __future__ import annotations

import json

import pytest
import torch

from longctx import rope_config, rope_methods
from longctx.checkpoint import write_patched_checkpoint
from longctx.errors import UsageError
from longctx.patch import PatchSpec

TINY = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 512}
ROPE_MODELS = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {
        "partial_rotary_factor": 0.5,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 1,
        "original_max_position_embeddings": 512,
    },
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    "olmo2": {},
    "granite": {},
    "gemma3_text": {"head_dim": 16, "sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]},
}


def save_tiny(model_type: str, path, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**TINY, **ROPE_MODELS.get(model_type, {}), **overrides})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def rotary_buffers(model) -> list[torch.Tensor]:
    return [buf for name, buf in model.named_buffers() if name.endswith("inv_freq") and "original" not in name]


@pytest.mark.parametrize("model_type", list(ROPE_MODELS))
def test_rope_architectures_patch_and_load(model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    src = save_tiny(model_type, tmp_path / "src")
    method = "ntk" if model_type == "phi3" else "yarn"  # Phi-3 configs take only default/longrope rope
    out = write_patched_checkpoint(src, tmp_path / "out", PatchSpec(method=method, factor=4))
    config = json.loads((out / "config.json").read_text())
    params = rope_config.rope_parameters(config)
    assert params["rope_type"] == ("default" if method == "ntk" else "yarn")
    assert config["max_position_embeddings"] == 2048
    model = AutoModelForCausalLM.from_pretrained(out)
    expected, _ = rope_methods.inv_freq_for(params, rope_config.rotary_dim(config), max_position_embeddings=2048)
    matches = [buf for buf in rotary_buffers(model) if buf.shape == expected.shape
               and torch.allclose(buf.double(), expected, rtol=1e-6, atol=0)]
    assert matches, f"no rotary buffer of {model_type} carries the patched frequencies"
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(16)[None]).logits).all()


def test_unsupported_method_for_an_architecture_is_refused(tmp_path):
    src = save_tiny("phi3", tmp_path / "src")
    with pytest.raises(UsageError, match="--method base or ntk"):
        write_patched_checkpoint(src, tmp_path / "out", PatchSpec(method="yarn", factor=4))


@pytest.mark.parametrize("model_type", ["gpt2", "bloom", "opt"])
def test_models_without_rope_are_refused(model_type, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **({"n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 64}
                                                 if model_type == "gpt2" else {"hidden_size": 32, "vocab_size": 64}))
    if model_type == "opt":
        config = AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                      vocab_size=64, word_embed_proj_dim=32)
    if model_type == "bloom":
        config = AutoConfig.for_model("bloom", hidden_size=32, n_layer=1, n_head=2, vocab_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "src")
    with pytest.raises(UsageError, match="no rotary position embeddings"):
        write_patched_checkpoint(tmp_path / "src", tmp_path / "out", PatchSpec(method="base", base=1e6))
    assert not (tmp_path / "out").exists()
