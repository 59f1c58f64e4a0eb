"""What only a CUDA GPU can show: the flash-attention varlen path, bf16 training, Liger's fused loss, the
memory of the chunked-loss perplexity at 32K, and an FSDP launch of the recipe. `make test-gpu` runs them; on
CPU each skips with its reason.

These need no download: random-weight Llama shapes, built on the device.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu on a GPU machine)"
)


def _flash_attn_ready() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def random_llama(*, attn: str, dtype=torch.bfloat16, vocab: int = 1024, hidden: int = 256, layers: int = 2,
                 softcap: float | None = None, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                         max_position_embeddings=65536, tie_word_embeddings=False, attn_implementation=attn)
    if softcap:
        config.final_logit_softcapping = softcap  # Gemma-style capping, read by longctx.loss.logit_transform
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device="cuda", dtype=dtype).eval()


def packed_batch(lengths=(300, 500, 224), vocab: int = 1024, seed: int = 0):
    """One row holding three documents: position ids restart at each, segment ids number them."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    ids = torch.randint(0, vocab, (1, total), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    labels = ids.clone()
    starts = torch.tensor([0, *lengths]).cumsum(0)[:-1]
    labels[0, starts] = -100  # no document predicts across its start
    labels = torch.roll(labels, -1, dims=1)
    labels[0, -1] = -100
    return {
        k: v.cuda() for k, v in dict(input_ids=ids, position_ids=positions, labels=labels, segment_ids=segments).items()
    }


@needs_cuda
@pytest.mark.skipif(
    not importlib.util.find_spec("flash_attn"), reason="flash-attn is not installed (pip install -e '.[gpu]')"
)
def test_flash_attention_varlen_packing_equals_sdpa_with_a_block_mask():
    """flash_attention_2 finds document boundaries from restarting position ids (varlen kernel); SDPA gets the
    block-diagonal causal mask explicitly. Same weights, same packed row: the same loss within bf16 tolerance."""
    from longctx.train.loss import CausalLMLoss

    assert _flash_attn_ready(), "flash_attn imports but transformers does not accept it"
    batch = packed_batch()
    flash = random_llama(attn="flash_attention_2")
    sdpa = random_llama(attn="sdpa")
    sdpa.load_state_dict(flash.state_dict())
    with torch.no_grad():
        varlen = CausalLMLoss(flash)(batch["input_ids"], batch["position_ids"], batch["labels"])
        masked = CausalLMLoss(sdpa)(**batch)
    assert torch.isfinite(varlen)
    torch.testing.assert_close(varlen, masked, rtol=2e-2, atol=0)


