"""Patching the real SmolLM2-135M (8K context, base 1e5): the patched checkpoints load in transformers and
behave as the theory says on real weights."""

from __future__ import annotations

import pytest
import torch

from longctx.checkpoint import write_patched_checkpoint
from longctx.patch import PatchSpec, patch_model

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def prompt_ids(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = " ".join(["The grass is green. The sky is blue."] * 40) + " " + PROMPT
    return tokenizer, tokenizer(text, return_tensors="pt").input_ids  # ~400 tokens


def logits_of(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits[0, -8:], model


@pytest.fixture(scope="module")
def original(smollm2_dir, prompt_ids):
    return logits_of(smollm2_dir, prompt_ids[1])


@pytest.mark.parametrize("spec", [PatchSpec(method="linear", factor=1), PatchSpec(method="dynamic", factor=8)],
                         ids=["linear-1", "dynamic-below-trained-length"])
def test_identity_patches_keep_logits(smollm2_dir, tmp_path, prompt_ids, original, spec):
    out = write_patched_checkpoint(smollm2_dir, tmp_path / "p", spec)
    logits, _ = logits_of(out, prompt_ids[1])
    torch.testing.assert_close(logits, original[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [PatchSpec(method="base", base=1e6), PatchSpec(method="yarn", factor=8),
                                  PatchSpec(method="ntk", factor=8), PatchSpec(method="llama3", factor=8)],
                         ids=["base-1e6", "yarn-8", "ntk-8", "llama3-8"])
def test_real_patches_load_change_logits_and_still_answer(smollm2_dir, tmp_path, prompt_ids, original, spec):
    tokenizer, ids = prompt_ids
    out = write_patched_checkpoint(smollm2_dir, tmp_path / "p", spec)
    logits, model = logits_of(out, ids)
    assert (logits - original[0]).abs().max() > 1e-3  # the patch really reaches the model
    short = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        continuation = model.generate(short, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(continuation[0, short.shape[1]:])


def test_patch_model_in_place_equals_loading_the_patched_checkpoint(smollm2_dir, tmp_path, prompt_ids):
    spec = PatchSpec(method="yarn", factor=4, base=2e5)
    from_disk, _ = logits_of(write_patched_checkpoint(smollm2_dir, tmp_path / "p", spec), prompt_ids[1])
    _, model = logits_of(smollm2_dir, prompt_ids[1])
    params = patch_model(model, spec)
    assert params["rope_type"] == "yarn" and model.config.max_position_embeddings == 32768
    with torch.no_grad():
        in_place = model(prompt_ids[1]).logits[0, -8:]
    torch.testing.assert_close(in_place, from_disk, rtol=1e-5, atol=1e-5)
