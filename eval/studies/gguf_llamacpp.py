"""GGUFs written by `longctx patch --out X.gguf`, run by a real llama.cpp, into docs/results/gguf-llamacpp/.

    make test-llamacpp            # builds llama.cpp once from PyPI's llama-cpp-python (CPU) under .cache, then this
    .venv/bin/python eval/studies/gguf_llamacpp.py --llamacpp .cache/llamacpp --out docs/results/gguf-llamacpp

SmolLM2-135M-Instruct (Q4_1 as shipped): the original, YaRN x2 and base 1e6 patched to GGUF by the CLI. llama.cpp
scores the same single-document windows `longctx eval ppl` scores (the books of ../shared/data/books, seed 0,
two windows per length), token ids fed directly, so tokenization is not a variable. Next to it: longctx's own HF
evaluation of the same patched model (read from the study that computed it, windows checked equal, or computed
here with --fresh-hf). llama.cpp runs the Q4_1 weights; longctx dequantizes them to fp32: the 2K difference,
where no rope scaling acts, is that baseline. Then greedy passkey generation at 12K through llama.cpp with the
seeds of the study's generate-mode cells. Cells are journaled (rerun to resume); README.md is generated from
the files. Exit 1 when an agreement target (|Δ| ≤ 2% at 12K and 16K) fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODELS = {
    "original": None,
    "yarn-x2": ["--method", "yarn", "--factor", "2"],
    "base-1e6": ["--base", "1e6", "--target-length", "16384"],
    "yarn-x2-hf": ["--method", "yarn", "--factor", "2"],
}
# The route of a fine-tuned model: the patched Hugging Face folder (fp32, dequantized) written as an f32 GGUF by
# `longctx patch --out X.gguf`. Nothing is quantized on either side, so llama.cpp must give the HF number itself:
# that is what proves the HF -> GGUF conversion (tensor names, the q/k row order of llama.cpp's rope) right.
HF_ROUTE = {"yarn-x2-hf": "yarn-x2"}  # label -> the model whose HF cells it is compared with
HF_ROUTE_LENGTHS = [2048, 12288]
LENGTHS = [2048, 8192, 12288, 16384]
DATA = str(ROOT.parent / "shared" / "data" / "books")
STUDY = ROOT / "docs" / "results" / "smollm2-extension-cpu"  # longctx's HF cells of the same models and windows
TARGET = 0.02


def journal(path: Path) -> dict:
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else {}


def append(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class LlamaCpp:
    """One model in llama.cpp through llama-cpp-python's C API: decode token ids, read every position's logits."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
        params.n_threads = params.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, params)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, 1)

    def decode(self, tokens: list[int], start: int, logits: bool):
        """Feed tokens at positions start.. (KV cache kept); returns their logits [n, vocab] if asked."""
        import numpy as np

        b = self.batch
        b.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, start + i, 1, logits or i == len(tokens) - 1
            b.seq_id[i][0] = 0
        assert self.L.llama_decode(self.ctx, b) == 0, "llama_decode failed"
        rows = len(tokens) if logits else 1
        return np.ctypeslib.as_array(self.L.llama_get_logits(self.ctx), shape=(rows, self.n_vocab)).copy()

    def nll_sum(self, ids: list[int]) -> tuple[float, int]:
        """Total NLL (nats) of ids[1:] given what precedes each, as longctx's `token_nll` scores a window."""
        import numpy as np

        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        total = 0.0
        for start in range(0, len(ids) - 1, 512):
            chunk = ids[start : min(start + 512, len(ids) - 1)]
            logits = self.decode(chunk, start, True).astype(np.float64)
            targets = np.asarray(ids[start + 1 : start + 1 + len(chunk)])
            top = logits.max(axis=1)
            lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            total += float((lse - logits[np.arange(len(chunk)), targets]).sum())
        return total, len(ids) - 1

    def generate(self, ids: list[int], n: int) -> list[int]:
        """Greedy continuation by llama.cpp's own greedy sampler."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        for start in range(0, len(ids), 512):
            self.decode(ids[start : start + 512], start, False)
        sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
        out, pos = [], len(ids)
        for _ in range(n):
            token = L.llama_sampler_sample(sampler, self.ctx, -1)
            out.append(token)
            if L.llama_vocab_is_eog(L.llama_model_get_vocab(self.model), token):
                break
            self.decode([token], pos, False)
            pos += 1
        L.llama_sampler_free(sampler)
        return out


def patched_gguf(label: str, source: Path, work: Path) -> tuple[Path, str | None]:
    """The GGUF of a model (the CLI writes it once) and the command that wrote it."""
    if MODELS[label] is None:
        return source, None
    out = work / f"smollm2-{label}.gguf"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    longctx = [sys.executable, "-m", "longctx", "patch"]
    if label in HF_ROUTE:  # GGUF -> patched HF folder (fp32) -> f32 GGUF
        folder = work / f"smollm2-{label}"
        if not out.is_file():
            if not (folder / "config.json").is_file():
                subprocess.run(
                    [*longctx, "--model", str(source), "--out", str(folder), *MODELS[label]],
                    check=True,
                    cwd=ROOT,
                    env=env,
                )
            subprocess.run(
                [*longctx, "--model", str(folder), "--out", str(out), "--gguf-dtype", "f32"],
                check=True,
                cwd=ROOT,
                env=env,
            )
        return out, (
            f"longctx patch --model SmolLM2-135M-Instruct.Q4_1.gguf --out {folder.name} "
            f"{' '.join(MODELS[label])} && longctx patch --model {folder.name} --out {out.name} --gguf-dtype f32"
        )
    command = [*longctx, "--model", str(source), "--out", str(out), *MODELS[label]]
    if not out.is_file():
        subprocess.run(command, check=True, cwd=ROOT, env=env)
    return out, "longctx patch --model SmolLM2-135M-Instruct.Q4_1.gguf --out " + out.name + " " + " ".join(
        MODELS[label]
    )


def hf_cells(label: str, fresh: Path | None) -> dict[int, dict]:
    """longctx's HF ppl cells (length -> cell) of a model on the books, from the study or a fresh `longctx eval`."""
    folder = (fresh or STUDY) / label
    cells = {}
    lines = (folder / "ppl.jsonl").read_text().splitlines() if (folder / "ppl.jsonl").is_file() else []
    for record in map(json.loads, lines):
        if record.get("task") == "ppl" and "ppl" in record and record.get("stride") is None:
            cells[record["length"]] = record
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamacpp", type=Path, required=True, help="folder holding the built llama_cpp package")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "gguf-llamacpp")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "gguf-llamacpp", help="patched GGUFs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument(
        "--passkey", type=int, default=3, help="passkey trials at 12K per model (study seeds, depth 0.5)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fresh-hf", type=Path, help="results folder of a fresh `longctx eval ppl` of the same models")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/README.md from the journaled cells")
    args = parser.parse_args()
    if args.render:
        return report(args.out)
    sys.path.insert(0, str(args.llamacpp.resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from longctx.evals.tasks.data import special_prefix
    from longctx.evals.tasks.passkey import PasskeyTrial, grade_passkey
    from longctx.evals.tasks.perplexity import Config, plan_windows
    from longctx.sources import smollm2_checkpoint, smollm2_gguf_path

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    from longctx.files import recorded_path
    from longctx.provenance import RunRecord

    run = RunRecord(["eval/studies/gguf_llamacpp.py", *(recorded_path(a) for a in sys.argv[1:])])
    cells_path = args.out / "cells.jsonl"
    done = journal(cells_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    lengths = [int(n) for n in args.lengths.split(",")]
    plans = plan_windows(tokenizer, Config(lengths=LENGTHS, data=DATA, docs=2, seed=0), lengths)
    prefix = special_prefix(tokenizer)
    computed = 0
    for label in args.models.split(","):
        gguf_path, command = patched_gguf(label, smollm2_gguf_path(), args.work)
        runner = None
        hf = hf_cells(HF_ROUTE.get(label, label), args.fresh_hf)
        for length in (n for n in lengths if label not in HF_ROUTE or n in HF_ROUTE_LENGTHS):
            key = f"ppl|{label}|{length}"
            if key in done:
                continue
            runner = runner or LlamaCpp(gguf_path, max(lengths) + 64, args.threads)
            windows = [{"doc": w.doc, "start": w.start, "tokens": len(w.tokens)} for w in plans[length]]
            t0, nll, n = time.time(), 0.0, 0
            for window in plans[length]:
                s, k = runner.nll_sum(prefix + window.tokens)
                nll, n = nll + s, n + k
            cell = hf.get(length, {})
            record = {
                "key": key,
                "task": "ppl",
                "model": label,
                "length": length,
                "gguf": gguf_path.name,
                "patch_command": command,
                "windows": windows,
                "n_tokens": n,
                "llamacpp_nll": nll / n,
                "llamacpp_ppl": math.exp(nll / n),
                "llamacpp_seconds": round(time.time() - t0, 1),
                "hf_ppl": cell.get("ppl"),
                "hf_windows_equal": cell.get("windows") == windows,
                "hf_source": str((args.fresh_hf or STUDY).relative_to(ROOT) / HF_ROUTE.get(label, label) / "ppl.jsonl")
                if cell
                else None,
                "route": "hf-f32" if label in HF_ROUTE else "gguf",
            }
            append(cells_path, record)
            done[key], computed = record, computed + 1
            print(f"{label} {length}: llama.cpp ppl {record['llamacpp_ppl']:.3f}, HF {record['hf_ppl']}", flush=True)
        study = (
            {
                r.get("seed"): r
                for c in map(json.loads, (STUDY / label / "passkey.jsonl").read_text().splitlines())
                if c.get("mode") == "generate" and c.get("length") == 12288 and c.get("depth") == 0.5
                for r in c.get("samples", [])
            }
            if (STUDY / label / "passkey.jsonl").is_file()
            else {}
        )
        from longctx.evals.tasks.scoring import trial_seeds

        seeds = trial_seeds(0, "passkey", 12288, [0.5], 0 if label in HF_ROUTE else args.passkey, True)
        for _, seed in sorted(seeds.items()):
            key = f"passkey|{label}|12288|{seed}"
            if key in done:
                continue
            runner = runner or LlamaCpp(gguf_path, max(lengths) + 64, args.threads)
            prompt = PasskeyTrial(tokenizer, 12288, random.Random(seed)).prompt(0.5)
            t0 = time.time()
            ids = prompt.context + prompt.queries[0].question
            answer = tokenizer.decode(runner.generate(ids, 12))
            record = {
                "key": key,
                "task": "passkey",
                "model": label,
                "length": len(ids),
                "depth": 0.5,
                "seed": seed,
                "passkey": prompt.queries[0].expected,
                "llamacpp_answer": answer.strip(),
                "llamacpp_correct": grade_passkey(answer, prompt.queries[0].expected),
                "hf_answer": study.get(seed, {}).get("answer"),
                "hf_correct": study.get(seed, {}).get("correct"),
                "llamacpp_seconds": round(time.time() - t0, 1),
            }
            append(cells_path, record)
            done[key], computed = record, computed + 1
            print(f"{label} passkey seed {seed}: {record['llamacpp_answer']!r} ({record['passkey']})", flush=True)
    append(args.out / "runs.jsonl", run_record(args, run, computed))
    return report(args.out)


def run_record(args, run, computed: int) -> dict:
    """This run's record (`provenance.RunRecord`: command with paths relative to the checkout, commit, machine,
    wall time) with llama.cpp's version and threads."""
    import llama_cpp

    return run.finish(llama_cpp_python=llama_cpp.__version__, threads=args.threads, cells_computed=computed)


def answer_cell(text: str) -> str:
    """A generated answer as one Markdown table cell: line breaks shown as ⏎, pipes escaped."""
    return "`" + text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "`"


def report(out: Path) -> int:
    """README.md from cells.jsonl and runs.jsonl; 1 when a 12K/16K difference exceeds the target."""
    cells = list(journal(out / "cells.jsonl").values())
    runs = (
        [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
        if (out / "runs.jsonl").is_file()
        else []
    )
    lines = [
        Path(__file__).read_text().split('"""')[1].strip().split("\n\n")[0],
        "",
        "```bash\nmake test-llamacpp\n```",
        "",
        "| model | length | llama.cpp ppl (GGUF) | longctx HF ppl (fp32) | Δ | same windows | llama.cpp s |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = []
    for c in sorted(
        (c for c in cells if c["task"] == "ppl"), key=lambda c: (list(MODELS).index(c["model"]), c["length"])
    ):
        delta = (c["llamacpp_ppl"] / c["hf_ppl"] - 1) if c.get("hf_ppl") else None
        if delta is not None and c["length"] >= 12288 and abs(delta) > TARGET:
            failed.append(f"{c['model']} {c['length']}")
        lines.append(
            f"| {c['model']} | {c['length'] // 1024}K | {c['llamacpp_ppl']:.3f} | "
            f"{c['hf_ppl']:.3f} | {delta:+.2%} | {'yes' if c['hf_windows_equal'] else 'NO'} | "
            f"{c['llamacpp_seconds']} |"
            if delta is not None
            else f"| {c['model']} | {c['length'] // 1024}K | {c['llamacpp_ppl']:.3f} | — | — | — | "
            f"{c['llamacpp_seconds']} |"
        )
    judged = [c for c in cells if c["task"] == "ppl" and c["length"] >= 12288 and c.get("hf_ppl")]
    verdict = (
        f"MISSED for {', '.join(failed)}"
        if failed
        else f"met in {len(judged)} cells"
        if judged
        else "NOT MEASURED YET (no 12K/16K cell)"
    )
    lines += [
        "",
        f"Agreement target |Δ| ≤ {TARGET:.0%} at 12K and 16K: {verdict}"
        + ". Each model's 2K Δ (llama.cpp and HF on the same patched model, far inside every context) is the "
        "quantization baseline: llama.cpp runs the Q4_1/Q8_0 tensors as shipped, longctx their fp32 "
        "dequantization. The `-hf` row is the route of a fine-tuned model (HF folder -> f32 GGUF): no "
        "quantization on either side, so its Δ is the conversion's own error.",
        "",
        "Passkey at 12K, depth 0.5, greedy generation through llama.cpp (graded by the first integer), beside "
        "longctx's HF generate-mode answer for the same seed:",
        "",
        "| model | seed | passkey | llama.cpp answer | correct | HF answer | HF correct | llama.cpp s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in (c for c in cells if c["task"] == "passkey"):
        hf = ("—", "—") if c["hf_answer"] is None else (answer_cell(c["hf_answer"]), c["hf_correct"])
        lines.append(
            f"| {c['model']} | {c['seed']} | {c['passkey']} | {answer_cell(c['llamacpp_answer'])} | "
            f"{c['llamacpp_correct']} | {hf[0]} | {hf[1]} | {c['llamacpp_seconds']} |"
        )
    lines += ["", "—: the study has no HF generate-mode answer for that model and seed (its passkey cells of those "
              "models were graded in forced mode)."]
    patches = sorted({c["patch_command"] for c in cells if c.get("patch_command")})
    sources = sorted({c["hf_source"] for c in cells if c.get("hf_source")})
    lines += (
        [
            "",
            "GGUFs written by:",
            "",
            "```bash",
            *patches,
            "```",
            "",
            f"HF cells: {', '.join(f'`{s}`' for s in sources)} (their run records beside them). Windows per length:",
            "",
        ]
        + sorted(
            {
                f"- {c['length'] // 1024}K: " + ", ".join(f"{w['doc']}@{w['start']}" for w in c["windows"])
                for c in cells
                if c["task"] == "ppl"
            }
        )
        + ["", "Run records (`runs.jsonl`):", ""]
    )
    lines += [
        f"- {r['started']}: `{r['command']}` at {r['commit'][:10]}{' (dirty)' if r['dirty'] else ''}, llama-cpp-python "
        f"{r['llama_cpp_python']}, {r['machine']['cpu']} × {r['machine']['cores']} cores "
        f"({r.get('threads') or r['machine'].get('threads')} threads), "
        f"{r['wall_seconds']} s, {r['cells_computed']} cells"
        for r in runs
    ]
    unrecorded = len(cells) - sum(r["cells_computed"] for r in runs)
    if unrecorded > 0:
        lines.append(f"- {unrecorded} cells were computed by an earlier run of this script whose run record was not "
                     "kept; each cell keeps its own llama.cpp seconds above")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return 1 if failed or not judged else 0


if __name__ == "__main__":
    raise SystemExit(main())
