"""RULER and Kamradt retrieval: longctx's path (the task's `run`) against plain per-sample `model.generate` on the
same prompts, graded the same way (aim: ≥ 1.8× the samples/s with identical grades).

longctx's path (`longctx.evals.tasks.ruler_decode.generate`) takes the samples in token order over one KV cache cropped
back to the prefix the next prompt shares (reused when it covers half the prompt), decodes the samples of one length
together (one batched forward per step), and stops decoding a sample once every expected string is in its text.
The baseline rebuilds the SAME samples (same seeds, same token ids: `ruler_prompts.build_sample`,
`Kamradt.samples`) and calls `model.generate` once per sample, greedy, up to the task's budget, stopping only at EOS;
its text is graded with the same function (`ruler_tasks.found`: expected strings present, ignoring case). Reported
per task: samples/s of each path, their ratio, and every sample whose grade differs. Building the prompts counts in
both timings (the task's `run` builds them too).

CPU default: SmolLM2-135M-Instruct (chat template on), RULER niah_single_1 and vt at 1K, 3 samples each; Kamradt
at 1K × 5 depths with `../shared/data/books` (skipped with one line where that folder is absent).
"""

from __future__ import annotations

import tempfile
import time

from bench import bench_sweep, common

TARGET_SPEEDUP = 1.8
CPU_LENGTHS = {"ruler": [1024], "kamradt": [1024]}
GPU_LENGTHS = {"ruler": [4096, 8192], "kamradt": [4096, 8192, 16384]}
RULER_SETTINGS = {"tasks": "niah_single_1,vt", "samples": 3}
KAMRADT_SETTINGS = {"depths": "0:1:5", "samples": 1}
BOOKS = "../shared/data/books"  # relative to the checkout (the measuring process runs there), as the studies name it


def config(task: str, lengths: list[int], settings: dict):
    from longctx.evals.suite import make_config

    return make_config(task, {"lengths": lengths, "past_context": True, **settings})


def built_samples(task, tokenizer, cfg) -> list:
    """Every sample of `cfg`, built as the task's `run` builds it (the baseline decodes exactly these ids)."""
    from longctx.evals.tasks import ruler, ruler_prompts
    from longctx.evals.tasks import ruler_tasks as rt

    if task.name == "kamradt":
        _, hay = task.prepare(tokenizer, cfg)
        return [s for n in cfg.lengths for d in cfg.depths for s in task.samples(cfg, hay, n, d)]
    wrapper, res = ruler_prompts.Wrapper(tokenizer, cfg.chat_template), rt.load_words()
    if cfg.haystack_dir:
        res = rt.with_essay(res, rt.essay_from_folder(cfg.haystack_dir))
    return [ruler_prompts.build_sample(name, n, i, task.seed(cfg, name, n, i), res, wrapper)
            for name in ruler.parse_tasks(cfg.tasks) for n in cfg.lengths for i in range(cfg.samples)]


def sample_key(name: str, length: int, depth, index: int) -> str:
    return f"{name}|{length}|{'-' if depth is None else f'{depth:g}'}|{index}"


