"""Model FLOPs utilization (MFU): achieved model FLOP/s over the hardware's peak.

FLOPs per trained token, PaLM (Chowdhery et al. 2022) appendix B:

    full fine-tune:  6·N + 12·L·H·Q·T
    LoRA:            4·N + 12·L·H·Q·T

N = non-embedding parameters (the token embedding and the output projection are not counted, as in PaLM),
L = layers, H = attention heads, Q = head dim, T = sequence length. 6N is 2N forward + 4N backward (gradients
w.r.t. activations and w.r.t. weights); with LoRA the frozen weights get no weight-gradient matmul, so 4N
(adapter matmuls are negligible). 12·L·H·Q·T is the attention score and value matmuls (forward + backward)
counted over the full T×T square, PaLM's convention, even though causal masking and packing skip part of it.
Activation recomputation (gradient checkpointing) is NOT counted: MFU counts model FLOPs, not hardware FLOPs.

MFU = flops_per_token × tokens/s ÷ (peak FLOP/s per device × devices). Peak: dense bf16 tensor-core FLOP/s
from the vendor data sheets below, or --peak-flops; None (reported as null) on CPU or an unknown GPU.
"""

from __future__ import annotations

# Dense (no sparsity) bf16 peak FLOP/s, matched as substrings of torch.cuda.get_device_name(), first match wins.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM; NVL and HBM3 variants report "H100" too
    ("A100", 312e12),
)


def non_embedding_params(model) -> int:
    """Parameters outside the input embedding and output projection (LoRA adapter weights excluded)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    skip = {id(p) for module in (hf.get_input_embeddings(), hf.get_output_embeddings()) if module is not None
            for p in module.parameters()}
    return sum(p.numel() for name, p in hf.named_parameters()
               if id(p) not in skip and "lora_" not in name and "modules_to_save" not in name)


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int, *, full: bool) -> float:
    """PaLM's training FLOPs per token: (6 if full else 4)·N + 12·L·H·Q·T."""
    return (6 if full else 4) * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def model_flops_per_token(model, seq_len: int, *, full: bool) -> float:
    from longctx import rope_config

    cfg = rope_config.text_config(model.config.to_dict())
    return flops_per_token(non_embedding_params(model), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]),
                           rope_config.head_dim(cfg), seq_len, full=full)


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of one device from its name; None for CPU or a GPU not in the table."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(flops_token: float, tokens_per_s: float, peak_per_device: float | None, n_devices: int = 1) -> float | None:
    if not peak_per_device:
        return None
    return flops_token * tokens_per_s / (peak_per_device * n_devices)
