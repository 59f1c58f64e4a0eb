"""GGUF out: a patched or fine-tuned model as a file llama.cpp, Ollama and LM Studio run at the new length.

GGUF -> GGUF keeps every tensor's bytes and rewrites only metadata, streamed from a memory map; HF -> GGUF
writes f32/f16/bf16 through the `gguf` package's tensor-name map, with llama.cpp's q/k row permutation. What
the metadata says is `longctx.gguf_meta` (pure mapping). Quantizing is llama.cpp's job (`llama-quantize`).
Every output is built in a partial file beside it and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from longctx.errors import UsageError, require
from longctx.gguf_meta import (
    DTYPES,
    HF_ARCHS,
    RECORD_KEY,
    ROPE_TENSORS,
    config_from_gguf,
    gguf_rope,
    metadata,
    modelfile_text,
    permute_qk,
    read_gguf,
)


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
        require(
            dst != src and src not in dst.parents,
            f"--out {out} is or lies inside the source {src}: choose another path",
        )
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
    """GGUF -> GGUF: the same tensors byte for byte (a Q4 file stays Q4), the patched rope metadata. Returns the
    record."""
    import gguf

    from longctx import rope_config
    from longctx.patch import patch_config

    reader = read_gguf(source)
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    config = config_from_gguf(meta, names)
    check_out(out, [source], force)
    arch = meta["general.architecture"]
    require(
        not names & set(ROPE_TENSORS),
        f"{source} already carries rope factor tensors ({', '.join(sorted(names & set(ROPE_TENSORS)))}): "
        "start from the unscaled GGUF",
    )
    new = patch_config(config, spec)
    params = rope_config.rope_parameters(new)
    rope = gguf_rope(params, arch=arch, dim=config["head_dim"], context_length=new["max_position_embeddings"],
                     original=new["original_max_position_embeddings"], finetuned=False)
    replaced = {f"{arch}.{k}" for k in rope.kv} | ({k for k in reader.fields if k.startswith(f"{arch}.rope.scaling.")}
                                                   if "rope.scaling.type" in rope.kv else set())
    record = {
        "command": command,
        "source": str(source),
        "spec": spec.to_dict(),
        "rope": params,
        "context_length": new["max_position_embeddings"],
        "original_context_length": new["original_max_position_embeddings"],
    }

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
    # a merged LoRA: OUT/base is the patched source
    if (model_dir.parent / "base").is_dir() and model_dir.name == "merged":
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

    tokenizer = (
        json.loads((model_dir / "tokenizer.json").read_text()) if (model_dir / "tokenizer.json").is_file() else {}
    )
    require(
        bool(tokenizer),
        f"{model_dir} has no tokenizer.json: GGUF needs the tokenizer; convert with llama.cpp's convert_hf_to_gguf.py",
    )
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

    from longctx.checkpoint_files import weight_files

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    found = []
    for path in weight_files(model_dir):
        require(path.suffix == ".safetensors", f"{path}: HF -> GGUF reads safetensors weights only")
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                if name.endswith("rotary_emb.inv_freq") or (
                    name == "lm_head.weight" and config.get("tie_word_embeddings")
                ):
                    continue
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                require(
                    target is not None,
                    f"{path}: tensor {name} has no llama.cpp name: convert with llama.cpp's convert_hf_to_gguf.py",
                )
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
    from longctx.checkpoint_files import read_config_json
    from longctx.patch import patch_config

    require(
        dtype in DTYPES,
        f"--gguf-dtype {dtype}: choose {', '.join(DTYPES)} (quantize the result with llama.cpp's llama-quantize)",
    )
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
    rope = gguf_rope(
        params,
        arch="llama",
        dim=rope_config.rotary_dim(new),
        context_length=int(new["max_position_embeddings"]),
        original=original,
        finetuned=finetuned,
    )
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
    record = {
        "command": command,
        "source": str(model_dir),
        "spec": spec.to_dict() if spec is not None else None,
        "rope": params,
        "context_length": int(new["max_position_embeddings"]),
        "original_context_length": original,
        "dtype": dtype,
        "tokenizer": tokenizer_origin,
    }
    writer.add_string(RECORD_KEY, json.dumps(record, default=str))

    def stored(shape) -> tuple:  # (numpy dtype, raw GGML type) of a tensor: 1-D ones (norms) stay f32 as llama.cpp's
        if len(shape) == 1 or dtype == "f32":
            return np.float32, None
        return (np.float16, None) if dtype == "f16" else (np.uint16, gguf.GGMLQuantizationType.BF16)

    for target, _, _, shape in tensors:
        np_dtype, raw = stored(shape)
        writer.add_tensor_info(
            target, shape, np.dtype(np_dtype), int(np.prod(shape)) * np.dtype(np_dtype).itemsize, raw
        )
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
        require(
            spec is not None,
            "nothing to patch: a GGUF source needs --base and/or --method with --factor or --target-length",
        )
        record = write_gguf_patch(path, out, spec, force=force, command=command)
    else:
        if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise UsageError(
                f"{source} is a LoRA adapter: merge it first (the fine-tune's --merge writes {path}/merged) "
                "and give that folder"
            )
        model_dir = resolve_model_dir(
            source, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        record = write_hf_as_gguf(model_dir, out, spec, dtype=dtype, force=force, command=command)
    write_text_atomic(out.with_suffix(".Modelfile"), modelfile_text(out.name, record["context_length"]))
    return record
