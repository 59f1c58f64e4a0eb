"""The per-token NLL of one sequence: `token_nll` on one process, or split across every process (context
parallel, `nll_function`) for the perplexity pass.

For a window longer than one device holds (activations and KV grow with it; the weights do not):

    torchrun --nproc_per_node 8 -m longctx eval ppl --model M --lengths 128k,256k --context-parallel
    accelerate launch --num_processes 8 -m longctx eval suite S.yaml --model M    (tasks.ppl.context_parallel: true)
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 -m longctx eval ppl ... --context-parallel

Every process holds the whole model and scores every window together with the others (no window is shared
out: that is data parallel, `longctx.evals.run.parallel`, for windows that fit one device). One process alone
scores as usual.

How, with torch's engine (`torch.distributed.tensor.experimental.context_parallel`, SDPA, a 1-D DeviceMesh of
every process): the window's input ids, position ids and targets are split along the sequence, each process
holding a chunk from the start and one from the end (torch's head-tail load balancing: causal attention then
costs every process the same); the window is padded at its end to a multiple of 2 × processes, which changes
nothing before the padding under causal attention, and the padding is never scored. SDPA becomes ring
attention (keys and values travel between processes; partial softmaxes are merged exactly), each process
scores its own positions with the chunked lm_head, and `context_parallel_unshard` puts the per-token NLL back
in order. Memory per process: the weights plus 1/N of the window's activations.

accelerate 1.15's `ParallelismConfig(cp_size=...)` drives the same torch function, but only with FSDP2 (its
`Accelerator` refuses cp_size > 1 without an FSDP plugin, short of a stopgap variable marked for removal, and
accelerate enables FSDP on GPUs only), for training; evaluation needs neither, so longctx calls torch directly.

Refused (one line, before any work): a sliding-window or chunked-attention model (context parallel expresses
plain causal attention only) and length-dependent rope (dynamic, longrope: each process would pick its
frequencies from the positions it holds, not from the window's length). Another attention implementation
(flash_attention_2) is switched to SDPA for the pass. On GPUs SDPA may pick flash, memory-efficient or cuDNN
attention but never its math fallback, which torch's ring attention does not cover.

CPU: torch 2.13's context-parallel dispatcher handles the CUDA SDPA kernels only; on CPU SDPA runs
`aten._scaled_dot_product_flash_attention_for_cpu`, which it refuses ("does not have a sharding strategy
registered"). On CPU, for the duration of the pass, longctx registers that kernel with torch's own ring
attention (`_templated_ring_attention`, which the CUDA kernels go through): private torch API, so a torch
without it is refused in one line. The CPU test therefore runs torch's sharding, load balancing, ring and
softmax merge and longctx's wiring; only the local attention kernel differs from a GPU's.
"""

from __future__ import annotations

import contextlib
import sys

from longctx import rope_config
from longctx.errors import UsageError


def refusal(model, rope=None) -> str | None:
    """Why this model's windows cannot be split across processes, or None (`rope`: its
    `rope_config.ModelRope`, when the caller parsed it already)."""
    config = model.config
    rope = rope or rope_config.model_rope(config)
    if rope.length_dependent:
        return (f"{rope.rope_type} rope picks its frequencies from the sequence length, and under context parallel "
                "each process sees only its slice of positions")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text, "layer_types", None) or ())
    if layer_types - {"full_attention"} or (not layer_types and getattr(text, "sliding_window", None)
                                            and getattr(text, "use_sliding_window", True)):
        return "its attention is not plain causal (sliding window or chunks), which context parallel cannot express"
    return None


def token_nll(model, input_ids, *, chunk_tokens: int = 1024):
    """Per-token NLL (nats, fp32) of tokens 1..T-1 of input_ids [1, T]: FloatTensor [T-1].

    The decoder runs once without a KV cache; lm_head and the fp32 cross-entropy run on `chunk_tokens`
    positions at a time, so the [T × vocab] logits never exist at once.
    """
    import torch

    from longctx.loss import chunked_token_nll, logit_transform
    from longctx.modeling import reset_rope_state

    with torch.inference_mode():
        reset_rope_state(model)  # dynamic NTK: score this window as a freshly loaded model would
        input_ids = input_ids.to(model.device)
        hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # [1, T, H]
        head = model.get_output_embeddings()
        # position T-1 predicts nothing: hidden states 0..T-2 score tokens 1..T-1
        return chunked_token_nll(hidden[0, :-1], head.weight, input_ids[0, 1:], bias=getattr(head, "bias", None),
                                 chunk=chunk_tokens, transform=logit_transform(model.config))


