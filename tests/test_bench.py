"""The benchmark harness computes what it claims: growth fits, memory peaks, sparse checkpoints, label shifts.

Nothing here times anything: timings belong in `make bench`, not in a test that could flake.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_dtype, bench_patch, bench_ppl, bench_sweep, common  # noqa: E402
from bench import run as bench_run  # noqa: E402


def test_growth_exponent_recovers_a_power_law():
    sizes = [1024, 2048, 4096, 8192]
    assert common.growth_exponent(sizes, [3e-4 * n**1.1 for n in sizes]) == pytest.approx(1.1)
    assert common.growth_exponent(sizes, [0.05] * 4) == pytest.approx(0.0, abs=1e-12)
    assert common.growth_exponent([2048], [1.0]) is None  # one size: nothing to fit
    assert common.growth_exponent([2048, 2048], [1.0, 2.0]) is None


def test_peak_memory_sees_an_allocation_inside_the_block():
    with common.PeakMemory("cpu") as memory:
        block = bytearray(200_000_000)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        del block
    assert memory.peak_bytes >= 150_000_000
    if memory.how.startswith("VmHWM"):  # the reset works here: an empty block measures (almost) nothing
        with common.PeakMemory("cpu") as quiet:
            pass
        assert quiet.peak_bytes < 50_000_000


def test_run_child_returns_the_result_or_the_error():
    result = common.run_child("bench.bench_ppl:naive_extra_bytes", {"length": 8, "vocab": 10, "dtype_bytes": 4})
    assert result == 8 * 10 * 4 * 2
    failed = common.run_child("bench.bench_ppl:naive_extra_bytes", {"length": 8})
    assert "TypeError" in failed["error"]


def test_naive_logits_need_is_computed_from_length_and_vocab():
    # fp32 SmolLM2 at 8K: logits + log-softmax, 1.6 GB each
    assert bench_ppl.naive_extra_bytes(8192, 49152, 4) == 2 * 8192 * 49152 * 4
    # bf16 Llama-3-8B at 128K: bf16 logits (34 GB) + fp32 copy (67 GB) + fp32 log-softmax (67 GB)
    need = bench_ppl.naive_extra_bytes(131072, 128256, 2)
    assert need == 131072 * 128256 * (2 + 4 + 4)
    assert need / 1e9 > 80


def test_sparse_checkpoint_uses_no_disk_and_patches_by_hard_links(tmp_path):
    files = bench_patch.make_sparse_checkpoint(tmp_path / "src", 3 * 10**9, shard_bytes=2 * 10**9)
    assert [f.stat().st_size for f in files] == [2 * 10**9, 10**9]
    assert bench_patch.allocated_bytes(tmp_path / "src") < 10**6
    row = bench_patch.bench_size(tmp_path, 0.05, copy=True)
    assert row["patch"]["link_kinds"] == ["hardlink"]
    assert row["patch"]["rope_theta_after"] == 1e6
    assert row["copy"]["disk_written_bytes"] >= 0.05 * 10**9 * 0.9  # a copy writes real blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # bench_size removed what it made


def test_patch_bench_end_to_end_renders_its_section(tmp_path):
    opts = SimpleNamespace(sizes=[0.01, 0.04], copy_max_gb=0.02, scratch=str(tmp_path))
    section = bench_patch.run(opts)
    copied = [r for r in section["rows"] if "copy" in r]
    assert {r["gb"] for r in copied} == {0.005, 0.01, 0.02}
    assert "copy_extrapolated_seconds" in next(r for r in section["rows"] if r["gb"] == 0.04)
    assert section["growth_exponent"]["patch"] is not None
    section.update(environment=common.environment("cpu"), bench_seconds=1.0)
    text = bench_run.render({"patch": section})
    assert "*extrap.*" in text and "hardlink" in text and "Target: patch under" in text
    assert "load average" in text and "torch" in text


def test_sweep_comparison_reports_every_disagreement():
    fast = {"grades": {"512|0.1|7": True, "512|0.5|7": True}, "answers": {"512|0.1|7": "1", "512|0.5|7": "2"},
            "seconds": 1.0, "seconds_by_length": {"512": 1.0}}
    naive = {"grades": {"512|0.1|7": True, "512|0.5|7": False}, "answers": {"512|0.1|7": "1", "512|0.5|7": "3"},
             "seconds": 4.0, "seconds_by_length": {"512": 4.0}}
    comparison = bench_sweep.compare(fast, naive)
    assert comparison["speedup"] == 4.0 and not comparison["identical"]
    assert [d["cell"] for d in comparison["disagreements"]] == ["512|0.5|7"]
    assert bench_sweep.targets({"passkey": {"comparison": comparison}})["met"] is False


def test_ppl_variants_agree_on_a_tiny_random_llama():
    """The GPU code path (random shape) on CPU: both variants give the same perplexity."""
    longctx = bench_ppl.measure("longctx", "tiny", 96, "cpu", chunk_tokens=32)
    naive = bench_ppl.measure("naive", "tiny", 96, "cpu")
    assert math.isfinite(longctx["ppl"])
    assert abs(longctx["ppl"] - naive["ppl"]) / naive["ppl"] < 1e-4


def test_trainer_rows_are_longctx_rows_with_labels_shifted(tiny_llama_dir):
    from bench.bench_finetune import hf_rows
    from longctx.corpus import load_documents
    from longctx.modeling import load_tokenizer
    from longctx.train.data import PackedRows

    tokenizer = load_tokenizer(tiny_llama_dir)
    args = SimpleNamespace(data=SimpleNamespace(data="pydoc", text_field="text"), train=SimpleNamespace(seed=3))
    rows = hf_rows(args, SimpleNamespace(tokenizer=tokenizer, seq_len=64), 2)
    ours = list(itertools.islice(PackedRows(load_documents("pydoc"), tokenizer, 64, seed=3), 2))
    for hf, mine in zip(rows, ours, strict=True):
        assert hf["input_ids"].equal(mine["input_ids"]) and hf["position_ids"].equal(mine["position_ids"])
        assert hf["labels"][0] == -100 and hf["labels"][1:].equal(mine["labels"][:-1])


def test_sizes_flag_parses_ints_and_fractions():
    args = bench_run.parse_args(["--only", "patch", "--sizes", "0.5,2,8", "--device", "cpu", "--out", "x"])
    assert args.sizes == [0.5, 2, 8] and args.only == ["patch"]


def test_finetune_rate_comes_from_the_median_measured_step():
    from bench.bench_finetune import summarize_steps

    summary = summarize_steps([9.0, 2.0, 8.0, 2.5], tokens_per_step=500, warmup=1)  # step 0 is the warm-up
    assert summary["measured_steps"] == 3 and summary["seconds_per_step"] == 2.5
    assert summary["tokens_per_s"] == 200.0 and summary["tokens_per_s_mean"] == pytest.approx(1500 / 12.5)


def test_finetune_runs_of_one_implementation_pool_their_measured_steps():
    """ABBA runs: the rate is the median over both runs' measured steps (warm-up of each run dropped)."""
    from bench.bench_finetune import pooled

    first = {"step_seconds": [9.0, 1.0, 1.2], "peak_bytes": 5, "losses": [3.0], "tokens_per_s": 1}
    second = {"step_seconds": [7.0, 2.0, 1.1], "peak_bytes": 7, "losses": [3.0], "tokens_per_s": 2}
    result = pooled([first, second], tokens_per_step=100, warmup=1)
    assert result["measured_steps"] == 4 and result["seconds_per_step"] == pytest.approx(1.15)
    assert result["tokens_per_s"] == pytest.approx(100 / 1.15) and result["peak_bytes"] == 7
    assert result["step_seconds"] == [[9.0, 1.0, 1.2], [7.0, 2.0, 1.1]] and result["tokens_per_s_by_run"] == [1, 2]
    assert pooled([first, {"error": "child exited 1"}], 100, 1) == {"error": "child exited 1"}
    assert pooled([first], 100, 1) is first


