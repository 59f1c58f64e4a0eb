"""Writing a patched checkpoint safely: the source is only read, the output appears atomically.

Weight files (large, and never rewritten in place by transformers' `save_pretrained`, which writes a new
file) are hard-linked: no copy, no extra disk, instant for multi-GB shards. On another file system a hard
link is impossible and they become symlinks, which the CLI says. Everything else (config, tokenizer,
generation config, …) is copied: those small files are what a later `save_pretrained` or an editor
rewrites in place, which through a link would change the source. `copy=True` copies the weights too.
Only config.json is rewritten; a model card and a machine-readable `longctx_patch.json` record what changed,
so the patch travels with the weights (LongLoRA #181). The output is built in a `.longctx-partial` folder
beside it and renamed into place (`longctx.files`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

from longctx import __version__, rope, rope_config
from longctx.checkpoint_files import WEIGHT_SUFFIXES, check_rope_fields, read_config_json
from longctx.errors import UsageError, environment_error, require
from longctx.files import clean_leftovers, kill_point, partial_dir, publish_dir
from longctx.locks import output_lock
from longctx.patch import PatchSpec, patch_config
from longctx.sources import resolve_model_dir

SKIPPED = {"config.json", "README.md", "longctx_patch.json", ".gitattributes"}
RECORD = "longctx_patch.json"  # marks a folder as a longctx patch output (only those may be replaced)


def place_file(src: Path, dst: Path, *, copy: bool = False) -> str:
    """Put src at dst: weight files as a hard link (a symlink across file systems), anything else, or
    everything with `copy`, as a copy. Returns 'hardlink', 'symlink' or 'copy'."""
    real = src.resolve()  # Hub snapshots are symlinks into blobs/
    if not copy and src.name.endswith(WEIGHT_SUFFIXES):
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


def check_not_source(source_dir: Path, out: Path, flag: str = "--out") -> None:
    """`out` must not be the source, lie inside it or contain it, nor be (or contain) the current folder:
    replacing any of those would delete what is being read or worked in."""
    src, dst, cwd = Path(source_dir).resolve(), Path(out).expanduser().resolve(), Path.cwd().resolve()
    require(dst != src, f"{flag} {out} is the source checkpoint itself: choose a new directory")
    require(
        src not in dst.parents,
        f"{flag} {out} lies inside the source checkpoint {source_dir}: choose a directory outside it",
    )
    require(
        dst not in src.parents, f"{flag} {out} contains the source checkpoint {source_dir}: choose another directory"
    )
    require(dst != cwd and dst not in cwd.parents,
            f"{flag} {out} is the current directory or contains it: name a new directory for the output")


def check_writable(out: Path, flag: str = "--out") -> None:
    """Fail before any work when the folder that would hold `out` cannot be written."""
    parent = Path(out).expanduser().absolute().parent
    while not parent.exists():
        parent = parent.parent
    require(parent.is_dir(), f"{flag} {out}: {parent} is a file, not a directory")
    require(
        os.access(parent, os.W_OK | os.X_OK),
        f"{flag} {out}: cannot write in {parent} (read-only or no permission): write elsewhere",
    )


def check_output_path(source_dir: Path, out: Path, *, force: bool, marker: str = RECORD,
                      what: str = "longctx patch output") -> None:
    """Refuse an output that overlaps the source, or that exists and is not ours to replace: an existing
    non-empty folder needs `force` and must hold `marker` (longctx never deletes a folder it did not write)."""
    check_not_source(source_dir, out)
    out = Path(out).expanduser()
    if out.exists():
        require(out.is_dir(), f"--out {out} exists and is a file: choose a new directory")
        if any(out.iterdir()):
            require(force, f"--out {out} exists and is not empty: pass --force to replace it")
            require((out / marker).is_file(),
                    f"--force: {out} is not a {what} (no {marker}); refusing to delete it: choose a new --out")
    check_writable(out)


def analysis_summary(config: dict) -> dict:
    params = rope_config.rope_parameters(config)
    dim = rope_config.rotary_dim(config)
    trained = rope_config.original_length(config)
    claimed = rope_config.max_length(config)
    summary = {"rotary_dim": dim, "trained_length": trained, "claimed_length": claimed}
    if params["rope_type"] == "default":
        summary["base_satisfies_lower_bound_at_claimed_length"] = rope.satisfies_base_bound(
            params["rope_theta"], dim, claimed
        )
    return summary


def changed_fields(before: dict, after: dict, prefix: str = "") -> dict:
    """{config key: [before, after]} of every top-level key (or key of a nested text_config) that differs."""
    changed = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "text_config" and isinstance(old, dict) and isinstance(new, dict):
            changed.update(changed_fields(old, new, prefix="text_config."))
        else:
            changed[prefix + key] = [old, new]
    return changed


def files_line(files: dict) -> str:
    """What the model card says about how each file got there."""
    by_kind = {kind: sorted(name for name, k in files.items() if k == kind) for kind in ("hardlink", "symlink", "copy")}
    parts = []
    if by_kind["hardlink"]:
        parts.append(f"hard links to the source's files (same bytes on disk: never write into them in place): "
                     f"{', '.join(f'`{n}`' for n in by_kind['hardlink'])}")
    if by_kind["symlink"]:
        parts.append(f"symlinks to the source (another file system; moving or deleting the source breaks this "
                     f"folder): {', '.join(f'`{n}`' for n in by_kind['symlink'])}")
    if by_kind["copy"]:
        parts.append(f"copies: {', '.join(f'`{n}`' for n in by_kind['copy'])}")
    return "; ".join(parts) or "no files besides the config"


def model_card(record: dict) -> str:
    """README.md of a patched checkpoint: the patch section of the card template shared with the fine-tune."""
    from longctx.templates import model_card as render_card

    return render_card(Path(record["out"]).name, tags=["longctx", "rope", "long-context"], patch=record,
                       files=files_line(record["files"]))


def write_patched_checkpoint(source, out, spec: PatchSpec, **kwargs) -> Path:
    """Patch `source` (Hub id, local dir or GGUF) into the new directory `out`. Returns `out`; `patch_checkpoint`
    (same arguments) returns what longctx_patch.json records."""
    return Path(patch_checkpoint(source, out, spec, **kwargs)["out"])


def patch_checkpoint(source, out, spec: PatchSpec, *, force: bool = False, copy: bool = False,
                     allow_pickle: bool = False, trust_remote_code: bool = False, revision: str | None = None,
                     command: str | None = None, new_config: dict | None = None,
                     written_by: str = "the longctx Python API (longctx.checkpoint)") -> dict:
    """Patch `source` (Hub id, local dir or GGUF) into the new directory `out`; returns the record written to
    `out`/longctx_patch.json (the CLI prints from it rather than reading the file back).

    `command` is the `longctx patch` command line, given only by the CLI; other callers (the fine-tune
    recipe) say who they are in `written_by`. longctx_patch.json records the spec applied, the config
    fields it changed, the source and the longctx version either way. `new_config`: `patch_config(<source's
    config.json>, spec)` when the caller derived it already (the fine-tune's preflight).
    """
    from longctx.provenance import RunRecord

    run = RunRecord(command)
    out = Path(out).expanduser()
    source_dir = resolve_model_dir(source, revision=revision, allow_pickle=allow_pickle,
                                   trust_remote_code=trust_remote_code)
    check_output_path(source_dir, out, force=force)  # refusals that need no lock first: nothing is created for them
    config = read_config_json(source_dir)
    new_config = patch_config(config, spec) if new_config is None else new_config
    check_rope_fields(new_config, out, what="the patched config")  # what transformers would refuse to load
    with output_lock(out):
        # a run killed mid-publish may have moved the old output aside: it is back before any check
        clean_leftovers(out)
        check_output_path(source_dir, out, force=force)
        return _write(source, source_dir, out, spec, config, new_config, copy=copy, command=command,
                      written_by=written_by, origin=run.origin())


def _write(source, source_dir: Path, out: Path, spec: PatchSpec, config: dict, new_config: dict, *, copy: bool,
           command: str | None, written_by: str, origin: dict) -> dict:
    tmp = partial_dir(out)
    try:
        files = {}
        for path in sorted(source_dir.rglob("*")):
            rel = path.relative_to(source_dir)
            if rel.parts[0].startswith(".") or str(rel) in SKIPPED or path.is_dir():
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            files[str(rel)] = place_file(path, tmp / rel, copy=copy)
            kill_point("patch:placed")
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        text_before, text_after = rope_config.text_config(config), rope_config.text_config(new_config)
        record = {
            "longctx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "written_by": "longctx patch" if command else written_by,
            "command": command,
            **origin,  # the code's commit and the machine (`provenance.RunRecord`), as every run record has
            "source": str(source), "source_dir": str(source_dir), "out": str(out),
            "spec": spec.to_dict(),
            "changed_fields": changed_fields(config, new_config),
            "rope_before": rope_config.rope_parameters(text_before),
            "rope_after": rope_config.rope_parameters(text_after),
            "max_position_embeddings_before": text_before.get("max_position_embeddings"),
            "max_position_embeddings": text_after["max_position_embeddings"],
            "original_max_position_embeddings": text_after["original_max_position_embeddings"],
            "analysis": analysis_summary(new_config),
            "files": files,
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(record))
        kill_point("patch:complete")
        publish_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if environment_error(exc):
            raise UsageError(f"could not write {out} ({environment_error(exc)}): nothing was written") from None
        raise
    return record
