"""A patched config.json must give transformers the same rotary frequencies as longctx's own math, in both
the transformers-5 schema (`rope_parameters`) and the transformers-4 one (`rope_theta` + `rope_scaling`)."""

from __future__ import annotations

import json

import pytest
import torch

from longctx import rope, rope_config, rope_methods
from longctx.patch import PatchSpec, patch_config

LLAMA = {"model_type": "llama", "hidden_size": 512, "num_attention_heads": 4, "head_dim": 128,
         "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 4096,
         "rope_theta": 10000.0}
SPECS = {
    "base": PatchSpec(method="base", base=1e6),
    "base+target": PatchSpec(method="base", base=5e5, target_length=32768),
    "linear": PatchSpec(method="linear", factor=4),
    "linear+base": PatchSpec(method="linear", factor=2, base=5e5),
    "ntk": PatchSpec(method="ntk", factor=4),
    "dynamic": PatchSpec(method="dynamic", factor=8),
    "yarn": PatchSpec(method="yarn", factor=8),
    "yarn+options": PatchSpec(method="yarn", target_length=16384, beta_fast=16, beta_slow=2, attention_factor=1.2),
    "yarn+base": PatchSpec(method="yarn", factor=4, base=1e6),
    "llama3": PatchSpec(method="llama3", factor=8, base=5e5),
    "llama3+options": PatchSpec(method="llama3", factor=4, low_freq_factor=2, high_freq_factor=8),
}


def transformers_rotary(config_dict: dict, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling as transformers itself derives them from a config.json dict."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig.from_dict(json.loads(json.dumps(config_dict)))
    if seq_len is not None:
        return ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)
    module = LlamaRotaryEmbedding(config)
    return module.inv_freq, module.attention_scaling


def v4_only(config: dict) -> dict:
    """The file as transformers 4 wrote it: no rope_parameters, only rope_theta + rope_scaling."""
    return {k: v for k, v in config.items() if k != "rope_parameters"}


def v5_only(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}


@pytest.mark.parametrize("layout", [v5_only, v4_only, lambda c: c], ids=["v5", "v4", "both"])
@pytest.mark.parametrize("name", list(SPECS))
def test_patched_config_frequencies_match_transformers(name, layout):
    patched = patch_config(LLAMA, SPECS[name])
    params = rope_config.rope_parameters(patched)
    ours, our_scaling = rope_methods.inv_freq_for(
        params, 128, max_position_embeddings=patched["max_position_embeddings"]
    )
    theirs, their_scaling = transformers_rotary(layout(patched))
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)
    assert their_scaling == pytest.approx(our_scaling, rel=1e-6)


@pytest.mark.parametrize("seq_len", [2048, 4096, 8192, 20000])
def test_dynamic_ntk_matches_transformers_at_every_length(seq_len):
    patched = patch_config(LLAMA, SPECS["dynamic"])
    assert patched["max_position_embeddings"] == 4096  # raising it would switch dynamic NTK off below it
    params = rope_config.rope_parameters(patched)
    ours, _ = rope_methods.inv_freq_for(params, 128, max_position_embeddings=4096, seq_len=seq_len)
    theirs, _ = transformers_rotary(patched, seq_len=seq_len)
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)
    if seq_len <= 4096:
        torch.testing.assert_close(ours, rope.default_inv_freq(1e4, 128))


def test_partial_rotary_factor_is_kept():
    config = {**LLAMA, "model_type": "phi3", "partial_rotary_factor": 0.5}
    patched = patch_config(config, PatchSpec(method="ntk", factor=4))
    assert rope_config.rotary_dim(patched) == 64
    assert patched["rope_parameters"]["partial_rotary_factor"] == 0.5
    assert patched["rope_theta"] == pytest.approx(rope.ntk_base(1e4, 4, 64))  # the rotated dims, not head_dim


def test_nested_layer_types_patch_only_full_attention():
    gemma = {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 2, "head_dim": 32,
             "max_position_embeddings": 32768, "layer_types": ["sliding_attention", "full_attention"],
             "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    patched = patch_config(gemma, PatchSpec(method="linear", factor=4))
    assert patched["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert patched["rope_parameters"]["full_attention"]["factor"] == 4.0
    assert patched["rope_scaling"]["rope_type"] == "linear" and patched["rope_theta"] == 1e6
    assert patched["max_position_embeddings"] == 131072


def test_patch_config_does_not_modify_its_input():
    before = json.dumps(LLAMA, sort_keys=True)
    patch_config(LLAMA, SPECS["yarn"])
    assert json.dumps(LLAMA, sort_keys=True) == before


def test_yarn_lengths_agree_with_the_factor():
    """Some transformers versions recompute YaRN's factor from the two lengths (QwenLM/Qwen3 #1424)."""
    patched = patch_config(LLAMA, SPECS["yarn"])
    params = patched["rope_parameters"]
    assert patched["max_position_embeddings"] / params["original_max_position_embeddings"] == params["factor"]