def test_prefix_sharing_bound_counts_the_tokens_a_shared_prefix_skips():
    assert bench_sweep.prefix_sharing_bound([0.9, 0.1, 0.5]) == pytest.approx(3 / 2.4)
    assert bench_sweep.prefix_sharing_bound([0.5]) == 1.0
    many = [i / 100 for i in range(101)]
    assert 1.9 < bench_sweep.prefix_sharing_bound(many) < 2.0


def test_ruler_bench_comparison_reports_every_disagreement():
    from bench import bench_ruler

    fast = {"grades": {"vt|1024|-|0": 5, "vt|1024|-|1": 2}, "texts": {"vt|1024|-|0": "A", "vt|1024|-|1": "B"},
            "seconds": 1.0}
    naive = {"grades": {"vt|1024|-|0": 5, "vt|1024|-|1": 3}, "texts": {"vt|1024|-|0": "A", "vt|1024|-|1": "C"},
             "seconds": 2.5}
    comparison = bench_ruler.compare(fast, naive)
    assert comparison["speedup"] == 2.5 and not comparison["identical"] and comparison["found_generate"] == 8
    assert [d["sample"] for d in comparison["disagreements"]] == ["vt|1024|-|1"]
    assert bench_ruler.targets({"vt": {"comparison": comparison}})["met"] is False


