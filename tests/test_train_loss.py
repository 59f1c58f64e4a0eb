"""Chunked cross-entropy equals the full-logits loss (value and gradients); MFU arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.loss import IGNORE_INDEX, chunked_cross_entropy
from longctx.train import flops
from longctx.train.loss import CausalLMLoss


def test_chunked_cross_entropy_matches_full_logits_value_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 13))
    labels[0, 3] = labels[1, 12] = IGNORE_INDEX
    reference = F.cross_entropy(
        (hidden @ weight.T).reshape(-1, 50), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    ref_grads = torch.autograd.grad(reference, (hidden, weight))
    summed = chunked_cross_entropy(hidden, weight, labels, chunk=5)  # 24 labelled tokens: chunks of 5, 5, 5, 5, 4
    grads = torch.autograd.grad(summed, (hidden, weight))
    torch.testing.assert_close(summed, reference)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_chunked_cross_entropy_keeps_at_most_one_chunk_of_logits_for_backward():
    """The memory bound: autograd keeps [chunk × vocab] tensors of one chunk only (the last, which backward needs
    first); every other chunk is recomputed. Without the checkpoints it would keep all ten chunks' logits."""
    torch.manual_seed(0)
    vocab, chunk = 1000, 20
    hidden = torch.randn(200, 16, requires_grad=True)
    weight = torch.randn(vocab, 16, requires_grad=True)
    labels = torch.randint(0, vocab, (200,))
    saved = []

    def keep(tensor):
        logits = (
            tensor.shape[-1:] == (vocab,) and tensor.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
        )
        saved.append(tensor.numel() if logits else 0)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = chunked_cross_entropy(hidden, weight, labels, chunk=chunk)
    assert 0 < sum(saved) <= 2 * chunk * vocab  # the last chunk's logits (and their log-softmax), nothing more
    loss.backward()
    reference = F.cross_entropy(hidden.detach() @ weight.detach().T, labels, reduction="sum")
    torch.testing.assert_close(loss.detach(), reference)


def test_causal_lm_loss_equals_transformers_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from longctx.train.data import row_tensors

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    ids = torch.randint(3, 500, (40,), generator=torch.Generator().manual_seed(1))
    row = row_tensors(ids, torch.zeros(40, dtype=torch.long))  # one document
    summed = CausalLMLoss(model, chunk=7)(row["input_ids"][None], row["position_ids"][None], row["labels"][None])
    mean = model(input_ids=ids[None], labels=ids[None]).loss  # transformers shifts the labels itself
    torch.testing.assert_close(summed / 39, mean, atol=1e-5, rtol=1e-5)


def test_batch_flattened_with_restarting_position_ids_gives_the_same_loss(tiny_llama_dir):
    """The flattening flash_attention_2 relies on ([B, T] -> [1, B·T], boundaries from position ids), checked
    with SDPA, which derives the same per-document mask; the flash kernel itself: tests/test_gpu.py."""
    from transformers import AutoModelForCausalLM

    from longctx.corpus import load_documents
    from longctx.modeling import load_tokenizer
    from longctx.train.data import PackedRows, collate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    rows = PackedRows(load_documents("pydoc")[:6], load_tokenizer(tiny_llama_dir), seq_len=96).rows()
    batch = collate([next(rows) for _ in range(3)])
    with torch.no_grad():
        batched = CausalLMLoss(model, flatten_batch=False)(**batch)
        flattened = CausalLMLoss(model, flatten_batch=True)(**batch)  # [1, 3·96]: boundaries from position_ids
    torch.testing.assert_close(flattened, batched, atol=1e-4, rtol=1e-5)


def test_flops_per_token_follows_palm():
    # Llama-2-7B: N = 6.48e9 non-embedding parameters, 32 layers × 32 heads × 128, at 4K tokens.
    attention = 12 * 32 * 32 * 128 * 4096
    assert flops.flops_per_token(6_476_005_376, 32, 32, 128, 4096, full=True) == 6 * 6_476_005_376 + attention
    assert flops.flops_per_token(6_476_005_376, 32, 32, 128, 4096, full=False) == 4 * 6_476_005_376 + attention


def test_non_embedding_params_excludes_embeddings_and_adapters(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from longctx.modeling import peft_deprecations_hidden

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg = model.config
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q, k+v (2 kv heads × 16), o, mlp, 2 norms
    expected = cfg.num_hidden_layers * per_layer + 64  # + final norm
    assert flops.non_embedding_params(model) == expected
    with peft_deprecations_hidden():  # peft's own read of a deprecated attribute, as in longctx.train.model
        lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    assert flops.non_embedding_params(lora) == expected


def test_peak_flops_table_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops(None) is None and flops.peak_flops("Tesla T4") is None
    assert flops.mfu(1e9, 1000, None) is None  # CPU: reported as null
    assert flops.mfu(1e9, 1000, 1e12, n_devices=2) == pytest.approx(0.5)


@pytest.mark.parametrize("model_type,extra", [
    ("gemma2", {"final_logit_softcapping": 5.0, "head_dim": 16}),
    ("granite", {"logits_scaling": 4.0}),
    ("cohere", {"logit_scale": 0.5}),
])
def test_losses_from_hidden_states_apply_the_architectures_logit_postprocessing(model_type, extra):
    """Gemma soft-capping, Granite's logits_scaling and Cohere's logit_scale happen inside the model's forward;
    the chunked training loss and the evaluation NLL, computed from hidden states, must apply them too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from longctx.evals.tasks.perplexity import token_nll
    from longctx.train.data import row_tensors

    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)  # large logits, so capping and scaling matter
    ids = torch.randint(3, 128, (24,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = torch.nn.functional.cross_entropy(
            model(ids[None]).logits[0, :-1].float(), ids[1:], reduction="none"
        )
        row = row_tensors(ids, torch.zeros(24, dtype=torch.long))
        summed = CausalLMLoss(model, chunk=5)(row["input_ids"][None], row["position_ids"][None], row["labels"][None])
    torch.testing.assert_close(token_nll(model, ids[None], chunk_tokens=5), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(summed, reference.sum(), atol=1e-3, rtol=1e-4)


def test_pose_rows_of_one_document_take_the_fast_mask_with_the_same_loss(tiny_llama_dir):
    """One document per row (long books): an all-ones 2-D mask instead of the block mask, same loss; position
    jumps are not read as document starts (that would give a different, wrong loss)."""
    import random

    from transformers import AutoModelForCausalLM

    from longctx.train.pose import block_causal_mask, skip_positions

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    ids = torch.randint(3, 500, (2, 96), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([skip_positions(96, 1024, random.Random(i), 2) for i in range(2)])
    segments = torch.zeros(2, 96, dtype=torch.long)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    loss = CausalLMLoss(model)
    with torch.no_grad():
        fast = loss(ids, positions, labels, segments)
        mask = block_causal_mask(segments, attn_implementation="sdpa", dtype=torch.float32)
        hidden = model.model(input_ids=ids, position_ids=positions, attention_mask=mask).last_hidden_state
        reference = chunked_cross_entropy(hidden, model.lm_head.weight, labels)
        packed_reading = loss(ids, positions, labels)  # no segments: jumps would split the row into "documents"
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(packed_reading, reference, rtol=1e-4)
