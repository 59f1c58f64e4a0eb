"""A checkpoint folder's files, checked before anything loads: config.json read with one-line errors, the
weight files listed, safetensors headers and rope fields checked, regular files only, and weights that match
the config. Where the folder comes from (Hub, GGUF, the bundled SmolLM2) is `longctx.sources`."""

from __future__ import annotations

import json
from pathlib import Path

from longctx.errors import UsageError
from longctx.lengths import MAX_CONTEXT

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_config_json(model_dir: Path) -> dict:
    """config.json as a dict, or a UsageError saying what is wrong with it."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UsageError(
            f"{model_dir} has no config.json: point --model at a Hugging Face checkpoint directory, a GGUF file or a "
            "Hub id"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): repair or re-download the "
            "checkpoint"
        ) from None
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
        raise UsageError(
            f"{path} is truncated or not a safetensors file ({problem}): re-download or re-save the checkpoint"
        )


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
        raise UsageError(
            f"{where} has rope_theta = {theta!r}: it must be a number > 1 (e.g. 10000.0); repair the config"
        )
    params = rope_config.rope_parameters(text)
    known = {m.rope_type for m in rope_methods.METHODS.values()} | {"proportional", "mrope"}  # transformers' others
    if params["rope_type"] not in known:
        raise UsageError(f"{where} has rope_type {params['rope_type']!r}, which neither longctx nor transformers "
                         f"computes ({', '.join(sorted(known))}): repair the config")
    for key in ("factor",):
        if key in params and params[key] is not None and (_number(params[key]) is None or params[key] < 1):
            raise UsageError(
                f"{where} has rope {key} = {params[key]!r}: it must be a finite number ≥ 1; repair the config"
            )
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
        dim = rope_config.rotary_dim(text, params)
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
        raise UsageError(
            f"{model_dir} needs remote code (config.json has auto_map): pass --trust-remote-code if you trust it"
        )
    check_rope_fields(config, Path(model_dir))
    check_regular_files(model_dir, " in the checkpoint")
    if need_weights:
        weights = weight_files(model_dir)
        if not weights:
            raise UsageError(f"{model_dir} holds no weight files (*.safetensors): download the full checkpoint")
        if not any(p.suffix == ".safetensors" for p in weights) and not allow_pickle:
            raise UsageError(
                f"{model_dir} has weights only as pickle (.bin/.pt), which can run code on load: pass --allow-pickle "
                "if you trust it"
            )
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
            raise UsageError(
                f"{index} is not a valid safetensors index (no weight_map): re-download the checkpoint"
            ) from None
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (model_dir / shard).is_file():
                raise UsageError(f"{model_dir} is missing the shard {shard} that {index.name} lists: download the "
                                 "full checkpoint")
        headers = {shard: safetensors_header(model_dir / shard) for shard in set(map(str, weight_map.values()))}
        lost = sorted(name for name, shard in weight_map.items() if name not in headers[str(shard)])
        if lost:
            raise UsageError(
                f"{index.name} maps {len(lost)} tensor(s) to shards that do not hold them ({', '.join(lost[:3])}): "
                "re-download the checkpoint"
            )
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
        extra = sorted(
            n for n in found - set(range(layers)) if n >= layers + int(text.get("num_nextn_predict_layers") or 0)
        )
    if isinstance(layers, int) and not isinstance(layers, bool) and found and (missing or extra):
        what = (f"no weights for layer(s) {', '.join(map(str, missing[:5]))}" if missing else
                f"weights for layer(s) {', '.join(map(str, extra[:5]))} the config does not have")
        raise UsageError(
            f"{model_dir}: config.json says num_hidden_layers = {layers} but the weight files hold {what}: "
            "the config does not belong to these weights; repair it or re-download the checkpoint"
        )
    vocab, hidden = text.get("vocab_size"), text.get("hidden_size")
    for name, shape in names.items():
        if (
            name.endswith("embed_tokens.weight")
            and isinstance(shape, list)
            and isinstance(vocab, int)
            and isinstance(hidden, int)
        ):
            if shape != [vocab, hidden]:
                raise UsageError(f"{model_dir}: {name} is {shape[0]} × {shape[-1]} but config.json says vocab_size "
                                 f"{vocab} × hidden_size {hidden}: the config does not belong to these weights")
            break