def test_ruler_bench_names_its_books_relative_to_the_checkout(monkeypatch):
    """The haystack folder lands in results.json under docs/: it is named as the studies name it, not by an
    absolute path of the machine that ran the bench."""
    from bench import bench_ruler

    monkeypatch.setattr(bench_ruler, "BOOKS", "no-such-books-folder")
    assert set(bench_ruler.plan("cpu", None)) == {"ruler"}
    monkeypatch.setattr(bench_ruler, "BOOKS", "bench")  # any folder of the checkout
    assert bench_ruler.plan("cpu", None)["kamradt"][1]["haystack_dir"] == "bench"


def test_ruler_bench_paths_decode_the_same_samples_with_the_same_grades(tiny_llama_dir, tmp_path):
    """Both variants of `make bench`'s ruler section on the tiny model: same samples, same grades, a rendered table."""
    from bench import bench_ruler

    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(" ".join(f"Sentence number {i} ends here. Another one follows!" for i in range(300)))
    section = {"device": "cpu", "tasks": {}, "skipped": []}
    for task, lengths, settings in [("ruler", [512], {"tasks": "niah_single_1", "samples": 2}),
                                    ("kamradt", [320, 384], {"depths": "0,0.5,1", "haystack_dir": str(books),
                                                             "buffer": 8})]:
        paths = {variant: bench_ruler.measure(variant, task, lengths, "cpu", settings, model=str(tiny_llama_dir))
                 for variant in ("longctx", "generate")}
        comparison = bench_ruler.compare(paths["longctx"], paths["generate"])
        assert comparison["identical"] and sorted(paths["longctx"]["grades"]) == sorted(paths["generate"]["grades"])
        assert comparison["samples"] == (2 if task == "ruler" else 6)
        section["tasks"][task] = {"lengths": lengths, "settings": settings, **paths, "comparison": comparison}
    section["targets"] = bench_ruler.targets(section["tasks"])
    section.update(environment=common.environment("cpu"), bench_seconds=1.0)
    text = bench_run.render({"ruler": section})
    assert "samples/s" in text and "Target: ≥ 1.8×" in text and "identical" in text


def _trial(correct: bool, strict: bool, answer: str, passkey: str = "12345") -> dict:
    return {"passkey": passkey, "correct": correct, "correct_strict": strict, "answer": answer}


def test_dtype_grade_comparison_flags_every_difference():
    """A content or a strict grade that differs, or a trial one dtype lacks, is a difference; a different answer
    text with the same grades is listed but is not one."""
    fp32 = {"2048|0.25|7": _trial(True, True, "12345"), "512|0.75|8": _trial(True, True, "12345"),
            "4096|0.25|9": _trial(False, False, "1234"), "4096|0.75|3": _trial(True, False, "\n12345"),
            "3072|0.25|5": _trial(True, True, "12345")}
    bf16 = {"2048|0.25|7": _trial(True, True, "12345"), "512|0.75|8": _trial(True, False, "\n12345"),
            "4096|0.25|9": _trial(False, False, "1235"), "4096|0.75|3": _trial(False, False, "54321")}
    c = bench_dtype.compare_grades(fp32, bf16)
    assert c["trials"] == 5 and not c["identical"]
    assert [r["trial"] for r in c["rows"]] == ["512|0.75|8", "2048|0.25|7", "3072|0.25|5", "4096|0.25|9",
                                               "4096|0.75|3"]  # numeric order, not string order
    assert [d["trial"] for d in c["differences"]] == ["512|0.75|8", "3072|0.25|5", "4096|0.75|3"]
    assert c["differences"][1]["bf16"] is None and c["answers_differ"] == ["512|0.75|8", "4096|0.25|9",
                                                                           "4096|0.75|3"]
    assert c["correct"] == {"fp32": 4, "bf16": 2} and c["correct_strict"] == {"fp32": 3, "bf16": 1}
    same = bench_dtype.compare_grades(fp32, {k: dict(v, answer="other") for k, v in fp32.items()})
    assert same["identical"] and not same["differences"] and len(same["answers_differ"]) == 5
    assert not bench_dtype.compare_grades({}, {})["identical"]  # nothing checked is not "the same"

    ppl = bench_dtype.compare_ppl(
        [{"length": 2048, "doc": "a", "start": 0, "scored_tokens": 2047, "tokens_per_s": 100.0, "ppl": 20.0}],
        [{"length": 2048, "doc": "a", "start": 0, "scored_tokens": 2047, "tokens_per_s": 150.0, "ppl": 20.01}])
    assert ppl[0]["speed_ratio"] == 1.5 and ppl[0]["ppl_rel_diff"] == pytest.approx(5e-4) and ppl[0]["same_window"]
    line = bench_dtype.verdict(ppl, c)["line"]
    assert line.startswith("bf16 grades the checked sample the same as fp32: no (5 passkey trials")
    assert "speed ×1.50" in line and "ppl Δ +5.00e-04" in line
    assert "yes" in bench_dtype.verdict(ppl, same)["line"]
    assert "not measured" in bench_dtype.verdict([], None)["line"]