def generate_one(model, tokenizer, sample, eos: list[int]) -> str:
    """One plain `model.generate`: greedy, at most the task's budget, stopping at EOS only."""
    import torch

    ids = torch.tensor([sample.ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=sample.budget, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos[0])
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def measure(variant: str, task: str, lengths: list[int], device: str, settings: dict, model: str = "smollm2") -> dict:
    """Grades {sample key: expected strings found}, texts and seconds of one path, in this (fresh) process."""
    from longctx.evals.run.results import ResultsWriter
    from longctx.evals.tasks import get_task, ruler_decode
    from longctx.evals.tasks import ruler_tasks as rt

    model_obj, tokenizer = bench_sweep.load_smollm2(device, None if model == "smollm2" else model)
    task = get_task(task)
    cfg = config(task.name, lengths, settings)
    one = {"depths": "0.5"} if "depths" in settings else {"tasks": "niah_single_1"}
    warm = config(task.name, [min(lengths)], {**settings, "samples": 1, **one})
    grades, texts = {}, {}
    with tempfile.TemporaryDirectory(prefix="longctx-bench-ruler-") as tmp:
        if variant == "longctx":
            task.run(model_obj, tokenizer, warm, ResultsWriter(tmp, "warmup", task.name))  # untimed: kernels, allocator
            cells, seconds = common.timed(device, task.run, model_obj, tokenizer, cfg,
                                          ResultsWriter(tmp, "timed", task.name))
            for cell in cells:
                for record in cell["records"]:
                    key = sample_key(cell.get("subtask", task.name), cell["length"], cell.get("depth"), record["index"])
                    grades[key], texts[key] = record["found"], record["generated"]
        else:
            eos = sorted(ruler_decode.eos_ids(model_obj, tokenizer))
            generate_one(model_obj, tokenizer, built_samples(task, tokenizer, warm)[0], eos)  # untimed
            common.synchronize(device)
            start = time.perf_counter()  # building the prompts counts, as it does inside the task's run
            for sample in built_samples(task, tokenizer, cfg):
                text = generate_one(model_obj, tokenizer, sample, eos)
                key = sample_key(sample.name, sample.length, sample.draft.meta.get("depth"), sample.index)
                grades[key], texts[key] = rt.found(text, sample.draft.outputs), text
            common.synchronize(device)
            seconds = time.perf_counter() - start
    return {"variant": variant, "task": task.name, "grades": grades, "texts": texts, "seconds": seconds,
            "samples_per_s": len(grades) / seconds if seconds else None}


def compare(fast: dict, naive: dict) -> dict:
    """Samples/s ratio and every sample whose grade (expected strings found) differs."""
    keys = sorted(set(fast["grades"]) | set(naive["grades"]))
    disagree = [{"sample": k, "longctx": fast["grades"].get(k), "generate": naive["grades"].get(k),
                 "longctx_text": fast["texts"].get(k), "generate_text": naive["texts"].get(k)}
                for k in keys if fast["grades"].get(k) != naive["grades"].get(k)]
    return {"samples": len(keys), "disagreements": disagree, "identical": not disagree,
            "found_longctx": sum(v or 0 for v in fast["grades"].values()),
            "found_generate": sum(v or 0 for v in naive["grades"].values()),
            "speedup": naive["seconds"] / fast["seconds"]}


def plan(device: str, sizes: list[int] | None) -> dict:
    """{task: (lengths, settings)}; Kamradt only where its books are."""
    lengths = GPU_LENGTHS if device.startswith("cuda") else CPU_LENGTHS
    out = {"ruler": (sizes or lengths["ruler"], dict(RULER_SETTINGS))}
    if (common.ROOT / BOOKS).is_dir():
        out["kamradt"] = (sizes or lengths["kamradt"], {**KAMRADT_SETTINGS, "haystack_dir": BOOKS})
    return out


def run(opts) -> dict:
    device, tasks, skipped = opts.device, {}, []
    planned = plan(device, opts.sizes)
    if "kamradt" not in planned:
        skipped.append(f"kamradt: {BOOKS} is absent (its haystack)")
    for task, (lengths, settings) in planned.items():
        result = {"lengths": lengths, "settings": settings}
        for variant in ("longctx", "generate"):
            print(f"  ruler-bench {task} {variant} lengths={lengths} ...", flush=True)
            result[variant] = common.run_child("bench.bench_ruler:measure", {
                "variant": variant, "task": task, "lengths": lengths, "device": device, "settings": settings},
                timeout=opts.timeout)
        if "grades" in result["longctx"] and "grades" in result["generate"]:
            result["comparison"] = c = compare(result["longctx"], result["generate"])
            print(f"  ruler-bench {task}: {c['speedup']:.2f}x, grades {'identical' if c['identical'] else 'differ'} "
                  f"({result['longctx']['seconds']:.1f} s vs {result['generate']['seconds']:.1f} s)", flush=True)
        tasks[task] = result
    return {"model": "smollm2", "device": device, "tasks": tasks, "skipped": skipped, "targets": targets(tasks)}


def targets(tasks: dict) -> dict:
    return common.speedup_targets(tasks, TARGET_SPEEDUP)


def markdown(section: dict) -> str:
    out = ["## RULER / Kamradt: longctx's shared-prefix KV cache + batched decoding + early stop vs `generate` per "
           "sample\n",
           f"Model: SmolLM2-135M-Instruct on `{section['device']}`, chat template on. Both paths decode the same token "
           "ids (rebuilt from the same seeds); the baseline calls `model.generate` once per sample (greedy, up to the "
           "task's budget, stopping at EOS) and is graded by the same function. Prompt building counts in both "
           "timings; each path runs in a fresh process after an untimed warm-up.\n"]
    rows, disagreements = [], []
    for name, t in section["tasks"].items():
        c = t.get("comparison")
        what = f"{t['lengths']} {', '.join(f'{k}={v}' for k, v in t['settings'].items() if k != 'haystack_dir')}"
        if c is None:
            rows.append([name, what, None, None, None, None, t["longctx"].get("error") or t["generate"].get("error")])
            continue
        rows.append([name, what, f"{t['longctx']['samples_per_s']:.3f}", f"{t['generate']['samples_per_s']:.3f}",
                     f"{c['speedup']:.2f}×", f"{c['found_longctx']} vs {c['found_generate']} in {c['samples']} samples",
                     "identical" if c["identical"] else f"{len(c['disagreements'])} of {c['samples']} differ"])
        disagreements += [(name, d) for d in c["disagreements"]]
    out.append(common.table(["task", "lengths, settings", "longctx samples/s", "generate samples/s", "speedup",
                             "expected strings found (longctx vs generate)", "grades"], rows))
    out += [f"\n- skipped: {s}" for s in section.get("skipped", [])]
    if disagreements:
        out.append("\nDisagreements (sample = task|length|depth|index):\n")
        out.append(common.table(["task", "sample", "longctx", "generate", "longctx text", "generated text"],
                                [[n, d["sample"], d["longctx"], d["generate"], f"`{d['longctx_text']}`",
                                  f"`{d['generate_text']}`"] for n, d in disagreements]))
    t = section["targets"]
    out.append(f"\nTarget: ≥ {TARGET_SPEEDUP:g}× the samples/s of generate-per-sample, identical grades.\n")
    if t.get("met") is None:
        out.append(f"- not evaluated: {t['why']}")
    else:
        out.append(f"- speed: slowest task {t['worst_speedup']:.2f}× → " + ("**met**" if t["speed_met"] else
                   f"**missed** by {t['target_speedup'] / t['worst_speedup']:.2f}×. Both paths prefill every prompt; "
                   "sharing skips only the text before the earlier needle (and only where that is half the prompt), "
                   "while batched decoding and early stopping save only decode steps, which a short answer found "
                   "at once leaves few of."))
        out.append("- grades: " + ("**identical** for every sample" if t["grades_identical"] else
                                   "**not identical**: see the disagreements above"))
    return "\n".join(out) + "\n"
