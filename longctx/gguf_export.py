"""GGUF out: a patched or fine-tuned model as a file llama.cpp, Ollama and LM Studio run at the new length.

llama.cpp takes rope settings only from the file (Ollama dropped its run-time rope parameters), so the patch
must be in the metadata llama.cpp reads (src/llama-model.cpp, llama-context.cpp; keys of src/llama-arch.cpp):
`{arch}.rope.freq_base`, `{arch}.rope.scaling.type` (none, linear, yarn, longrope), `.factor`,
`.original_context_length`, `.finetuned`, `.attn_factor`, and `{arch}.context_length` = the target length.
Llama 3 scaling travels as the `rope_freqs` tensor and LongRoPE as `rope_factors_long/short`, as llama.cpp's own
converter (convert_hf_to_gguf.py) writes them. Dynamic NTK has no GGUF form.

Two halves: pure mapping (transformers rope dict -> GGUF keys and tensors) and I/O (GGUF -> GGUF keeps every
tensor's bytes and rewrites only metadata, streamed from a memory map; HF -> GGUF writes f32/f16/bf16 through the
`gguf` package's tensor-name map, with llama.cpp's q/k row permutation). Quantizing is llama.cpp's job
(`llama-quantize`). Every output is built in a partial file beside it and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
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
    require(betas == (32.0, 1.0) or arch in READS_YARN_BETAS,
            f"llama.cpp's {arch} architecture ignores yarn_beta_fast/slow (it always uses 32 and 1): drop --beta-fast/--beta-slow for a GGUF")
    require(not params.get("mscale") and not params.get("mscale_all_dim"),
            "YaRN mscale/mscale_all_dim are read by llama.cpp only for DeepSeek: this setting has no GGUF form here")
    rope = GgufRope()
    factor = float(params["factor"])
    _scaling(rope.kv, "yarn", original, finetuned, factor)
    rope.kv["rope.scaling.yarn_beta_fast"] = (betas[0], "FLOAT32")  # as convert_hf_to_gguf.py writes them
    rope.kv["rope.scaling.yarn_beta_slow"] = (betas[1], "FLOAT32")
    if params.get("attention_factor") is not None:
        rope.kv["rope.scaling.attn_factor"] = (float(params["attention_factor"]) / (0.1 * math.log(factor) + 1), "FLOAT32")
    return rope


def llama3_rope_freqs(params: dict, dim: int):
    """The `rope_freqs` tensor [dim/2] of llama.cpp's converter: θ'ᵢ = θᵢ / rope_freqs[i]."""
    import numpy as np

    from longctx import rope_methods

    inv_freq, _ = rope_methods.inv_freq_for({**params, "rope_type": "default"}, dim, max_position_embeddings=1)
    scaled, _ = rope_methods.inv_freq_for(params, dim, max_position_embeddings=int(params["original_max_position_embeddings"]))
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
        config["rope_scaling"] = {"rope_type": "llama3" if scaled == ROPE_TENSORS[0] else kind or "linear", "factor": factor}
    if get("rope.scaling.original_context_length"):
        config["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    return config


def hf_rope_from_gguf(meta: dict, tensor_names: set[str]) -> dict | None:
    """The transformers rope dict of a GGUF's scaling keys (None when it has none): transformers' GGUF reader
    takes only freq_base for Llama files, which would silently evaluate a patched GGUF unscaled."""
    arch = meta.get("general.architecture")
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    require(not tensor_names & set(ROPE_TENSORS), "this GGUF scales its rope with factor tensors (rope_freqs or "
                                                  "rope_factors_*), which longctx cannot read back: evaluate the HF checkpoint it came from")
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


def partial_file(out: Path) -> Path:
    """`.<name>.longctx-partial.<host>.<pid>` beside `out`, after removing those of dead runs."""
    from longctx.files import PARTIAL, _alive, _host

    prefix = f".{out.name}.{PARTIAL}.{_host()}."
    for leftover in out.parent.glob(f"{prefix}*"):
        if leftover.name[len(prefix):].isdigit() and not _alive(int(leftover.name[len(prefix):])):
            leftover.unlink(missing_ok=True)
    return out.with_name(f"{prefix}{os.getpid()}")


def check_out(out: Path, sources: list[Path], force: bool) -> None:
    """Refuse an output that is (or lies inside) the source, or an existing file longctx did not write."""
    from longctx.checkpoint import check_writable

    require(out.suffix == ".gguf", f"--out {out} must end in .gguf for a GGUF output")
    dst = out.expanduser().resolve()
    for src in sources:
        src = src.resolve()
        require(dst != src and src not in dst.parents, f"--out {out} is or lies inside the source {src}: choose another path")
    if out.exists():
        require(out.is_file(), f"--out {out} exists and is not a file: choose a new path")
        require(force, f"--out {out} exists: pass --force to replace it")
        written = False
        try:
            written = RECORD_KEY in read_gguf(out).fields
        except UsageError:
            pass
        require(written, f"--force: {out} was not written by longctx (no {RECORD_KEY} key); refusing to replace it")
    check_writable(out)


def _publish(tmp: Path, out: Path) -> None:
    from longctx.files import _umask, replace_into_place

    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    replace_into_place(tmp, out)


def _write(writer, tmp: Path, out: Path, tensors, endianess=None) -> None:
    """Header, metadata, tensor infos, then each tensor's data in turn (`tensors` yields arrays lazily, so one
    tensor at most is in memory besides the source's memory map)."""
    from longctx.files import kill_point

    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in tensors:
            writer.write_tensor_data(array, tensor_endianess=endianess)
            kill_point("gguf:tensor")
        writer.close()
        _publish(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _add_kv(writer, key: str, value, type_name: str) -> None:
    import gguf

    writer.add_key_value(key, value, getattr(gguf.GGUFValueType, type_name))


def write_gguf_patch(source: Path, out: Path, spec, *, force: bool = False, command: str | None = None) -> dict:
    """GGUF -> GGUF: the same tensors byte for byte (a Q4 file stays Q4), the patched rope metadata. Returns the record."""
    import gguf

    from longctx import rope_config
    from longctx.patch import patch_config

    reader = read_gguf(source)
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    config = config_from_gguf(meta, names)
    check_out(out, [source], force)
    arch = meta["general.architecture"]
    require(not names & set(ROPE_TENSORS), f"{source} already carries rope factor tensors ({', '.join(sorted(names & set(ROPE_TENSORS)))}): "
                                           "start from the unscaled GGUF")
    new = patch_config(config, spec)
    params = rope_config.rope_parameters(new)
    rope = gguf_rope(params, arch=arch, dim=config["head_dim"], context_length=new["max_position_embeddings"],
                     original=new["original_max_position_embeddings"], finetuned=False)
    replaced = {f"{arch}.{k}" for k in rope.kv} | ({k for k in reader.fields if k.startswith(f"{arch}.rope.scaling.")}
                                                   if "rope.scaling.type" in rope.kv else set())
    record = {"command": command, "source": str(source), "spec": spec.to_dict(), "rope": params,
              "context_length": new["max_position_embeddings"], "original_context_length": new["original_max_position_embeddings"]}

    writer = gguf.GGUFWriter(None, arch, endianess=reader.endianess)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name in replaced or name in (gguf.Keys.General.ARCHITECTURE, RECORD_KEY):
            continue
        if name == gguf.Keys.General.ALIGNMENT:
            writer.data_alignment = int(f.contents())
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for key, (value, type_name) in rope.kv.items():
        _add_kv(writer, f"{arch}.{key}", value, type_name)
    writer.add_string(RECORD_KEY, json.dumps(record, default=str))
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, array in rope.tensors.items():
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
    arrays = [*(t.data for t in reader.tensors), *rope.tensors.values()]  # memory-mapped views, read as written
    _write(writer, partial_file(out), out, arrays, endianess=reader.endianess)
    return record


# ------------------------------------------------------------------------------------------------ HF -> GGUF
HF_ARCHS = {"llama": "llama", "mistral": "llama"}  # transformers model_type -> GGUF arch (llama.cpp's converter's)


def permute_qk(weight, n_head: int):
    """llama.cpp's row order of a q/k projection [heads·d, hidden]: HF rotates halves (i, i + d/2), GGML
    adjacent pairs (2i, 2i+1); convert_hf_to_gguf.py's `LlamaModel.permute`."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def source_gguf(model_dir: Path, seen: int = 0) -> Path | None:
    """The GGUF a checkpoint came from (its dequantized copy, a patch of it, a fine-tune of that): its tokenizer
    metadata is copied exactly, pre-tokenizer included."""
    model_dir = Path(model_dir)
    if seen > 4:
        return None
    for record, key in (("longctx_source.json", "gguf"), ("longctx_patch.json", "source_dir")):
        path = model_dir / record
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value and key == "gguf" and Path(value).is_file():
                return Path(value)
            if value and key == "source_dir" and Path(value).is_dir():
                return source_gguf(Path(value), seen + 1)
    args = model_dir / "finetune_args.json"  # a full fine-tune: its --model
    if args.is_file():
        model = json.loads(args.read_text()).get("model", {})
        model = model.get("model") if isinstance(model, dict) else None
        if model and Path(model).suffix == ".gguf" and Path(model).is_file():
            return Path(model)
        if model == "smollm2":
            from longctx.sources import smollm2_gguf_path

            return smollm2_gguf_path()
    if (model_dir.parent / "base").is_dir() and model_dir.name == "merged":  # a merged LoRA: OUT/base is the patched source
        return source_gguf(model_dir.parent / "base", seen + 1)
    return None


def _tokenizer_kv(writer, model_dir: Path) -> str:
    """Tokenizer metadata: copied from the source GGUF when known, else built from tokenizer.json by the gguf
    package's vocab classes (pre-tokenizer 'default'). Returns where it came from."""
    import gguf

    origin = source_gguf(model_dir)
    if origin is not None:
        reader = read_gguf(origin)
        for name, f in reader.fields.items():
            if name.startswith("tokenizer."):
                sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
        return f"copied from {origin}"
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text()) if (model_dir / "tokenizer.json").is_file() else {}
    require(bool(tokenizer), f"{model_dir} has no tokenizer.json: GGUF needs the tokenizer; convert with llama.cpp's convert_hf_to_gguf.py")
    bpe = tokenizer.get("model", {}).get("type") == "BPE" and not tokenizer.get("model", {}).get("byte_fallback")
    vocab = BpeVocab(model_dir) if bpe else LlamaHfVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    writer.add_tokenizer_model("gpt2" if bpe else "llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    SpecialVocab(model_dir, load_merges=bpe, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    return "built from tokenizer.json (pre-tokenizer 'default')"


def _hf_tensors(model_dir: Path, config: dict):
    """(gguf name, safetensors file, HF name, shape) of every tensor llama.cpp needs, in file order."""
    import gguf
    from safetensors import safe_open

    from longctx.sources import weight_files

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    found = []
    for path in weight_files(model_dir):
        require(path.suffix == ".safetensors", f"{path}: HF -> GGUF reads safetensors weights only")
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.get("tie_word_embeddings")):
                    continue
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                require(target is not None, f"{path}: tensor {name} has no llama.cpp name: convert with llama.cpp's convert_hf_to_gguf.py")
                found.append((target, path, name, tuple(handle.get_slice(name).get_shape())))
    return found


