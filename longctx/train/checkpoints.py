"""Resumable training checkpoints that are written atomically and never unpickle code.

A checkpoint is `OUT/checkpoints/step-NNNNNN/`: accelerate's `save_state` (model or LoRA-only weights as
safetensors, optimizer state, accelerate's own RNG files) plus, written by longctx, `rng_state_<rank>.json`
(every process's torch RNG) and `trainer_state.json` (step, rows of packed data consumed, the lr
scheduler's state, and the size of every file of the checkpoint). Every process builds it in one partial folder
(`longctx.files.shared_partial_dir`) that process 0 publishes when complete (`publish_dir`), so a killed run never
leaves a half checkpoint that --resume would pick.

Why not accelerate's `load_state` as it is: it unpickles registered custom objects (`custom_checkpoint_N.pkl`)
with `weights_only=False`, so a crafted run folder would run code on `--resume` (and older accelerate
versions load the optimizer and RNG files the same way). What longctx does instead:
  * nothing is registered with accelerate: the scheduler's and the RNG states are JSON in files longctx
    writes, so no checkpoint of longctx holds a custom-object pickle;
  * `load_state` runs with every `torch.load` forced to `weights_only=True`: a pickle may hold tensors,
    numbers, strings and containers only; anything else is refused in one line before it can run;
  * a checkpoint is loaded only when its trainer_state.json has longctx's format tag and every file it
    lists still has its recorded size, and it holds no pickle file that longctx did not list. This catches
    truncated copies and foreign folders early; it is not what makes loading safe (a forger can write the
    JSON too): the forced `weights_only` is.
Checkpoints of earlier longctx versions (no format tag: the scheduler in accelerate's custom_checkpoint_0.pkl)
still resume: that pickle, a plain state dict, is read with weights_only=True like every other.
FSDP and DeepSpeed sharded states load through their own readers (torch.distributed.checkpoint reads its
`.metadata` with pickle): resume such runs only from folders you wrote.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from pathlib import Path

from longctx.errors import UsageError, require
from longctx.files import kill_point, publish_dir, remove_partials, shared_partial_dir

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
FORMAT = "longctx-checkpoint-2"  # before: no tag, the scheduler pickled by accelerate (still read, weights only)
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
LEGACY_SCHEDULER = "custom_checkpoint_0.pkl"
# what accelerate's save_state writes (earlier longctx checkpoints are not listed file by file)
LEGACY_PICKLES = re.compile(r"(optimizer(_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt|pytorch_model(_\d+)?\.bin|"
                            r"custom_checkpoint_0\.pkl)")


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial folders start with '.' and are never listed)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def remove_partial_checkpoints(out: Path) -> None:
    """Partial checkpoints of a run killed while saving: never resumed from, removed on the next start."""
    remove_partials(Path(out) / CHECKPOINTS)


def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(accelerator, out: Path, step: int, rows_consumed: int, keep_last: int, scheduler=None) -> Path:
    """Write to a temporary dir, rename when every process is done, then drop all but the newest `keep_last`."""
    root = Path(out) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = shared_partial_dir(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        (tmp / f"rng_state_{accelerator.process_index}.json").write_text(json.dumps(_rng_state()))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            kill_point("checkpoint:saved")
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            state = {
                "format": FORMAT,
                "step": step,
                "rows_consumed": rows_consumed,
                "accelerate_step": accelerator.step,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "files": files,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state) + "\n")
            publish_dir(tmp, final)
            kill_point("checkpoint:published")
            for old in checkpoint_dirs(out)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
        raise
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> dict:
    """trainer_state.json of a checkpoint, checked: longctx's format, every listed file at its size, no
    unlisted pickle (for an earlier longctx's checkpoint: only the pickles accelerate writes). Raises
    UsageError naming what is wrong."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(
            f"--resume: {path / STATE_FILE} is unreadable: remove {path} to resume from an earlier checkpoint"
        ) from None
    require(
        isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("rows_consumed"), int),
        f"--resume: {path / STATE_FILE} was not written by longctx (no step and rows_consumed): "
        "start over with --force",
    )
    check_state_schema(path, state)
    if "format" not in state:  # an earlier longctx
        for file in path.rglob("*"):
            if file.is_file() and file.suffix in PICKLE_SUFFIXES and not LEGACY_PICKLES.fullmatch(file.name):
                raise UsageError(f"--resume: {file} was not written by longctx: refusing to load a foreign pickle")
        return {**state, "legacy": True}
    require(state["format"] == FORMAT, f"--resume: {path} has checkpoint format {state['format']!r}, which this "
                                       f"longctx ({FORMAT}) cannot read: start over with --force")
    listed = state.get("files")
    require(isinstance(listed, dict), f"--resume: {path / STATE_FILE} lists no files")
    root = path.resolve()
    for rel, size in listed.items():
        file = (path / rel).resolve()
        require(root in file.parents, f"--resume: {path / STATE_FILE} names a file outside the checkpoint ({rel})")
        require(file.is_file() and file.stat().st_size == size,
                f"--resume: {path / rel} is missing or truncated (expected {size} bytes): remove {path} to resume "
                "from an earlier checkpoint")
    for file in path.rglob("*"):
        if file.is_file() and file.suffix in PICKLE_SUFFIXES and str(file.relative_to(path)) not in listed:
            raise UsageError(f"--resume: {file} was not written by longctx: refusing to load a foreign pickle")
    return state


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _finite_list(value) -> bool:
    import math

    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                           for v in value)


