"""Evaluation past one device: data parallel over a task's work units, and the process group of context parallel.

Launched with several processes, `longctx eval` shares every task between them; one process runs as before:

    accelerate launch --num_processes 8 -m longctx eval suite longctx/evals/suites/quick.yaml --model M --out results/
    torchrun --nproc_per_node 8 -m longctx eval suite ...                  (the same, without accelerate's launcher)
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 -m longctx eval suite ...   (CPU, gloo)

Data parallel (the default) fits a model whose longest window fits one device: each process loads the whole
model on its own device (`accelerate.PartialState().device`) and computes a share of the work; the results
are those of one process (same cells, same numbers). Context parallel (perplexity's `context_parallel`, see
`longctx.evals.run.nll`) is for a window longer than one device holds: every process works on every
window, each holding a slice of its sequence.

Work units. A unit is what one journal record holds: a retrieval (length, trial), i.e. every depth of one
trial, graded together so that the depths share the filler's KV cache (a unit per cell would prefill that
filler once per depth), and a perplexity (length, window). Each process takes the units still to do
round-robin, over one list ordered by length with a counter that runs on across lengths: every length is
spread over all processes, so the longest, which costs the most, is not one process's alone (dealing out
whole cells would give the 32K perplexity cell to one process while the others idle), and two processes'
shares differ by at most one unit per length. Every process derives the same share from the same files.

Files. Concurrent processes never write the same file: process N journals its units in `<task>.rankN.partial`
(process 0 in `<task>.partial`), and only process 0 writes cells (`<task>.jsonl`), model.json, runs.jsonl and
the report. One shared file appended to with O_APPEND by every process was the other way; it was not taken
because a line landing whole would then rest on the filesystem (NFS and several cluster filesystems do not
make O_APPEND atomic across clients), Python may split a long line into several write calls, and the torn
line repair of a reader (`longctx.files.read_jsonl`) would cut off a line another process is still writing.
Per task: process 0 reads the results (repairing torn last lines and folding journals of earlier ranks into
its own), the others read, and a barrier follows, so no process writes before every process has read the
same state; each computes its units; a barrier; process 0 folds every rank journal into `<task>.partial`,
deletes them and writes every complete cell; a barrier; the others read the cells back. A rerun, with any
number of processes, skips every cell written and every unit journaled by any process. The results folder
must be one that every process sees (a shared filesystem across nodes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache

from longctx.errors import UsageError

BARRIER_TIMEOUT_HOURS = 12  # a process that finished its share waits this long for the slowest at a barrier


@dataclass(frozen=True)
class World:
    """This process among those evaluating together: rank, size, and accelerate's `PartialState` when size > 1."""

    rank: int = 0
    size: int = 1
    device: str | None = None
    state: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            self.state.wait_for_everyone()

    def main_first(self):
        """A context in which process 0 runs before the others (it fills caches: a dequantized GGUF, a dataset)."""
        import contextlib

        return self.state.main_process_first() if self.size > 1 else contextlib.nullcontext()

    def share(self, units: list) -> list:
        """This process's units: round-robin over the ordered list (every process gets the same list)."""
        return units[self.rank::self.size]

    def mesh(self):
        """A 1-D DeviceMesh of every process (context parallel)."""
        import torch

        return _mesh(torch.device(self.device).type, self.size)


SINGLE = World()


@cache
def _mesh(device_type: str, size: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (size,), mesh_dim_names=("cp",))


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and `accelerate launch` set WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_world(device: str | None = None) -> World:
    """SINGLE for one process (no accelerate, no torch.distributed); else this process's place, through
    accelerate's `PartialState` (which starts the process group: nccl on GPUs, gloo on CPU). `device` (--device)
    may only name the device type the launch gives each process."""
    if launched_processes() <= 1:
        return SINGLE
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    asked = torch.device(device) if device else None
    cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
           or (asked is not None and asked.type == "cpu") or not torch.cuda.is_available())
    state = PartialState(cpu=cpu, timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
    if state.num_processes < 2:
        raise UsageError(f"launched as {launched_processes()} processes but accelerate sees one: on CPU set "
                         "ACCELERATE_USE_CPU=true (torchrun) or launch with accelerate")
    if asked is not None and asked.type != state.device.type:
        raise UsageError(f"--device {device}: under {state.num_processes} processes each evaluates on the device "
                         f"the launch gives it ({state.device}); drop --device or launch on {asked.type}")
    return World(rank=state.process_index, size=state.num_processes, device=str(state.device), state=state)


def run_units(writer, rows: list[tuple[Hashable, list[Hashable]]], work: Callable, finish: Callable, *,
              shard: bool = True) -> None:
    """Compute the units of `rows` ([(row, [unit, ...])], rows in order) and write the rows' cells.

    `work(row, unit)` computes one unit and returns its journal records [(cell key, unit id, sample)];
    `finish(row)` writes the row's cells from the journal (`writer.samples`), skipping those already done.
    One process: each row's cells are written as soon as its units are done. Several (`writer.world`): each
    computes its round-robin share, then process 0 gathers every journal and writes all the cells (see the
    module docstring). `shard=False` (context parallel): every process computes every unit, together and in
    the same order, and process 0 alone journals.
    """
    world = writer.world
    units = [(row, unit) for row, row_units in rows for unit in row_units]
    mine = set(world.share(units) if shard else units)
    for row, row_units in rows:
        for unit in row_units:
            if (row, unit) in mine:
                for key, unit_id, sample in work(row, unit):
                    if shard or world.main:
                        writer.add_sample(key, sample, unit=unit_id)
        if world.size == 1:
            finish(row)
    if world.size > 1:
        writer.gather()
        if world.main:
            for row, _ in rows:
                finish(row)
        writer.settle()


__all__ = ["World", "SINGLE", "current_world", "launched_processes", "run_units"]