def nll_function(model, world, rope=None):
    """A `token_nll` replacement that scores each window across every process of `world`; plain `token_nll`
    for one process."""
    from functools import partial

    if world.size == 1:
        print("ppl: context parallel with one process: plain forwards", file=sys.stderr)
        return token_nll
    why = refusal(model, rope)
    if why:
        raise UsageError(f"--context-parallel: {why}; evaluate it with data parallel (drop --context-parallel)")
    mesh = world.mesh()
    if mesh.device_type == "cpu":
        _cpu_ring_parts()  # refuses a torch without them now, not at the first window
    return partial(token_nll_split, mesh=mesh)


def token_nll_split(model, input_ids, *, mesh, chunk_tokens: int = 1024):
    """`token_nll` of input_ids [1, T] with the sequence split across `mesh`: FloatTensor [T-1],
    the same on every process."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import context_parallel_unshard
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from longctx.loss import IGNORE_INDEX, chunked_token_nll, logit_transform
    from longctx.modeling import reset_rope_state

    length = input_ids.shape[1]
    pad = -length % (2 * mesh.size())  # head-tail balancing cuts the sequence in 2 × processes equal chunks
    with torch.inference_mode(), _sdpa(model):
        reset_rope_state(model)
        ids = F.pad(input_ids.to(model.device), (0, pad), value=0)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        targets = F.pad(ids[:, 1:length], (0, pad + 1), value=IGNORE_INDEX)  # position t predicts token t + 1
        buffers = [ids, positions, targets]
        kernels = ([SDPBackend.FLASH_ATTENTION] if mesh.device_type == "cpu" else
                   [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])
        with _cpu_kernel(mesh), sdpa_kernel(kernels), context_parallel(
                mesh, buffers=buffers, buffer_seq_dims=[1, 1, 1], no_restore_buffers=set(buffers)):
            # An all-ones mask: transformers then passes no mask and is_causal=True to SDPA (a mask is refused by
            # ring attention); without one it would read this process's non-contiguous positions as packed
            # sequences and build a block mask.
            hidden = model.get_decoder()(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids),
                                         use_cache=False).last_hidden_state
        head = model.get_output_embeddings()
        nll = chunked_token_nll(hidden[0], head.weight, targets[0], bias=getattr(head, "bias", None),
                                chunk=chunk_tokens, transform=logit_transform(model.config))
        (full,) = context_parallel_unshard(mesh, [nll[None].contiguous()], [1])
    return full[0, : length - 1]


@contextlib.contextmanager
def _sdpa(model):
    """The model on SDPA attention for the pass (torch's ring attention replaces SDPA), then as it was."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "sdpa":
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _cpu_ring_parts():
    """torch's private pieces that let its ring attention run the CPU SDPA kernel (see the module docstring)."""
    try:
        from torch.distributed.tensor._op_schema import RuntimeSchemaInfo
        from torch.distributed.tensor._ops.utils import expand_to_full_mesh_op_strategy
        from torch.distributed.tensor.experimental._context_parallel import _attention
        from torch.distributed.tensor.experimental._context_parallel._sharding_rules import (
            _op_strategy_context,
        )

        return _attention, _op_strategy_context, RuntimeSchemaInfo, expand_to_full_mesh_op_strategy
    except ImportError as exc:
        raise UsageError(f"--context-parallel on CPU needs torch internals this torch lacks ({exc}); run it on GPUs, "
                         "where torch's context parallel handles SDPA itself") from None


@contextlib.contextmanager
def _cpu_kernel(mesh):
    """On CPU: the CPU flash kernel sharded on the sequence (q, k, v, output, logsumexp) and run as torch's ring
    attention, only inside this block. Elsewhere: nothing."""
    if mesh.device_type != "cpu":
        yield
        return
    import torch
    from torch.distributed.tensor import DTensor, Shard

    attention, strategy_context, schema_info, expand = _cpu_ring_parts()
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def strategy(op_schema):
        return expand(op_schema.get_mesh_from_args(), op_schema, [[Shard(2)] * 5], input_index=2)

    def ring(mesh, query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
        if attn_mask is not None:
            raise NotImplementedError("context parallel takes no attention mask")
        return attention._templated_ring_attention(mesh.get_group(), 2, kernel, query=query, key=key, value=value,
                                                   is_causal=is_causal, dropout_p=dropout_p, scale=scale)

    def handler(op_call, args, kwargs):  # what torch's `_sdpa_handler` does for the CUDA kernels
        dispatcher = DTensor._op_dispatcher
        info = dispatcher.unwrap_to_op_info(op_call, args, kwargs)
        dispatcher.sharding_propagator.propagate(info)
        return dispatcher.wrap(ring(info.compute_mesh, *info.local_args, **info.local_kwargs),
                               info.output_sharding.output_spec)

    attention.custom_ops[kernel.default] = handler
    try:
        with strategy_context(kernel.default, strategy, schema_info(3)):
            yield
    finally:
        attention.custom_ops.pop(kernel.default, None)