def check_state_schema(path: Path, state: dict) -> None:
    """Every field a resume reads has its type and range (a hand-edited counter or scheduler entry is one line,
    not a traceback deep in torch): step, rows, accelerate's step, the LambdaLR state, the file sizes, the RNG."""
    where = f"--resume: {path / STATE_FILE}"
    bad = []
    if not _whole(state["step"], 1) or path.name != f"step-{state['step']:06d}":
        bad.append(f"step {state['step']!r} (the folder is {path.name})")
    if not _whole(state["rows_consumed"], 1):
        bad.append(f"rows_consumed {state['rows_consumed']!r}")
    if state.get("accelerate_step") is not None and not _whole(state["accelerate_step"]):
        bad.append(f"accelerate_step {state['accelerate_step']!r}")
    scheduler = state.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, dict):
            bad.append("scheduler (not a mapping)")
        else:
            for key in ("base_lrs", "_last_lr"):
                if key in scheduler and not _finite_list(scheduler[key]):
                    bad.append(f"scheduler.{key} {scheduler[key]!r}")
            for key, low in (("last_epoch", -1), ("_step_count", 0)):
                if key in scheduler and not _whole(scheduler[key], low):
                    bad.append(f"scheduler.{key} {scheduler[key]!r}")
            if "lr_lambdas" in scheduler and not (isinstance(scheduler["lr_lambdas"], list)
                                                  and all(x is None for x in scheduler["lr_lambdas"])):
                bad.append("scheduler.lr_lambdas (longctx writes none)")
    files = state.get("files")
    if files is not None and not (
        isinstance(files, dict) and all(isinstance(k, str) and _whole(v) for k, v in files.items())
    ):
        bad.append("files (not a mapping of names to sizes)")
    for rng in sorted(path.glob("rng_state_*.json")):
        try:
            saved = json.loads(rng.read_text())
            ok = isinstance(saved, dict) and all(
                isinstance(seq, list) and all(_whole(b) and b < 256 for b in seq)
                for seq in [saved.get("torch"), *(saved.get("cuda") or [])])
        except (OSError, ValueError):
            ok = False
        if not ok:
            bad.append(f"{rng.name} (not a saved RNG state)")
    if bad:
        raise UsageError(f"{where} has a bad {bad[0]}: it was edited or damaged; remove {path} to resume from an "
                         "earlier checkpoint, or start over with --force")


@contextlib.contextmanager
def weights_only_loads(path: Path):
    """Every torch.load inside is weights_only=True, whatever its caller asked; a pickle that holds more
    than tensors and plain data becomes a one-line UsageError."""
    import torch

    real = torch.load

    def load(*args, **kwargs):
        kwargs.pop("pickle_module", None)
        return real(*args, **{**kwargs, "weights_only": True})

    torch.load = load
    try:
        yield
    except pickle.UnpicklingError as exc:
        lines = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        why = f" ({lines[0].strip()[:160]})" if lines else ""
        raise UsageError(f"--resume: {path} holds a pickle that is not plain tensors and data{why}: "
                         "longctx never loads such a file") from None
    finally:
        torch.load = real


def load_checkpoint(accelerator, path: Path, *, scheduler, strict: bool = True) -> dict:
    """Restore model, optimizer, scheduler, accumulation step and RNG from a checkpoint; returns its state."""
    state = read_state(path)
    # accelerate refuses a folder whose custom_checkpoint_N.pkl files do not match its registered objects: for
    # an earlier longctx's checkpoint the scheduler is registered for this one load (read weights-only too)
    registered = getattr(accelerator, "_custom_objects", None)
    legacy = bool(state.get("legacy")) and scheduler is not None and (path / LEGACY_SCHEDULER).is_file()
    require(not legacy or isinstance(registered, list), f"--resume: {path} comes from an earlier longctx and this "
                                                        "accelerate version cannot read it: start over with --force")
    if legacy:
        accelerator.register_for_checkpointing(scheduler)
    try:
        with weights_only_loads(path):
            accelerator.load_state(str(path), **({} if strict else {"strict": False}))
    finally:
        if legacy and scheduler in registered:
            registered.remove(scheduler)  # new checkpoints keep the scheduler as JSON
    if legacy:
        state["scheduler"] = scheduler.state_dict()
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng_state_{accelerator.process_index}.json"
    if rng.is_file():
        _set_rng_state(json.loads(rng.read_text()))
    accelerator.step = int(state.get("accelerate_step") or 0)
    return state