def test_dtype_bench_reads_the_cpu_flags_and_names_its_data_relative_to_the_checkout(monkeypatch):
    x86 = bench_dtype.cpu_bf16_support("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert x86["native_bf16"] and x86["flags"]["avx512_bf16"] and not x86["flags"]["amx_bf16"]
    assert bench_dtype.cpu_bf16_support("Features\t: fp asimd bf16\n")["native_bf16"]  # ARM
    assert bench_dtype.cpu_bf16_support("flags\t\t: fpu sse2 avx2\n")["native_bf16"] is False
    assert bench_dtype.cpu_bf16_support("")["flags"] is None
    monkeypatch.setattr(bench_dtype, "BOOKS", "no-such-books-folder")
    assert bench_dtype.ppl_data() == "pydoc"
    monkeypatch.setattr(bench_dtype, "BOOKS", "bench")  # any folder of the checkout
    assert bench_dtype.ppl_data() == "bench"
    assert bench_dtype.plan(None)["passkey"] == {"lengths": [2048, 3072, 4096], "depths": [0.25, 0.75], "trials": 1}
    assert bench_dtype.plan([1024, 2048])["passkey"]["trials"] == 2  # at least 6 trials in the sample


def test_dtype_bench_measures_both_dtypes_on_the_tiny_model(tiny_llama_dir, monkeypatch):
    """`make bench`'s dtype section end to end on the tiny model: both dtypes' numbers, the comparison, the page."""
    assert "dtype" in bench_run.ORDER and bench_run.parse_args(["--only", "dtype", "--out", "x"]).only == ["dtype"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two child processes on a busy machine: no oversubscribed threads
    opts = SimpleNamespace(device="cpu", sizes=[160, 192], timeout=300, model=str(tiny_llama_dir), data="pydoc",
                           repeats=2)
    section = bench_dtype.run(opts)
    for dtype, torch_dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        variant = section["variants"][dtype]
        assert variant["torch_dtype"] == torch_dtype, variant
        assert [r["length"] for r in variant["ppl"]] == [160, 192]
        assert all(math.isfinite(r["ppl"]) and len(r["seconds_all"]) == 2 and r["tokens_per_s"] > 0
                   for r in variant["ppl"])
        assert len(variant["passkey"]["trials"]) == 8  # 2 lengths x 2 depths x 2 trials
    ppl = section["comparison"]["ppl"]
    assert [r["length"] for r in ppl] == [160, 192]
    assert all(r["same_window"] and abs(r["ppl_rel_diff"]) < 1e-2 and r["speed_ratio"] > 0 for r in ppl)
    grades = section["comparison"]["grades"]
    assert grades["trials"] == 8 and isinstance(grades["identical"], bool)
    verdict = section["verdict"]
    assert verdict["line"].startswith("bf16 grades the checked sample the same as fp32: "
                                      + ("yes" if grades["identical"] else "no"))
    assert verdict["speed_ratio"] == ppl[1]["speed_ratio"] and section["data"] == "pydoc"
    assert set(section["cpu"]) >= {"flags", "native_bf16", "torch_capability"}
    section.update(environment=common.environment("cpu"), bench_seconds=1.0)
    text = bench_run.render({"dtype": section})
    assert "fp32 s/forward" in text and "**Verdict:** bf16 grades the checked sample" in text
    assert "CPU bf16 support" in text and "can be below 1" in text and "commit" in text
