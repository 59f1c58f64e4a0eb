"""GGUF metadata and transformers configs, both ways: pure mapping plus reading a file's metadata.

llama.cpp takes rope settings only from the file (Ollama dropped its run-time rope parameters), so the patch
must be in the metadata llama.cpp reads (src/llama-model.cpp, llama-context.cpp; keys of src/llama-arch.cpp):
`{arch}.rope.freq_base`, `{arch}.rope.scaling.type` (none, linear, yarn, longrope), `.factor`,
`.original_context_length`, `.finetuned`, `.attn_factor`, and `{arch}.context_length` = the target length.
Llama 3 scaling travels as the `rope_freqs` tensor and LongRoPE as `rope_factors_long/short`, as llama.cpp's own
converter (convert_hf_to_gguf.py) writes them. Dynamic NTK has no GGUF form. Writing files is
`longctx.gguf_export`'s; reading a GGUF as a checkpoint is `longctx.sources`'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from longctx.errors import UsageError, require

# GGUF architectures whose rope llama.cpp scales through the generic hparams keys, -> transformers model_type.
ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "olmo": "olmo", "olmo2": "olmo2",
         "granite": "granite", "stablelm": "stablelm", "internlm2": "internlm2", "starcoder2": "starcoder2",
         "smollm3": "smollm3", "mistral3": "mistral", "exaone": "exaone"}
READS_YARN_BETAS = {"mistral3", "grok"}  # the others use llama.cpp's fixed 32 / 1
# transformers rope types with no GGUF form -> what to use instead.
NO_GGUF_FORM = {"dynamic": "dynamic NTK has no GGUF form (llama.cpp's rope is static): use --method yarn, or "
                           "--method ntk (its static base change)"}
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
DTYPES = ("f32", "f16", "bf16")
RECORD_KEY = "longctx.patch"  # JSON provenance; marks a file longctx may replace with --force


@dataclass
class GgufRope:
    """What a rope setting becomes in GGUF: key suffixes after `{arch}.` -> (value, gguf value type name), tensors."""

    kv: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)  # name -> float32 numpy [rotary dim / 2]


# ------------------------------------------------------------------------------------------------ pure mapping
def _scaling(kv: dict, kind: str, original: int, finetuned: bool, factor: float | None = None) -> None:
    kv["rope.scaling.type"] = (kind, "STRING")
    if factor is not None:
        kv["rope.scaling.factor"] = (float(factor), "FLOAT32")
    kv["rope.scaling.original_context_length"] = (int(original), "UINT32")
    kv["rope.scaling.finetuned"] = (bool(finetuned), "BOOL")


def _plain(params, dim, arch, original, finetuned) -> GgufRope:
    return GgufRope()


def _linear(params, dim, arch, original, finetuned) -> GgufRope:
    rope = GgufRope()
    _scaling(rope.kv, "linear", original, finetuned, params["factor"])
    return rope


def _yarn(params, dim, arch, original, finetuned) -> GgufRope:
    """llama.cpp applies YaRN's temperature 0.1·ln s + 1 itself; `attn_factor` multiplies it (a custom
    attention_factor becomes their ratio). Only some architectures read the beta keys."""
    betas = (float(params.get("beta_fast", 32.0)), float(params.get("beta_slow", 1.0)))
    require(
        betas == (32.0, 1.0) or arch in READS_YARN_BETAS,
        f"llama.cpp's {arch} architecture ignores yarn_beta_fast/slow (it always uses 32 and 1): drop "
        "--beta-fast/--beta-slow for a GGUF",
    )
    require(not params.get("mscale") and not params.get("mscale_all_dim"),
            "YaRN mscale/mscale_all_dim are read by llama.cpp only for DeepSeek: this setting has no GGUF form here")
    rope = GgufRope()
    factor = float(params["factor"])
    _scaling(rope.kv, "yarn", original, finetuned, factor)
    rope.kv["rope.scaling.yarn_beta_fast"] = (betas[0], "FLOAT32")  # as convert_hf_to_gguf.py writes them
    rope.kv["rope.scaling.yarn_beta_slow"] = (betas[1], "FLOAT32")
    if params.get("attention_factor") is not None:
        rope.kv["rope.scaling.attn_factor"] = (
            float(params["attention_factor"]) / (0.1 * math.log(factor) + 1),
            "FLOAT32",
        )
    return rope


def llama3_rope_freqs(params: dict, dim: int):
    """The `rope_freqs` tensor [dim/2] of llama.cpp's converter: θ'ᵢ = θᵢ / rope_freqs[i]."""
    import numpy as np

    from longctx import rope_methods

    inv_freq, _ = rope_methods.inv_freq_for({**params, "rope_type": "default"}, dim, max_position_embeddings=1)
    scaled, _ = rope_methods.inv_freq_for(
        params, dim, max_position_embeddings=int(params["original_max_position_embeddings"])
    )
    return (inv_freq / scaled).numpy().astype(np.float32)


def _llama3(params, dim, arch, original, finetuned) -> GgufRope:
    return GgufRope(tensors={"rope_freqs.weight": llama3_rope_freqs(params, dim)})


def _longrope(params, dim, arch, original, finetuned) -> GgufRope:
    """No `factor` key: llama.cpp would apply it as a linear scale on top of the factor tensors. llama.cpp picks
    the long factors when its context (n_ctx) exceeds the original length, transformers by the input length."""
    import numpy as np

    factor = float(params.get("factor") or 1.0)
    rope = GgufRope(tensors={"rope_factors_long.weight": np.asarray(params["long_factor"], dtype=np.float32),
                             "rope_factors_short.weight": np.asarray(params["short_factor"], dtype=np.float32)})
    _scaling(rope.kv, "longrope", original, finetuned)
    attention = params.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    rope.kv["rope.scaling.attn_factor"] = (float(attention), "FLOAT32")
    return rope


# transformers rope_type -> its GGUF form (a table, not a branch on names: tests check it covers every method)
FORMS = {"default": _plain, "linear": _linear, "yarn": _yarn, "llama3": _llama3, "longrope": _longrope}


def gguf_rope(params: dict, *, arch: str, dim: int, context_length: int, original: int, finetuned: bool) -> GgufRope:
    """The GGUF keys (after `{arch}.`) and tensors llama.cpp reads for a flat transformers-5 rope dict."""
    rope_type = params.get("rope_type", "default")
    if rope_type in NO_GGUF_FORM:
        raise UsageError(NO_GGUF_FORM[rope_type])
    require(rope_type in FORMS, f"rope_type {rope_type!r} has no GGUF form longctx writes")
    rope = FORMS[rope_type](params, dim, arch, original, finetuned)
    rope.kv["rope.freq_base"] = (float(params["rope_theta"]), "FLOAT32")
    rope.kv["context_length"] = (int(context_length), "UINT32")
    return rope


def config_from_gguf(meta: dict, tensor_names: set[str]) -> dict:
    """A transformers-shaped config dict of a GGUF's rope metadata (`meta`: key -> value), for `patch_config`."""
    arch = meta.get("general.architecture")
    require(arch in ARCHS, f"GGUF architecture {arch!r} is not one whose rope longctx scales for llama.cpp "
                           f"(supported: {', '.join(sorted(ARCHS))})")
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    heads, embd = get("attention.head_count"), get("embedding_length")
    dim = get("rope.dimension_count") or (embd // heads if heads and embd else None)
    require(bool(get("context_length")) and bool(dim), f"the GGUF lacks {arch}.context_length or its rotary dimension: "
                                                       "it is damaged or not a language model")
    config = {"model_type": ARCHS[arch], "rope_theta": float(get("rope.freq_base") or 10000.0), "head_dim": int(dim),
              "max_position_embeddings": int(get("context_length"))}
    kind, factor = get("rope.scaling.type"), float(get("rope.scaling.factor") or get("rope.scale_linear") or 1.0)
    scaled = next((n for n in ROPE_TENSORS if n in tensor_names), None)
    if scaled or (kind not in (None, "none") and factor != 1.0) or kind == "longrope":
        config["rope_scaling"] = {
            "rope_type": "llama3" if scaled == ROPE_TENSORS[0] else kind or "linear",
            "factor": factor,
        }
    if get("rope.scaling.original_context_length"):
        config["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    return config


def hf_rope_from_gguf(meta: dict, tensor_names: set[str]) -> dict | None:
    """The transformers rope dict of a GGUF's scaling keys (None when it has none): transformers' GGUF reader
    takes only freq_base for Llama files, which would silently evaluate a patched GGUF unscaled."""
    arch = meta.get("general.architecture")
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    require(
        not tensor_names & set(ROPE_TENSORS),
        "this GGUF scales its rope with factor tensors (rope_freqs or "
        "rope_factors_*), which longctx cannot read back: evaluate the HF checkpoint it came from",
    )
    kind, factor = get("rope.scaling.type"), float(get("rope.scaling.factor") or 1.0)
    if kind not in FORMS or factor == 1.0:  # none, or llama.cpp's default linear without a factor
        return None
    params = {"rope_type": kind, "rope_theta": float(get("rope.freq_base") or 10000.0), "factor": factor}
    if get("rope.scaling.original_context_length"):
        params["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    for key in ("beta_fast", "beta_slow"):  # written only with yarn
        if get(f"rope.scaling.yarn_{key}") is not None:
            params[key] = float(get(f"rope.scaling.yarn_{key}"))
    if get("rope.scaling.attn_factor") is not None:
        params["attention_factor"] = float(get("rope.scaling.attn_factor")) * (0.1 * math.log(factor) + 1)
    return params


def modelfile_text(gguf_name: str, num_ctx: int) -> str:
    """An Ollama Modelfile: Ollama's default context is small, and its rope settings come only from the file."""
    return (f"# Ollama: ollama create NAME -f {Path(gguf_name).stem}.Modelfile (written by longctx patch)\n"
            f"FROM ./{gguf_name}\nPARAMETER num_ctx {int(num_ctx)}\n")


# ------------------------------------------------------------------------------------------------ I/O
def read_gguf(path: Path):
    """A GGUFReader (memory-mapped) after checking the magic and that every tensor lies inside the file."""
    path = Path(path)
    with open(path, "rb") as handle:
        require(handle.read(4) == b"GGUF", f"{path} is not a GGUF file (no GGUF magic bytes): re-download it")
    try:
        import gguf
    except ImportError:
        raise UsageError("writing GGUF files needs the gguf package: pip install 'longctx[gguf]'") from None
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, MemoryError) as exc:  # the reader's errors for damage
        first = (str(exc).splitlines() or [""])[0][:120]
        raise UsageError(f"{path} is truncated or damaged, or uses a quantization type this gguf package does not "
                         f"know ({type(exc).__name__}: {first}): re-download it or update gguf") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        require(end <= size, f"{path} is truncated: tensor {tensor.name} ends at byte {end} of {size}; re-download it")
    return reader


def metadata(reader) -> dict:
    """key -> plain value of every GGUF field (arrays stay unread except small ones)."""
    return {name: f.contents() for name, f in reader.fields.items()
            if not name.startswith("GGUF.") and not name.startswith("tokenizer.ggml.")}



# ------------------------------------------------------------------------------------------------ HF -> GGUF
HF_ARCHS = {"llama": "llama", "mistral": "llama"}  # transformers model_type -> GGUF arch (llama.cpp's converter's)


def permute_qk(weight, n_head: int):
    """llama.cpp's row order of a q/k projection [heads·d, hidden]: HF rotates halves (i, i + d/2), GGML
    adjacent pairs (2i, 2i+1); convert_hf_to_gguf.py's `LlamaModel.permute`."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))