@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 128], ids=["head64-smollm2", "head128-llama"])
def test_sdpa_flash_kernel_takes_the_unmasked_causal_path_in_bf16(head_dim):
    """Every long eval and every one-document training row runs SDPA with no mask (is_causal): the flash kernel
    must accept the model's shapes (GQA, head dim 64 like SmolLM2 and 128 like Llama) in bf16. Only flash is
    allowed here, so a silent fallback to a slower kernel raises; the logits agree with the math kernel in fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bf16 = random_llama(attn="sdpa", hidden=4 * head_dim)
    fp32 = random_llama(attn="sdpa", hidden=4 * head_dim, dtype=torch.float32)
    ids = torch.randint(0, 1024, (1, 4096), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fast = bf16(input_ids=ids).logits.float()
        with sdpa_kernel([SDPBackend.MATH]):
            reference = fp32(input_ids=ids).logits
    assert torch.isfinite(fast).all()
    relative = float((fast - reference).norm() / reference.norm())
    assert relative < 2e-2, relative


@needs_cuda
def test_packed_row_with_the_block_mask_scores_each_document_as_if_alone():
    """Packing with PoSE-style segment ids on CUDA (SDPA with longctx's block-causal mask, bf16): the summed loss
    of the packed row equals the sum of each document's loss computed on its own — no token sees another
    document — and the backward is finite."""
    from longctx.train.loss import CausalLMLoss

    model = random_llama(attn="sdpa").train()
    batch = packed_batch()
    loss = CausalLMLoss(model)
    packed = loss(**batch)
    packed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    alone = 0.0
    with torch.no_grad():
        for segment in batch["segment_ids"].unique():
            keep = batch["segment_ids"][0] == segment
            part = {k: v[:, keep] for k, v in batch.items() if k != "segment_ids"}  # its last label is -100 already
            alone += float(loss(**part))
    torch.testing.assert_close(float(packed.detach()), alone, rtol=2e-2, atol=0)


@needs_cuda
def test_bf16_training_step_is_finite_and_matches_fp32():
    from longctx.train.loss import CausalLMLoss

    batch = packed_batch()
    fp32 = random_llama(attn="sdpa", dtype=torch.float32).train()
    bf16 = random_llama(attn="sdpa", dtype=torch.bfloat16).train()
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()})
    losses = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        loss = CausalLMLoss(model)(**batch)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        losses[name] = loss.detach().float()
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=0)


@needs_cuda
@pytest.mark.skipif(
    not importlib.util.find_spec("liger_kernel"), reason="liger-kernel is not installed (pip install -e '.[liger]')"
)
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "gemma-softcap"])
def test_liger_fused_cross_entropy_gives_the_chunked_loss(softcap):
    """Liger's fused linear cross-entropy (with Gemma-style soft-capping where the model has it) against the
    chunked loss of the same weights."""
    from longctx.train.loss import CausalLMLoss

    model = random_llama(attn="sdpa", dtype=torch.float32, softcap=softcap)
    batch = packed_batch()
    with torch.no_grad():
        fused = CausalLMLoss(model, use_liger=True)(**batch)
        chunked = CausalLMLoss(model, use_liger=False)(**batch)
    torch.testing.assert_close(fused, chunked, rtol=1e-3, atol=0)


@needs_cuda
def test_chunked_loss_perplexity_at_32k_stays_within_its_memory_bound():
    """`perplexity.token_nll` at 32K with a 128K vocabulary: the logits never exist at once, so the memory above
    the loaded model stays far below what the naive `model(ids, labels=ids)` loss needs for logits alone
    (as bench/bench_ppl.py `naive_extra_bytes` counts: bf16 logits, their fp32 copy, fp32 log-softmax) and within
    the chunk bound plus a few activations."""
    from longctx.evals.tasks.perplexity import token_nll

    length, vocab, chunk = 32768, 128256, 1024
    model = random_llama(attn="sdpa", vocab=vocab, hidden=1024, layers=2)
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    nll = token_nll(model, ids.cuda())
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - start
    assert torch.isfinite(nll).all() and nll.numel() == length - 1
    naive = length * vocab * (2 + 4 + 4)
    activations = 16 * length * 1024 * 2 * 2  # a generous handful of [T, hidden] bf16/fp32 tensors at once
    assert peak_extra < chunk * vocab * 4 * 4 + activations, f"{peak_extra / 2**30:.2f} GiB above the model"
    assert peak_extra < naive / 4


@needs_cuda
def test_fsdp_launch_trains_like_one_plain_process_and_exports_what_loads(tmp_path):
    """longctx/train/accelerate/fsdp.yaml on the GPUs present (FSDP2 full shard, one process per GPU; one GPU is a valid
    world of 1) gives the loss curve of a plain run on the same global batch, and its exported adapter (gathered
    from the shards) scores like the plain run's. CPU cannot run this: accelerate enables FSDP only for GPUs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx.byte_tokenizer import byte_tokenizer
    from longctx.modeling import load_model

    root = Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "model"
    config = LlamaConfig(vocab_size=260, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e4)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    gpus = torch.cuda.device_count()
    common = ["--model", model_dir, "--base", "1e5", "--data", "pydoc", "--seq-len", 128, "--max-steps", 3,
              "--lr", "5e-3", "--grad-accum", 1, "--report-to", "none"]
    runs = {
        "plain": [sys.executable, root / "recipes" / "finetune.py", *common, "--batch-size", gpus],
        "fsdp": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            root / "longctx" / "train" / "accelerate" / "fsdp.yaml",
            "--num_processes",
            gpus,
            "--mixed_precision",
            "no",
            root / "recipes" / "finetune.py",
            *common,
            "--batch-size",
            1,
        ],
    }
    for name, argv in runs.items():
        result = subprocess.run([str(a) for a in argv] + ["--out", str(tmp_path / name)], capture_output=True,
                                text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
        assert result.returncode == 0, (name, result.stderr[-3000:])
    losses = {
        name: [json.loads(line)["loss"] for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        for name in runs
    }
    assert losses["fsdp"] == pytest.approx(losses["plain"], rel=1e-2), losses  # both train under bf16 autocast
    ids = torch.arange(3, 131).unsqueeze(0).cuda()
    logits = []
    for name in runs:
        model, _, _ = load_model(tmp_path / name, device="cuda", dtype="fp32")
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.allclose(*logits, atol=5e-2), (logits[0] - logits[1]).abs().max()
