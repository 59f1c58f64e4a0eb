"""Next-token cross-entropy from the final hidden states, without ever holding [tokens × vocab] logits.

At 8K tokens and a 128K vocabulary the fp32 logits alone are 4 GiB, more than the activations of a 1B
model; long-context users report out-of-memory from exactly this (yarn #52). The loss here runs the output
projection on `chunk` tokens at a time under activation checkpointing, so forward keeps only the loss and
backward recomputes one chunk's logits at a time (except the last chunk's, which backward needs first): peak
extra memory is about chunk × vocab × 4 bytes (twice that while a chunk's gradient is formed). On GPU,
Liger's fused linear cross-entropy (a Triton kernel doing the same) is used when installed.

Some architectures post-process the output projection inside their forward (Gemma 2/3 soft-capping, Granite's
`logits_scaling`, Cohere's `logit_scale`); a loss computed from hidden states must do the same, so
`logit_transform(config)` is applied to every chunk, in training and in evaluation (`chunked_token_nll`).

Losses are returned as SUMS over the labelled tokens; the caller divides by the number of labelled tokens of
the whole optimizer step, so gradient accumulation and data parallelism give the same gradient as one big
batch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def logit_transform(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the architecture's own forward applies after lm_head, as a function of fp32 logits (None: nothing)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    divide = getattr(config, "logits_scaling", None)  # Granite
    multiply = getattr(config, "logit_scale", None)  # Cohere
    if not (softcap or divide or multiply):
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if divide:
            logits = logits / divide
        if multiply:
            logits = logits * multiply
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


def _chunk_logits(hidden, weight, bias, transform) -> torch.Tensor:
    # hidden: [C, D], weight: [V, D] -> [C, V] fp32
    logits = F.linear(hidden, weight, bias).float()
    return transform(logits) if transform is not None else logits


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                  transform=None) -> torch.Tensor:
    # labels: [C] -> summed fp32 loss
    return F.cross_entropy(_chunk_logits(hidden, weight, bias, transform), labels, ignore_index=IGNORE_INDEX,
                           reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          bias: torch.Tensor | None = None, chunk: int = 1024, transform=None) -> torch.Tensor:
    """Sum of CE(hidden @ weightᵀ + bias, labels) over labels != -100; labels are already aligned (not shifted).

    hidden: [B, T, D] (or [N, D]), weight: [V, D], labels: [B, T] (or [N]).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).to(hidden.device)
    keep = labels != IGNORE_INDEX
    if not bool(keep.all()):  # unlabelled positions cost no projection at all
        hidden, labels = hidden[keep], labels[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    last = (hidden.shape[0] - 1) // chunk * chunk
    for start in range(0, hidden.shape[0], chunk):
        h, y = hidden[start:start + chunk], labels[start:start + chunk]
        # The last chunk keeps its logits for backward instead of recomputing them: backward starts with it, so
        # they live no longer than a recomputed chunk would (same chunk × vocab bound), and a row of at most
        # `chunk` tokens pays no recompute at all (-7% FLOPs per SmolLM2 step at 512 tokens).
        if start != last and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_ce_sum, h, weight, bias, y, transform, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h, weight, bias, y, transform)
    return total


def chunked_token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                      bias: torch.Tensor | None = None, chunk: int = 1024, transform=None) -> torch.Tensor:
    """Per-token NLL (fp32, no reduction) for evaluation: hidden [N, D], targets [N] -> [N]."""
    losses = [F.cross_entropy(_chunk_logits(hidden[start:start + chunk], weight, bias, transform),
                              targets[start:start + chunk], reduction="none")
              for start in range(0, targets.numel(), chunk)]
    return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)


def liger_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                        bias: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """Liger-Kernel's fused linear cross-entropy (GPU, Triton), summed like `chunked_cross_entropy`. It applies
    Gemma-style soft-capping itself (`softcap`), so capped models keep the fused path."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=softcap)
    return loss_fn(weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), bias)


def liger_supports(config) -> bool:
    """Liger's kernel knows soft-capping but not Granite's or Cohere's logit scaling: those keep the chunked loss."""
    return not (getattr(config, "logits_scaling", None) or getattr(config, "logit_scale", None))
