"""Works from a wheel: build one, install it into a fresh venv and run the CLI from outside the repository; and
no tracked file exists twice (the package's YAMLs are the only copies, named by the same paths in a checkout).

The fresh venv gets its dependencies without a network: a .pth file puts this interpreter's site-packages
after its own (where an editable install's finder is not activated: only site dirs run .pth files), and the
test checks that the `longctx` it imports is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ("tests/",)  # test fixtures may repeat a file on purpose


def test_no_tracked_file_exists_twice():
    """`git ls-files | xargs sha256sum | sort | uniq -d -w64` finds nothing outside test fixtures."""
    import hashlib

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode:
        pytest.skip("not a git checkout")
    seen: dict[str, str] = {}
    for name in listed.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or name.startswith(FIXTURES) or not path.is_file() or path.is_symlink():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest not in seen, f"{name} repeats {seen[digest]} byte for byte: keep one copy"
        seen[digest] = name


def test_the_demo_and_the_recipe_docs_name_shipped_files():
    from longctx import demo

    for name in (demo.DEMO_SUITE, demo.FINETUNE_CONFIG):
        assert demo.shipped(name).is_file() and demo.shipped(name).is_relative_to(ROOT / "longctx")
    for line in (ROOT / "recipes" / "finetune.py").read_text().splitlines():
        if "--config longctx/train/configs/" in line:
            name = line.split("--config longctx/train/configs/")[1].split()[0]
            assert (ROOT / "longctx" / "train" / "configs" / name).is_file(), name


def run(*argv, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, dict]:
    """(bin folder of a fresh venv holding only the wheel's longctx, its environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in place would leave build/ and egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "longctx", src / "longctx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        tmp / "dist",
        src,
        cwd=tmp,
        env=env,
    )
    (wheel,) = (tmp / "dist").glob("longctx-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp, env=env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # pip runs inside the new interpreter, which sees nothing else yet: the wheel is the only longctx it installs
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q", "--no-deps", "--no-index", wheel,
        cwd=tmp, env=env)
    site = Path(run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp, env=env).stdout.strip())
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (site / "zz_test_dependencies.pth").write_text("".join(p + "\n" for p in ours))
    return bin_dir, env


def test_a_wheel_installs_and_runs_help_patch_and_an_eval(wheel_venv, tiny_llama_dir, tmp_path):
    bin_dir, env = wheel_venv
    work = tmp_path / "elsewhere"  # outside the repository: nothing can be imported from the checkout
    work.mkdir()
    where = json.loads(run(bin_dir / "python", "-c", "import json, longctx, longctx.demo as d; print(json.dumps("
                           "[longctx.__file__, str(d.shipped(d.DEMO_SUITE)), str(d.shipped(d.FINETUNE_CONFIG))]))",
                           cwd=work, env=env).stdout)
    venv = bin_dir.parent.resolve()
    for path in map(Path, where):
        assert path.resolve().is_relative_to(venv) and path.is_file(), where
    assert "patch" in run(bin_dir / "longctx", "--help", cwd=work, env=env).stdout
    assert "--config" in run(bin_dir / "python", "-m", "longctx.train.finetune", "--help", cwd=work, env=env).stdout

    run(
        bin_dir / "longctx",
        "patch",
        "--model",
        tiny_llama_dir,
        "--method",
        "yarn",
        "--factor",
        "2",
        "--out",
        "patched",
        cwd=work,
        env=env,
    )
    assert json.loads((work / "patched" / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"
    assert "yarn" in (work / "patched" / "README.md").read_text()  # the card template is shipped too
    run(bin_dir / "longctx", "eval", "ppl", "--model", "patched", "--lengths", "64", "--docs", "1", "--device", "cpu",
        "--out", "results", cwd=work, env=env)
    cells = [json.loads(line) for line in (work / "results" / "patched" / "ppl.jsonl").read_text().splitlines()]
    assert len(cells) == 1 and cells[0]["length"] == 64
    run(bin_dir / "longctx", "report", "results", cwd=work, env=env)
    assert "<h2>Summary</h2><table>" in (work / "results" / "report.html").read_text()  # its template is shipped
