"""Writing a patched checkpoint safely: the source is only read, the output appears atomically.

Weights are hard-linked (no copy, no extra disk, instant for multi-GB files), falling back to a symlink,
then a copy; `copy=True` forces copies. Only config.json is rewritten; a model card and a machine-readable
`longctx_patch.json` record what changed, so the patch travels with the weights (LongLoRA #181).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from longctx import __version__, rope, rope_config
from longctx.errors import require
from longctx.patch import PatchSpec, patch_config
from longctx.sources import read_config_json, resolve_model_dir

SKIPPED = {"config.json", "README.md", "longctx_patch.json", ".gitattributes"}


def link_or_copy(src: Path, dst: Path, *, copy: bool = False) -> str:
    """Place src at dst as a hard link, else a symlink, else a copy; returns which."""
    real = src.resolve()  # Hub snapshots are symlinks into blobs/
    if not copy:
        try:
            os.link(real, dst)
            return "hardlink"
        except OSError:
            try:
                os.symlink(real, dst)
                return "symlink"
            except OSError:
                pass
    shutil.copy2(real, dst)
    return "copy"


def check_output_path(source_dir: Path, out: Path, *, force: bool) -> None:
    src, dst = source_dir.resolve(), out.resolve()
    require(dst != src, f"--out {out} is the source checkpoint itself: choose a new directory")
    require(src not in dst.parents, f"--out {out} lies inside the source checkpoint {source_dir}: choose a directory outside it")
    require(dst not in src.parents, f"--out {out} contains the source checkpoint {source_dir}: choose another directory")
    if out.exists():
        require(out.is_dir(), f"--out {out} exists and is a file: choose a new directory")
        require(force or not any(out.iterdir()), f"--out {out} exists and is not empty: pass --force to replace it")


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp dir into place; an old output (with --force) is swapped out, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def analysis_summary(config: dict) -> dict:
    params = rope_config.rope_parameters(config)
    dim = rope_config.rotary_dim(config)
    trained = rope_config.original_length(config)
    claimed = rope_config.max_length(config)
    summary = {"rotary_dim": dim, "trained_length": trained, "claimed_length": claimed}
    if params["rope_type"] == "default":
        summary["base_satisfies_lower_bound_at_claimed_length"] = rope.satisfies_base_bound(params["rope_theta"], dim, claimed)
    return summary


def model_card(record: dict) -> str:
    before, after = record["rope_before"], record["rope_after"]
    rows = "\n".join(f"| `{k}` | {before.get(k, '—')} | {after.get(k, '—')} |" for k in sorted(set(before) | set(after)))
    analysis = record["analysis"]
    bound = analysis.get("base_satisfies_lower_bound_at_claimed_length")
    bound_line = "" if bound is None else (
        f"- Base lower bound (*Base of RoPE Bounds Context Length*): B(m) = Σ cos(m·θᵢ) ≥ 0 for all m ≤ "
        f"{analysis['claimed_length']}: **{'holds' if bound else 'violated'}**.\n")
    return f"""---
tags: [longctx, rope, long-context]
---
# {Path(record['out']).name}

Rotary position embeddings of `{record['source']}` patched by [longctx](https://github.com/longctx/longctx)
{record['longctx_version']} on {record['created']} with method **{record['spec']['method']}**.

| rope setting | before | after |
|---|---|---|
{rows}
| `max_position_embeddings` | {record['max_position_embeddings_before']} | {record['max_position_embeddings']} |

- Trained context: {analysis['trained_length']} tokens; context claimed now: {analysis['claimed_length']} tokens.
{bound_line}- Weights are unchanged (linked from the source: {', '.join(sorted(set(record['files'].values()))) or 'none'}).
  Only `config.json` differs; it carries the patch in both transformers 4 (`rope_theta`, `rope_scaling`) and
  transformers 5 (`rope_parameters`) form. Keep it with the weights: without it the model is the original.
- A training-free patch often needs a short fine-tune at the original length before long-context retrieval
  works; evaluate with `longctx eval suite` before trusting the claimed context.

Command: `{record['command']}`
"""


def write_patched_checkpoint(source, out, spec: PatchSpec, *, force: bool = False, copy: bool = False,
                             allow_pickle: bool = False, trust_remote_code: bool = False,
                             revision: str | None = None, command: str | None = None) -> Path:
    """Patch `source` (Hub id, local dir or GGUF) into the new directory `out`. Returns `out`."""
    out = Path(out).expanduser()
    source_dir = resolve_model_dir(source, revision=revision, allow_pickle=allow_pickle,
                                   trust_remote_code=trust_remote_code)
    check_output_path(source_dir, out, force=force)
    config = read_config_json(source_dir)
    new_config = patch_config(config, spec)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = {}
        for path in sorted(source_dir.rglob("*")):
            rel = path.relative_to(source_dir)
            if rel.parts[0].startswith(".") or str(rel) in SKIPPED or path.is_dir():
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            files[str(rel)] = link_or_copy(path, tmp / rel, copy=copy)
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        text_before, text_after = rope_config.text_config(config), rope_config.text_config(new_config)
        record = {
            "longctx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(["longctx", *sys.argv[1:]]),
            "source": str(source), "source_dir": str(source_dir), "out": str(out),
            "spec": spec.to_dict(),
            "rope_before": rope_config.rope_parameters(text_before),
            "rope_after": rope_config.rope_parameters(text_after),
            "max_position_embeddings_before": text_before.get("max_position_embeddings"),
            "max_position_embeddings": text_after["max_position_embeddings"],
            "original_max_position_embeddings": text_after["original_max_position_embeddings"],
            "analysis": analysis_summary(new_config),
            "files": files,
        }
        (tmp / "longctx_patch.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(record))
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

