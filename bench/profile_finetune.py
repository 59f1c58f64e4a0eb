"""Where a fine-tune step's time goes: torch.profiler's operator table for longctx's loop or the Trainer, on the
same model, rows and settings as `bench_finetune` (one fresh process per call; the steps after the warm-up).

    python bench/profile_finetune.py longctx full 512
    python bench/profile_finetune.py trainer full 512

Compare the two tables: operators and counts show whether both loops do the same work; the bench's ratio
shows whether it costs the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAIT, WARMUP, ACTIVE = 3, 1, 3  # profiler schedule in optimizer steps: skip the settling steps, then record


def main(argv: list[str]) -> int:
    if (
        len(argv) != 3
        or argv[0] not in ("longctx", "trainer")
        or argv[1] not in ("lora", "full")
        or not argv[2].isdigit()
    ):
        print("usage: python bench/profile_finetune.py longctx|trainer lora|full SEQ_LEN", file=sys.stderr)
        return 2
    impl, finetune, seq_len = argv[0], argv[1], int(argv[2])
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from bench import bench_finetune

    profiler = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE))
    if impl == "longctx":  # the loop's callbacks see every step; the bench adds its peak-memory one
        step = bench_finetune.PeakBeforeFinalSave.on_step

        def on_step(self, state):
            step(self, state)
            profiler.step()

        bench_finetune.PeakBeforeFinalSave.on_step = on_step
    else:
        import transformers

        class Tick(transformers.TrainerCallback):
            def on_step_end(self, *args, **kwargs):
                profiler.step()

        init = transformers.Trainer.__init__

        def trainer_init(self, *args, **kwargs):
            init(self, *args, **{**kwargs, "callbacks": [*(kwargs.get("callbacks") or []), Tick()]})

        transformers.Trainer.__init__ = trainer_init
    profiler.start()
    result = bench_finetune.measure(impl, finetune, "smollm2", seq_len, WAIT + WARMUP + ACTIVE - 2, "cpu")
    profiler.stop()
    print(f"{impl} {finetune} T={seq_len}: {result['tokens_per_s']:.1f} tok/s, {result.get('optimizer')}, "
          f"steps {[round(s, 2) for s in result['step_seconds']]}, torch threads {torch.get_num_threads()}")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
