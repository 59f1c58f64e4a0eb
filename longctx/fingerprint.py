"""Which model a results folder measured: a fingerprint of the config, the weight files and the patch record.

Two models whose folders share a name get the same default label; without this a second model evaluated into
the first one's results folder would "resume" and report the first one's cells as its own. The fingerprint is
cheap (no full-weights hash): config.json, and per weight file its size, its safetensors header (names,
shapes, dtypes, offsets) and three 64 KiB samples of its bytes (start, middle, end), plus the index and the
`longctx_patch.json` spec of a patched checkpoint, and the same for a LoRA adapter on top.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from longctx.errors import UsageError

SAMPLE = 1 << 16
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _file_digest(path: Path) -> str:
    """sha256 of a weight file's size, head (the safetensors header sits there) and two more samples."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE))
    return digest.hexdigest()[:16]


def _folder(folder: Path, names: tuple[str, ...]) -> dict:
    """{file: digest} of the JSON files that define a model and of its weight files (top level only)."""
    entry = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        if path.name in names or path.name.endswith(".index.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = path.read_bytes().hex()
            if path.name == "longctx_patch.json" and isinstance(data, dict):
                data = {"spec": data.get("spec"), "rope_after": data.get("rope_after")}  # not its time or paths
            if path.name == "adapter_config.json" and isinstance(data, dict):
                data = {k: v for k, v in data.items() if k != "base_model_name_or_path"}  # a path, not the model
            entry[path.name] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        elif path.name.endswith(WEIGHT_SUFFIXES):
            entry[path.name] = f"{path.stat().st_size}:{_file_digest(path)}"
    return entry


def fingerprint(model_dir: Path, adapter_dir: Path | None = None) -> dict:
    """{"id": 16 hex digits, "model": {file: digest}, "adapter": {…}} of the checkpoint (and adapter)."""
    record = {"model": _folder(model_dir, ("config.json", "longctx_patch.json"))}
    if adapter_dir is not None:
        record["adapter"] = _folder(adapter_dir, ("adapter_config.json",))
    record["id"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def same_weights(a: dict | None, b: dict | None) -> bool | None:
    """Whether two fingerprints name the same weights (a patch changes only config.json and longctx_patch.json);
    None when either lacks the weight entries to tell."""
    def weights(record):
        if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
            return None
        files = {name: digest for name, digest in record["model"].items() if name.endswith(WEIGHT_SUFFIXES)}
        return (files, record.get("adapter")) if files else None

    wa, wb = weights(a), weights(b)
    return None if wa is None or wb is None else wa == wb


def check_same_model(results: Path, current: dict, source: str, *, flag: str = "--label") -> None:
    """Refuse to resume or add to OUT/<label> when its model.json says another model measured it. A folder of
    an earlier longctx (no fingerprint) is accepted when its rotary settings agree."""
    path = Path(results) / "model.json"
    if not path.is_file():
        if any(Path(results).glob("*.jsonl")):
            raise UsageError(f"{results} holds results without a model.json, so which model measured them is unknown: "
                             f"use another {flag} or --out, or --force to start over")
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise UsageError(f"{path} is unreadable, so which model measured {results} is unknown: use another {flag} "
                         "or --out, or --force to start over")
    before = saved.get("fingerprint")
    same = before.get("id") == current["fingerprint"]["id"] if isinstance(before, dict) else \
        saved.get("rope") == current.get("rope")
    if not same:
        raise UsageError(f"{results} holds results of another model ({saved.get('source')!r}, fingerprint "
                         f"{before.get('id') if isinstance(before, dict) else 'none'}), not of {source!r} "
                         f"({current['fingerprint']['id']}): use another {flag} or --out, or --force to start over")