def write_hf_as_gguf(model_dir: Path, out: Path, spec, *, dtype: str = "f16", force: bool = False,
                     command: str | None = None) -> dict:
    """HF (llama-architecture, e.g. a merged LoRA or full fine-tune) -> GGUF in f32/f16/bf16, patched by `spec`
    if given, else with the checkpoint's own rope. Tensors are read and written one at a time."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from longctx import rope_config
    from longctx.patch import patch_config
    from longctx.sources import read_config_json

    require(dtype in DTYPES, f"--gguf-dtype {dtype}: choose {', '.join(DTYPES)} (quantize the result with llama.cpp's llama-quantize)")
    config = read_config_json(model_dir)
    model_type = config.get("model_type")
    require(model_type in HF_ARCHS and not config.get("sliding_window"),
            f"HF -> GGUF is written for Llama-architecture checkpoints, not {model_type!r}: convert with llama.cpp's "
            "convert_hf_to_gguf.py, then `longctx patch --model that.gguf --out ...`")
    check_out(out, [model_dir], force)
    new = patch_config(config, spec) if spec is not None else config
    params = rope_config.rope_parameters(new)
    dim, n_head = rope_config.head_dim(new), int(new["num_attention_heads"])
    n_kv = int(new.get("num_key_value_heads") or n_head)
    original = rope_config.original_length(new)
    finetuned = (model_dir / "finetune_args.json").is_file() or model_dir.name == "merged"
    rope = gguf_rope(params, arch="llama", dim=rope_config.rotary_dim(new), context_length=int(new["max_position_embeddings"]),
                     original=original, finetuned=finetuned)
    tensors = _hf_tensors(model_dir, new)

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(Path(model_dir).name)
    writer.add_block_count(int(new["num_hidden_layers"]))
    writer.add_embedding_length(int(new["hidden_size"]))
    writer.add_feed_forward_length(int(new["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(new.get("rms_norm_eps", 1e-5)))
    writer.add_rope_dimension_count(rope_config.rotary_dim(new))
    if dim != int(new["hidden_size"]) // n_head:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    writer.add_vocab_size(int(new["vocab_size"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    for key, (value, type_name) in rope.kv.items():
        _add_kv(writer, f"llama.{key}", value, type_name)
    tokenizer_origin = _tokenizer_kv(writer, model_dir)
    record = {"command": command, "source": str(model_dir), "spec": spec.to_dict() if spec is not None else None,
              "rope": params, "context_length": int(new["max_position_embeddings"]), "original_context_length": original,
              "dtype": dtype, "tokenizer": tokenizer_origin}
    writer.add_string(RECORD_KEY, json.dumps(record, default=str))

    def stored(shape) -> tuple:  # (numpy dtype, raw GGML type) of a tensor: 1-D ones (norms) stay f32 as llama.cpp's
        if len(shape) == 1 or dtype == "f32":
            return np.float32, None
        return (np.float16, None) if dtype == "f16" else (np.uint16, gguf.GGMLQuantizationType.BF16)

    for target, _, _, shape in tensors:
        np_dtype, raw = stored(shape)
        writer.add_tensor_info(target, shape, np.dtype(np_dtype), int(np.prod(shape)) * np.dtype(np_dtype).itemsize, raw)
    for name, array in rope.tensors.items():
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)

    def arrays():
        for target, path, name, shape in tensors:
            with safe_open(path, framework="pt") as handle:
                weight = handle.get_tensor(name).to(torch.float32)
            if target.endswith("attn_q.weight"):
                weight = permute_qk(weight, n_head)
            elif target.endswith("attn_k.weight"):
                weight = permute_qk(weight, n_kv)
            np_dtype, raw = stored(shape)
            if raw is not None:
                yield weight.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            else:
                yield weight.numpy().astype(np_dtype)
        yield from rope.tensors.values()

    _write(writer, partial_file(out), out, arrays())
    return record


# ------------------------------------------------------------------------------------------------ entry point
def export(source: str, out, spec, *, dtype: str = "f16", force: bool = False, revision: str | None = None,
           allow_pickle: bool = False, trust_remote_code: bool = False, command: str | None = None) -> dict:
    """`longctx patch --out X.gguf`: a GGUF source is rewritten in place of its metadata, an HF one converted;
    then `X.Modelfile` for Ollama. Returns the record written into the GGUF (`longctx.patch`)."""
    from longctx.files import write_text_atomic
    from longctx.sources import BUNDLED_SMOLLM2, resolve_model_dir, smollm2_gguf_path

    out = Path(out).expanduser()
    path = Path(os.fspath(source)).expanduser()
    if os.fspath(source) == BUNDLED_SMOLLM2 and not path.exists():
        path = smollm2_gguf_path()  # the shipped Q4_1 file itself, kept byte for byte
    if path.is_file() and path.suffix == ".gguf":
        require(spec is not None, "nothing to patch: a GGUF source needs --base and/or --method with --factor or --target-length")
        record = write_gguf_patch(path, out, spec, force=force, command=command)
    else:
        if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise UsageError(f"{source} is a LoRA adapter: merge it first (the fine-tune's --merge writes {path}/merged) "
                             "and give that folder")
        model_dir = resolve_model_dir(source, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        record = write_hf_as_gguf(model_dir, out, spec, dtype=dtype, force=force, command=command)
    write_text_atomic(out.with_suffix(".Modelfile"), modelfile_text(out.name, record["context_length"]))
    return record
