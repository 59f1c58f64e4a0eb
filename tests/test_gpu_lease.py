"""`make gpu-lease` (eval/studies/gpu-lease.sh) rehearsed on CPU, so a GPU lease does not find its bugs: the plan
of the two calls (the GGUF split to fit 64 MiB a call, joined and checked by sha256 on the other side, wheels for
the GPU image's Python), and the stages in their dry-run shape, each under its own budget, packed into the few
files a call brings back. The bench's dry run is tests/test_gpu_study.py's; numbers here mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEASE = ROOT / "eval" / "studies" / "gpu-lease.sh"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def probe_wheel(folder: Path, tag: str = "py3-none-any") -> Path:
    """A real (tiny) wheel, so the rehearsal runs the very pip command the GPU machine runs, offline."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lease_probe-0.1-{tag}.whl"
    dist = "lease_probe-0.1.dist-info"
    files = {"lease_probe.py": "VALUE = 42\n",
             f"{dist}/METADATA": "Metadata-Version: 2.1\nName: lease-probe\nVersion: 0.1\n",
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(name, text)
    return path


@pytest.fixture()
def lease_env(tmp_path):
    """A stand-in GGUF (3 MiB of random bytes, split at 1 MiB), two small books, the probe wheel."""
    gguf = tmp_path / "model" / GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(os.urandom(3 << 20))
    books = tmp_path / "books"
    books.mkdir()
    for name in ("a.txt", "b.txt"):
        (books / name).write_text("It was a bright cold day in April. " * 50)
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "HERE_PYTHON": sys.executable,
           "LEASE": str(tmp_path / "lease"), "STASH": str(tmp_path / "stash"), "OUT": str(tmp_path / "out"),
           "RESULTS": str(tmp_path / "run" / "results"), "GGUF": str(gguf), "BOOKS": str(books), "PART_MIB": "1",
           "FAKE_WHEELS": "1", "FAKE_WHEEL_DIR": str(probe_wheel(tmp_path / "wheels").parent)}
    return tmp_path, env


def lease(env: dict, *stages: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LEASE), *stages], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_lease_plan_splits_fits_joins_and_runs_every_stage_into_files_that_come_back(lease_env):
    tmp, env = lease_env
    done = lease(env, "prepare")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp / "lease" / "manifest.json").read_text())
    gguf = Path(env["GGUF"])
    assert manifest["gguf"] == {"name": GGUF_NAME, "bytes": gguf.stat().st_size, "sha256": sha(gguf)}
    assert [p["bytes"] for p in manifest["parts"]] == [1 << 20, 2 << 20]
    assert [w["tags"] for w in manifest["wheels"]] == [["py3", "none", "any"]]
    for call in manifest["calls"]:  # each call's working tree + carried paths within what one call carries
        assert call["bytes"] <= call["limit_bytes"] == 64 << 20, call
    assert ".lease/books" in manifest["calls"][1]["carry"] and ".lease/gguf-2" in manifest["calls"][1]["carry"]

    # call 1 then call 2, the way the GPU machine runs them (the stash outlives the working tree between them)
    done = lease(env, "stash", "tests", "join", "study")
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert sha(tmp / "stash" / GGUF_NAME) == sha(gguf)
    assert (tmp / "stash" / "site" / "lease_probe.py").is_file()  # the carried wheels were installed

    out = sorted(p.name for p in (tmp / "out").iterdir())
    assert out == ["bench-dry.tar.gz", "lease.log", "smollm2-extension-dry.tar.gz"]  # ≤ 8 files come back
    assert all((tmp / "out" / name).stat().st_size < 16 << 20 for name in out)
    with tarfile.open(tmp / "out" / "smollm2-extension-dry.tar.gz") as archive:
        names = set(archive.getnames())
    for name in ("report.md", "report.html", "summary.json", "lease-stages.jsonl", "ppl_vs_length.png"):
        assert f"smollm2-extension-dry/{name}" in names, name

    # unpacked here as docs/results would be: each stage recorded with its budget, commit and machine
    results = tmp / "unpacked"
    results.mkdir()
    assert lease({**env, "RESULTS": str(results)}, "unpack", str(tmp / "out")).returncode == 0
    stages = [
        json.loads(line) for line in (results / "smollm2-extension-dry" / "lease-stages.jsonl").read_text().splitlines()
    ]
    order = [s["stage"] for s in stages]  # the LoRA trains beside ppl and passkey: its line lands when it ends
    assert sorted(order) == sorted(["study-patch", "study-lora", "study-ppl", "study-passkey", "study-tuned-ppl",
                                    "study-tuned-passkey", "study-report"])
    assert order[0] == "study-patch" and order[-3:] == ["study-tuned-ppl", "study-tuned-passkey", "study-report"]
    assert all(s["exit_status"] == 0 and s["budget_seconds"] > 0 and s["commit"] and s["machine"]["cores"]
               for s in stages), stages
    summary = json.loads((results / "smollm2-extension-dry" / "summary.json").read_text())
    assert {m["label"] for m in summary["models"]} == {"original", "yarn-x8", "base-3.1e7", "yarn-x8-pose64k-lora"}
    for model in summary["models"]:  # every model has perplexity and passkey at every length past 128
        rows = {row["length"]: row for row in model["by_length"]}
        assert all(rows[n].get("ppl") is not None for n in (128, 256, 512, 1024)), model["label"]
        assert all(rows[n].get("passkey") is not None for n in (256, 512, 1024)), model["label"]
    table = (results / "smollm2-extension-dry" / "lease.md").read_text()  # the stage table, from the records
    assert "| study-lora |" in table and "| study-report |" in table and "Wall time of these stages" in table
    (tests,) = [json.loads(line) for line in (results / "bench-dry" / "lease-stages.jsonl").read_text().splitlines()]
    assert tests["stage"] == "tests" and tests["exit_status"] == 0
    assert "skipped" in (results / "bench-dry" / "test-gpu.log").read_text()  # no CUDA here: every GPU test skips


def test_a_stage_over_its_budget_is_cut_recorded_and_the_next_stage_still_runs(lease_env):
    tmp, env = lease_env
    done = lease({**env, "BUDGET_TESTS": "1"}, "tests", "tests")  # pytest cannot even start in a second
    assert done.returncode == 0, done.stderr[-2000:]
    records = [
        json.loads(line)
        for line in (tmp / "run" / "results" / "bench-dry" / "lease-stages.jsonl").read_text().splitlines()
    ]
    assert [r["cut_at_budget"] for r in records] == [True, True] and all(r["exit_status"] == 124 for r in records)
    assert "cut at its budget" in (tmp / "out" / "lease.log").read_text()


def test_a_damaged_part_a_cold_machine_and_a_wheel_for_another_python_are_refused(lease_env):
    tmp, env = lease_env
    assert lease(env, "prepare").returncode == 0
    cold = lease(env, "join")  # no stash: call 2 on a fresh machine
    assert cold.returncode == 2 and "went cold" in cold.stderr
    part = tmp / "lease" / "gguf-1" / f"{GGUF_NAME}.part"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    damaged = lease(env, "stash")
    assert damaged.returncode == 2 and "damaged" in damaged.stderr
    (tmp / "wheels" / "lease_probe-0.1-py3-none-any.whl").unlink()
    probe_wheel(tmp / "wheels", tag="cp311-cp311-manylinux_2_17_x86_64")
    wrong = lease(env, "prepare")
    assert wrong.returncode == 2 and "Python 3.12" in wrong.stdout + wrong.stderr
    assert (tmp / "lease" / "manifest.json").is_file()  # the earlier, good plan is still there
