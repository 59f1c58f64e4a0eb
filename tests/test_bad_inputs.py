"""Hostile and careless input: each bad input or fault ends with exit code 2 and one line that
names the problem; the source, and everything around it, stays byte-identical; nothing partial is left.

Every case gets its own folder (a private copy of the tiny model in `src/` when it needs one) and runs
with that folder as its working directory; the whole folder is hashed before and after, so a changed
source, a stray temporary folder or a half-written output all fail the case. The cases run through the
real CLI (`longctx.cli.main`) and the real recipe (`recipes/finetune.py`'s `cli`) inside one subprocess
(tests/cli_driver.py: torch is imported once); the most dangerous ones also run as separate processes
through the `longctx` console script and `python recipes/finetune.py`, and the read-only and disk-full
cases also on a real read-only bind mount and a real full tmpfs where the machine allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
LONGCTX = Path(sys.executable).parent / "longctx"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1",
       "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def tree_digest(path: Path) -> dict[str, str]:
    """{relative path: hash of content and mode} of everything under path (folders too)."""
    out = {}
    for item in sorted(Path(path).rglob("*")):
        rel = str(item.relative_to(path))
        if item.is_symlink():
            out[rel] = "-> " + os.readlink(item)
        elif not item.is_dir() and not item.is_file():  # a FIFO or socket: reading it would block
            out[rel] = f"special {item.lstat().st_mode:o}"
        elif item.is_dir():
            out[rel] = f"dir {item.stat().st_mode & 0o7777:o}"
        else:
            out[rel] = hashlib.sha256(item.read_bytes()).hexdigest()[:16] + f" {item.stat().st_mode & 0o7777:o}"
    return out


def error_lines(stderr: str) -> list[str]:
    """What the user reads on stderr: library progress bars and warnings are not longctx's to silence."""
    shown = [line.split("\r")[-1] for line in stderr.split("\n")]  # a terminal shows what follows the last \r
    return [line for line in shown if line.strip() and not re.search(r"\d%\||it/s\]|s/it\]", line)
            and "Warning" not in line and not line.startswith("  warnings.warn")]


def assert_one_line_error(code, stderr: str, expect: str, tool: str = "longctx") -> None:
    """Exit 2; one line `longctx: error: …` (`longctx patch: error: …` from argparse, `finetune: error: …`)."""
    lines = error_lines(stderr)
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and re.match(rf"{tool}( [a-z]+)*: error: ", lines[0]), stderr[-2000:]
    assert expect in lines[0], (expect, lines[0])


# ------------------------------------------------------------------------------------------ case set-up
def src(d: Path, tiny: Path) -> None:
    shutil.copytree(tiny, d / "src")


def edit_config(**changes):
    def prepare(d: Path, tiny: Path) -> None:
        src(d, tiny)
        config = json.loads((d / "src" / "config.json").read_text())
        for key, value in changes.items():
            if value is DELETE:
                config.pop(key, None)
                (config.get("rope_parameters") or {}).pop(key, None)
            else:
                config[key] = value
        (d / "src" / "config.json").write_text(json.dumps(config))
    return prepare


DELETE = object()


def write(relpath: str, data: bytes | str, *, with_src: bool = True):
    def prepare(d: Path, tiny: Path) -> None:
        if with_src:
            src(d, tiny)
        path = d / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return prepare


def both(*steps):
    def prepare(d: Path, tiny: Path) -> None:
        for step in steps:
            step(d, tiny)
    return prepare


def mkdir(relpath: str):
    return lambda d, tiny: (d / relpath).mkdir(parents=True, exist_ok=True)


def truncate_weights(d: Path, tiny: Path) -> None:
    src(d, tiny)
    path = d / "src" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def garble_weights_header(d: Path, tiny: Path) -> None:
    src(d, tiny)
    path = d / "src" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at!"
    path.write_bytes(bytes(data))


def pickle_only(d: Path, tiny: Path) -> None:
    src(d, tiny)
    (d / "src" / "model.safetensors").rename(d / "src" / "pytorch_model.bin")


def no_weights(d: Path, tiny: Path) -> None:
    src(d, tiny)
    (d / "src" / "model.safetensors").unlink()


def gpt2(d: Path, tiny: Path) -> None:
    src(d, tiny)
    config = json.loads((d / "src" / "config.json").read_text())
    for key in ("rope_parameters", "rope_theta", "rope_scaling"):
        config.pop(key, None)
    config["model_type"] = "gpt2"
    (d / "src" / "config.json").write_text(json.dumps(config))


def earlier_patch_output(d: Path, tiny: Path) -> None:
    src(d, tiny)
    (d / "out").mkdir()
    (d / "out" / "config.json").write_text("{}")
    (d / "out" / "longctx_patch.json").write_text("{}")


def foreign_folder(d: Path, tiny: Path) -> None:
    src(d, tiny)
    (d / "out").mkdir()
    (d / "out" / "thesis.tex").write_text("years of work")


def full_finetune_output(d: Path, tiny: Path) -> None:
    """A finished full fine-tune: a model directory that is also a finetune output (finetune_args.json)."""
    src(d, tiny)
    (d / "src" / "finetune_args.json").write_text("{}")


class Evil:
    """A pickle that runs code when loaded: it would create PWNED in the case folder."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


DOCS = "".join(
    json.dumps({"text": f"The grass is green. The sky is blue. Here we go {i}. " * 6}) + "\n" for i in range(8)
)


def docs(d: Path, tiny: Path) -> None:
    (d / "docs.jsonl").write_text(DOCS)


def adapter(weights: str | None, config: str = '{"base_model_name_or_path": "src", "peft_type": "LORA"}'):
    def prepare(d: Path, tiny: Path) -> None:
        src(d, tiny)
        (d / "adapter").mkdir()
        (d / "adapter" / "adapter_config.json").write_text(config)
        if weights == "pickle":
            (d / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps({"lora_A": [0.0]}))
    return prepare


def patch(*flags, model="src", out="out"):
    return ["patch", "--model", model, *flags, "--out", out]


def ppl(*flags, model="src"):
    return ["eval", "ppl", "--model", model, "--lengths", "64", "--out", "results", *flags]


FT = ["--model", "src", "--data", "docs.jsonl", "--seq-len", "32", "--max-steps", "1", "--out", "run"]


def ft(*flags):
    """Finetune flags with the defaults above; a later flag overrides an earlier one."""
    return [*FT, *flags]


# (id, tool, prepare, argv, expected words of the one error line, driver fault)
CASES = [
    # -- patch: flags
    ("patch: --base 0", "longctx", src, patch("--base", "0"), "--base must be a finite number > 1", None),
    ("patch: --base -5", "longctx", src, patch("--base", "-5"), "--base must be", None),
    ("patch: --base nan", "longctx", src, patch("--base", "nan"), "--base must be", None),
    ("patch: --base inf", "longctx", src, patch("--base", "inf"), "--base must be", None),
    ("patch: --base big", "longctx", src, patch("--base", "big"), "invalid float value", None),
    ("patch: --base without value", "longctx", src, patch("--base"), "expected one argument", None),
    ("patch: unknown flag", "longctx", src, patch("--base", "1e6", "--bsae", "2"), "unrecognized arguments", None),
    (
        "patch: --factor 0.5",
        "longctx",
        src,
        patch("--method", "linear", "--factor", "0.5"),
        "--factor must be ≥ 1",
        None,
    ),
    ("patch: --factor 1e300", "longctx", src, patch("--method", "linear", "--factor", "1e300"), "absurdly large", None),
    (
        "patch: --factor 1e6 too long",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "1e6"),
        "above 16,777,216",
        None,
    ),
    (
        "patch: --target-length 1e13",
        "longctx",
        src,
        patch("--method", "yarn", "--target-length", str(10**13)),
        "--target-length 10000000000000 is above",
        None,
    ),
    (
        "patch: --original-length 0",
        "longctx",
        src,
        patch("--base", "1e6", "--original-length", "0"),
        "--original-length must be a positive",
        None,
    ),
    ("patch: unknown method", "longctx", src, patch("--method", "rope-magic", "--factor", "2"), "invalid choice", None),
    (
        "patch: factor with base method",
        "longctx",
        src,
        patch("--method", "base", "--base", "1e6", "--factor", "2"),
        "no meaning",
        None,
    ),
    (
        "patch: yarn flag on linear",
        "longctx",
        src,
        patch("--method", "linear", "--factor", "2", "--beta-fast", "16"),
        "only apply to --method yarn",
        None,
    ),
    (
        "patch: --beta-fast nan",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "2", "--beta-fast", "nan"),
        "--beta-fast must be",
        None,
    ),
    (
        "patch: beta-fast below beta-slow",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "2", "--beta-fast", "1", "--beta-slow", "2"),
        "greater than --beta-slow",
        None,
    ),
    (
        "patch: --high-freq-factor inf",
        "longctx",
        src,
        patch("--method", "llama3", "--factor", "2", "--high-freq-factor", "inf"),
        "--high-freq-factor must be",
        None,
    ),
    (
        "patch: --attention-factor 0",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "2", "--attention-factor", "0"),
        "--attention-factor must be",
        None,
    ),
    (
        "patch: factor and length disagree",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "2", "--target-length", "4096"),
        "give one of them",
        None,
    ),
    (
        "patch: scaling without factor",
        "longctx",
        src,
        patch("--method", "yarn"),
        "needs --factor or --target-length",
        None,
    ),
    (
        "patch: target below trained",
        "longctx",
        src,
        patch("--method", "linear", "--target-length", "128"),
        "below the trained length",
        None,
    ),
    ("patch: nothing to patch", "longctx", src, patch(), "nothing to patch", None),
    # -- patch: the source
    (
        "patch: missing model path",
        "longctx",
        None,
        patch("--base", "1e6", model="./no/such/dir"),
        "does not exist",
        None,
    ),
    (
        "patch: model is a text file",
        "longctx",
        write("notes.txt", "hello", with_src=False),
        patch("--base", "1e6", model="notes.txt"),
        "not a GGUF file",
        None,
    ),
    (
        "patch: garbage .gguf",
        "longctx",
        write("model.gguf", os.urandom(4096), with_src=False),
        patch("--base", "1e6", model="model.gguf"),
        "not a GGUF file",
        None,
    ),
    (
        "patch: truncated .gguf",
        "longctx",
        write("model.gguf", b"GGUF\x03\x00\x00\x00" + os.urandom(64), with_src=False),
        patch("--base", "1e6", model="model.gguf"),
        "could not read model.gguf as a GGUF model",
        None,
    ),
    (
        "patch: Hub id offline",
        "longctx",
        None,
        patch("--base", "1e6", model="longctx-tests/no-such-model"),
        "HF_HUB_OFFLINE",
        None,
    ),
    ("patch: non-rope model", "longctx", gpt2, patch("--base", "1e6"), "no rotary position embeddings", None),
    (
        "patch: config not JSON",
        "longctx",
        write("src/config.json", "{not json"),
        patch("--base", "1e6"),
        "is not valid JSON",
        None,
    ),
    (
        "patch: config is a list",
        "longctx",
        write("src/config.json", "[1, 2]"),
        patch("--base", "1e6"),
        "does not hold a JSON object",
        None,
    ),
    (
        "patch: config not UTF-8",
        "longctx",
        write("src/config.json", b"\xff\xfe{}"),
        patch("--base", "1e6"),
        "is not valid JSON",
        None,
    ),
    (
        "patch: config without model_type",
        "longctx",
        edit_config(model_type=DELETE),
        patch("--base", "1e6"),
        "no model_type",
        None,
    ),
    (
        "patch: config without max_position_embeddings",
        "longctx",
        edit_config(max_position_embeddings=DELETE),
        patch("--base", "1e6"),
        "max_position_embeddings = None",
        None,
    ),
    (
        "patch: max_position_embeddings 'abc'",
        "longctx",
        edit_config(max_position_embeddings="abc"),
        patch("--base", "1e6"),
        "max_position_embeddings = 'abc'",
        None,
    ),
    (
        "patch: rope_theta 'abc'",
        "longctx",
        edit_config(rope_theta="abc", rope_parameters=DELETE),
        patch("--method", "linear", "--factor", "2"),
        "rope_theta = 'abc'",
        None,
    ),
    (
        "patch: already scaled",
        "longctx",
        edit_config(rope_scaling={"rope_type": "linear", "factor": 2.0}),
        patch("--method", "yarn", "--factor", "2"),
        "already uses rope_type",
        None,
    ),
    (
        "patch: truncated safetensors",
        "longctx",
        truncate_weights,
        patch("--base", "1e6"),
        "is truncated or not a safetensors file",
        None,
    ),
    (
        "patch: garbled safetensors header",
        "longctx",
        garble_weights_header,
        patch("--base", "1e6"),
        "is truncated or not a safetensors file",
        None,
    ),
    ("patch: no weight files", "longctx", no_weights, patch("--base", "1e6"), "holds no weight files", None),
    ("patch: pickle-only weights", "longctx", pickle_only, patch("--base", "1e6"), "--allow-pickle", None),
    (
        "patch: needs remote code",
        "longctx",
        edit_config(auto_map={"AutoModelForCausalLM": "m.M"}),
        patch("--base", "1e6"),
        "--trust-remote-code",
        None,
    ),
    # -- patch: the output
    (
        "patch: --out is the source",
        "longctx",
        src,
        patch("--base", "1e6", "--force", out="src"),
        "is the source checkpoint itself",
        None,
    ),
    (
        "patch: --out inside the source",
        "longctx",
        src,
        patch("--base", "1e6", "--force", out="src/sub"),
        "lies inside the source",
        None,
    ),
    (
        "patch: --out contains the source",
        "longctx",
        src,
        patch("--base", "1e6", "--force", out="."),
        "contains the source",
        None,
    ),
    (
        "patch: --out . (the working folder)",
        "longctx",
        both(src, mkdir("work")),
        ["patch", "--model", "../src", "--base", "1e6", "--out", ".", "--force"],
        "is the current directory",
        "cwd:work",
    ),
    ("patch: --out exists", "longctx", earlier_patch_output, patch("--base", "1e6"), "pass --force", None),
    (
        "patch: --force on a foreign folder",
        "longctx",
        foreign_folder,
        patch("--base", "1e6", "--force"),
        "not a longctx patch output",
        None,
    ),
    (
        "patch: --out is a file",
        "longctx",
        both(src, write("out", "x", with_src=False)),
        patch("--base", "1e6"),
        "exists and is a file",
        None,
    ),
    (
        "patch: read-only output folder",
        "longctx",
        both(src, mkdir("ro")),
        patch("--base", "1e6", out="ro/out"),
        "cannot write in",
        "readonly:ro",
    ),
    (
        "patch: disk full during --copy",
        "longctx",
        src,
        patch("--base", "1e6", "--copy"),
        "No space left on device",
        "enospc",
    ),
    # -- analyze
    (
        "analyze: odd head dim",
        "longctx",
        None,
        ["analyze", "--head-dim", "7", "--base", "1e4", "--train-length", "4096"],
        "--head-dim must be",
        None,
    ),
    (
        "analyze: base 1",
        "longctx",
        None,
        ["analyze", "--head-dim", "64", "--base", "1", "--train-length", "4096"],
        "--base must be",
        None,
    ),
    ("analyze: missing input", "longctx", None, ["analyze", "--head-dim", "128"], "give --model", None),
    # -- eval
    ("eval: --device cuda:99", "longctx", src, ppl("--device", "cuda:99"), "--device cuda:99", None),
    ("eval: --device banana", "longctx", src, ppl("--device", "banana"), "not a device", None),
    ("eval: --dtype int3", "longctx", src, ppl("--dtype", "int3"), "unknown dtype", None),
    (
        "eval: random bytes as --data",
        "longctx",
        both(src, write("noise.txt", os.urandom(4096), with_src=False)),
        ppl("--data", "noise.txt"),
        "is not UTF-8 text",
        None,
    ),
    (
        "eval: NUL bytes in --data",
        "longctx",
        both(src, write("nul.txt", "text\x00more text " * 50, with_src=False)),
        ppl("--data", "nul.txt"),
        "NUL bytes",
        None,
    ),
    ("eval: missing --data", "longctx", src, ppl("--data", "nowhere.txt"), "does not exist", None),
    (
        "eval: passkey length too short (after load)",
        "longctx",
        src,
        ["eval", "passkey", "--model", "src", "--lengths", "16", "--out", "results"],
        "too short",
        None,
    ),
    (
        "eval: --stride above the length (after load)",
        "longctx",
        src,
        ppl("--stride", "100"),
        "--stride must be between",
        None,
    ),
    ("eval: pickle-only LoRA adapter", "longctx", adapter("pickle"), ppl(model="adapter"), "only as pickle", None),
    (
        "eval: adapter config not JSON",
        "longctx",
        adapter("pickle", config="{oops"),
        ppl(model="adapter"),
        "is not valid JSON",
        None,
    ),
    ("eval: adapter without weights", "longctx", adapter(None), ppl(model="adapter"), "no adapter weights", None),
    ("eval: truncated model weights", "longctx", truncate_weights, ppl(), "is truncated", None),
    ("eval: unknown task", "longctx", src, ["eval", "pplx", "--model", "src"], "did you mean 'ppl'", None),
    ("eval: bad --lengths", "longctx", src, ["eval", "ppl", "--model", "src", "--lengths", "4q"], "bad length", None),
    (
        "eval: bad --depths",
        "longctx",
        src,
        ["eval", "passkey", "--model", "src", "--lengths", "1k", "--depths", "0,2"],
        "every depth must lie in [0, 1]",
        None,
    ),
    ("eval: missing suite", "longctx", src, ["eval", "suite", "nope.yaml", "--model", "src"], "does not exist", None),
    (
        "eval: suite unknown key",
        "longctx",
        both(src, write("s.yaml", "tasks: {ppl: {lengths: 64, lenghts: 2}}\n", with_src=False)),
        ["eval", "suite", "s.yaml", "--model", "src"],
        "unknown key 'lenghts'",
        None,
    ),
    # -- fine-tune recipe
    ("finetune: --lr inf", "finetune", both(src, docs), ft("--lr", "inf"), "--lr must be a finite number > 0", None),
    ("finetune: --lr nan", "finetune", both(src, docs), ft("--lr", "nan"), "--lr must be", None),
    ("finetune: --lr -1", "finetune", both(src, docs), ft("--lr", "-1"), "--lr must be", None),
    (
        "finetune: --weight-decay -0.1",
        "finetune",
        both(src, docs),
        ft("--weight-decay", "-0.1"),
        "--weight-decay must be",
        None,
    ),
    (
        "finetune: --adam-beta1 2",
        "finetune",
        both(src, docs),
        ft("--adam-beta1", "2"),
        "--adam-beta1 must be in [0, 1)",
        None,
    ),
    ("finetune: --adam-beta2 1", "finetune", both(src, docs), ft("--adam-beta2", "1"), "--adam-beta2 must be", None),
    (
        "finetune: --max-grad-norm -1",
        "finetune",
        both(src, docs),
        ft("--max-grad-norm", "-1"),
        "--max-grad-norm must be",
        None,
    ),
    ("finetune: --lora-alpha 0", "finetune", both(src, docs), ft("--lora-alpha", "0"), "--lora-alpha must be", None),
    (
        "finetune: --min-lr-ratio 2",
        "finetune",
        both(src, docs),
        ft("--min-lr-ratio", "2"),
        "--min-lr-ratio must be",
        None,
    ),
    (
        "finetune: --peak-flops inf",
        "finetune",
        both(src, docs),
        ft("--peak-flops", "inf"),
        "--peak-flops must be",
        None,
    ),
    ("finetune: --max-steps 0", "finetune", both(src, docs), ft("--max-steps", "0"), "--max-steps must be ≥ 1", None),
    (
        "finetune: --seq-len above trained",
        "finetune",
        both(src, docs),
        ft("--seq-len", "512"),
        "above the model's trained length",
        None,
    ),
    (
        "finetune: --factor 1e300",
        "finetune",
        both(src, docs),
        ft("--method", "linear", "--factor", "1e300"),
        "absurdly large",
        None,
    ),
    (
        "finetune: YAML lr .inf",
        "finetune",
        both(src, docs, write("c.yaml", "lr: .inf\n", with_src=False)),
        ft("--config", "c.yaml"),
        "--lr must be",
        None,
    ),
    (
        "finetune: unknown YAML key",
        "finetune",
        both(src, docs, write("c.yaml", "learning_rate: 1e-4\n", with_src=False)),
        ft("--config", "c.yaml"),
        "unknown key 'learning_rate'",
        None,
    ),
    (
        "finetune: random bytes as --data",
        "finetune",
        both(src, write("noise.txt", os.urandom(4096), with_src=False)),
        ft("--data", "noise.txt"),
        "is not UTF-8 text",
        None,
    ),
    (
        "finetune: --model X --out X --force",
        "finetune",
        both(full_finetune_output, docs),
        ft("--finetune", "full", "--out", "src", "--force"),
        "is the source checkpoint itself",
        None,
    ),
    (
        "finetune: --out inside the model",
        "finetune",
        both(src, docs),
        ft("--out", "src/run"),
        "lies inside the source",
        None,
    ),
    (
        "finetune: --out . (the working folder)",
        "finetune",
        both(src, docs, mkdir("work")),
        [
            "--model",
            "../src",
            "--data",
            "../docs.jsonl",
            "--seq-len",
            "32",
            "--max-steps",
            "1",
            "--out",
            ".",
            "--force",
        ],
        "is the current directory",
        "cwd:work",
    ),
    (
        "finetune: --force on a foreign folder",
        "finetune",
        both(src, docs, write("run/thesis.tex", "years", with_src=False)),
        ft("--force"),
        "not a finetune output",
        None,
    ),
    ("finetune: --resume with nothing to resume", "finetune", both(src, docs), ft("--resume"), "no checkpoint", None),
]
# --resume of crafted or damaged run folders (a real run, copied into the case folder, then altered)
RESUME_CASES = [
    ("finetune --resume: foreign pickle in the checkpoint", "custom_pickle", "was not written by longctx"),
    ("finetune --resume: code in optimizer.bin", "evil_optimizer", "not plain tensors and data"),
    ("finetune --resume: truncated checkpoint file", "truncated", "is missing or truncated"),
    ("finetune --resume: code in an earlier longctx's scheduler pickle", "legacy_evil", "not plain tensors and data"),
    (
        "finetune --resume: unknown pickle in an earlier longctx's checkpoint",
        "legacy_foreign",
        "was not written by longctx",
    ),
    ("finetune --resume: checkpoint format from the future", "future", "cannot read"),
    ("finetune --resume: trainer_state.json garbage", "garbage_state", "is unreadable"),
    ("finetune --resume: finetune_args.json garbage", "garbage_args", "is not valid JSON"),
    ("finetune --resume: torn finetune_args.json", "torn_args", "is not valid JSON"),
]


def recipe_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 1-step LoRA run with a checkpoint, and the flags that resume it."""
    base = tmp_path_factory.mktemp("trained")
    (base / "docs.jsonl").write_text(DOCS)
    flags = ["--model", str(tiny_llama_dir), "--data", str(base / "docs.jsonl"), "--seq-len", "32", "--max-steps", "1",
             "--save-every", "1", "--report-to", "none"]
    assert recipe_cli()([*flags, "--out", str(base / "run")]) == 0
    return base / "run", flags


def craft(run: Path, how: str, marker: Path) -> None:
    step = run / "checkpoints" / "step-000001"
    state_path = step / "trainer_state.json"
    state = json.loads(state_path.read_text())
    if how == "custom_pickle":  # what accelerate would unpickle with weights_only=False
        (step / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Evil(str(marker))))
    elif how == "evil_optimizer":  # listed with its true size: only the weights_only load stops it
        import torch

        torch.save({"state": {}, "param_groups": [], "hook": Evil(str(marker))}, step / "optimizer.bin")
        state["files"]["optimizer.bin"] = (step / "optimizer.bin").stat().st_size
        state_path.write_text(json.dumps(state))
    elif how == "truncated":
        weights = step / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif how in ("legacy_evil", "legacy_foreign"):  # an earlier longctx: no format tag, accelerate's pickles
        state = {"step": state["step"], "rows_consumed": state["rows_consumed"]}
        state_path.write_text(json.dumps(state))
        name = "custom_checkpoint_0.pkl" if how == "legacy_evil" else "extra.pkl"
        (step / name).write_bytes(pickle.dumps(Evil(str(marker))))
    elif how == "future":
        state["format"] = "longctx-checkpoint-9"
        state_path.write_text(json.dumps(state))
    elif how == "garbage_state":
        state_path.write_text("{garbage")
    elif how == "garbage_args":
        (run / "finetune_args.json").write_text("\x00\x01 not json")
    elif how == "torn_args":
        args = run / "finetune_args.json"
        args.write_text(args.read_text()[:40])


def test_bad_inputs_fail_in_one_line_and_change_nothing(tiny_llama_dir, trained_run, tmp_path):
    run, resume_flags = trained_run
    cases = []
    for index, (case_id, tool, prepare, argv, expect, fault) in enumerate(CASES):
        folder = tmp_path / f"case{index:03d}"
        folder.mkdir()
        if prepare:
            prepare(folder, tiny_llama_dir)
        cwd = folder / fault[4:] if fault and fault.startswith("cwd:") else folder
        fault = None if fault and fault.startswith("cwd:") else fault
        if fault and fault.startswith("readonly:"):
            fault = f"readonly:{folder / fault.split(':', 1)[1]}"
        cases.append({"id": case_id, "tool": tool, "argv": argv, "cwd": str(cwd), "fault": fault, "expect": expect})
    for index, (case_id, how, expect) in enumerate(RESUME_CASES):
        folder = tmp_path / f"resume{index:03d}"
        shutil.copytree(run, folder / "run")
        craft(folder / "run", how, folder / "PWNED")
        cases.append({"id": case_id, "tool": "finetune", "argv": [*resume_flags, "--out", "run", "--resume"],
                      "cwd": str(folder), "fault": None, "expect": expect})
    roots = {case["id"]: next(p for p in [Path(case["cwd"]), *Path(case["cwd"]).parents] if p.parent == tmp_path)
             for case in cases}
    before = {case_id: tree_digest(root) for case_id, root in roots.items()}
    tiny_before = tree_digest(tiny_llama_dir)
    assert len({case["id"] for case in cases}) == len(cases) >= 60

    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "results.json")], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())}

    failures = []
    for case in cases:
        result = results[case["id"]]
        tool = "finetune" if case["tool"] == "finetune" else "longctx"
        try:
            assert result["traceback"] is None, result["traceback"]
            assert_one_line_error(result["code"], result["stderr"], case["expect"], tool)
            assert tree_digest(roots[case["id"]]) == before[case["id"]], "the case folder changed"
        except AssertionError as exc:
            failures.append(f"{case['id']}: {str(exc)[:600]}")
    assert tree_digest(tiny_llama_dir) == tiny_before
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs misbehaved:\n" + "\n".join(failures)


# ------------------------------------------------------------------------------- separate processes
def test_the_most_dangerous_inputs_through_the_console_script_and_the_recipe(tiny_llama_dir, trained_run, tmp_path):
    """Data loss and code execution, each in its own process (what a user runs), all started at once."""
    import torch

    run, resume_flags = trained_run
    script = [sys.executable, str(RECIPE), "--report-to", "none"]
    cases = {
        "patch --force on a foreign folder": (
            foreign_folder,
            [str(LONGCTX), *patch("--base", "1e6", "--force")],
            "not a longctx patch output",
            "longctx",
        ),
        "patch --out = the source --force": (
            src,
            [str(LONGCTX), *patch("--base", "1e6", "--force", out="src")],
            "is the source checkpoint itself",
            "longctx",
        ),
        "eval --device cuda without that GPU": (
            src,
            [str(LONGCTX), *ppl("--device", "cuda" if not torch.cuda.is_available() else "cuda:99")],
            "--device cuda",
            "longctx",
        ),
        "finetune --model X --out X --force": (
            both(full_finetune_output, docs),
            [*script, *ft("--finetune", "full", "--out", "src", "--force")],
            "is the source checkpoint itself",
            "finetune",
        ),
        "finetune --resume of a crafted pickle": (
            None,
            [*script, *resume_flags, "--out", "run", "--resume"],
            "not plain tensors and data",
            "finetune",
        ),
    }
    procs, roots, before = {}, {}, {}
    for index, (name, (prepare, cmd, _, _)) in enumerate(cases.items()):
        folder = tmp_path / f"p{index}"
        folder.mkdir()
        if prepare:
            prepare(folder, tiny_llama_dir)
        if "crafted" in name:
            shutil.copytree(run, folder / "run")
            craft(folder / "run", "evil_optimizer", folder / "PWNED")
        roots[name], before[name] = folder, tree_digest(folder)
        procs[name] = subprocess.Popen(
            cmd, cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        _, _, expect, tool = cases[name]
        assert_one_line_error(proc.returncode, stderr, expect, tool)
        assert tree_digest(roots[name]) == before[name], name
        assert not (roots[name] / "PWNED").exists()


def test_analyze_with_an_absurd_target_answers_fast():
    """It used to scan for 393 s, then raise a ValueError."""
    try:
        proc = subprocess.run(
            [
                str(LONGCTX),
                "analyze",
                "--head-dim",
                "128",
                "--base",
                "10000",
                "--train-length",
                "4096",
                "--target-length",
                str(10**12),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("analyze --target-length 1e12 still runs after 15 s")
    assert_one_line_error(proc.returncode, proc.stderr, "--target-length")


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (user + mount namespaces)")


@needs_unshare
def test_read_only_output_folder_for_real(tiny_llama_dir, tmp_path):
    """A read-only bind mount (chmod does not stop root): one line, exit 2, nothing written."""
    shutil.copytree(tiny_llama_dir, tmp_path / "src")
    (tmp_path / "ro").mkdir()
    before = tree_digest(tmp_path)
    shell = ('mount --bind ro ro && mount -o remount,bind,ro ro && '
             f'exec {LONGCTX} patch --model src --base 1e6 --out ro/patched')
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=120
    )
    assert_one_line_error(proc.returncode, proc.stderr, "cannot write in")
    assert tree_digest(tmp_path) == before


@needs_unshare
def test_full_disk_for_real(tiny_llama_dir, tmp_path):
    """A 300 KB tmpfs cannot hold the 560 KB weights of --copy: ENOSPC is one line, and the partial folder is
    removed (listed from inside the namespace, where the tmpfs exists)."""
    shutil.copytree(tiny_llama_dir, tmp_path / "src")
    (tmp_path / "small").mkdir()
    before = tree_digest(tmp_path)
    shell = (
        f"mount -t tmpfs -o size=300k tmpfs small && {LONGCTX} patch --model src --copy --base 1e6 --out "
        "small/patched; "
        "rc=$?; ls -A small; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=120
    )
    assert_one_line_error(proc.returncode, proc.stderr, "No space left on device")
    assert proc.stdout.strip() == "", f"left behind on the full disk: {proc.stdout}"
    assert tree_digest(tmp_path) == before


def test_a_cross_file_system_link_says_it_is_a_symlink(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """Hard links cannot cross file systems: the weights become symlinks, and the CLI and the card say so."""
    import errno

    from longctx.cli import main

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    assert main(["patch", "--model", str(tiny_llama_dir), "--base", "1e6", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "symlinks" in out and "--copy" in out
    assert (tmp_path / "out" / "model.safetensors").is_symlink()
    assert "symlinks to the source" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("clip", ["1.0", "0"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path, capsys, clip):
    """--lr 1e30 is a finite number, so it passes the flag checks; the weights explode in the first update and
    the next step's gradient is not finite: exit 2 in one line, no step saved after it, the log stays JSON.
    Without clipping (--max-grad-norm 0) the gradient norm is still computed and checked."""
    (tmp_path / "docs.jsonl").write_text(DOCS)
    capsys.readouterr()
    code = recipe_cli()(
        [
            "--model",
            str(tiny_llama_dir),
            "--data",
            str(tmp_path / "docs.jsonl"),
            "--seq-len",
            "32",
            "--max-steps",
            "4",
            "--save-every",
            "1",
            "--lr",
            "1e30",
            "--warmup-steps",
            "0",
            "--finetune",
            "full",
            "--max-grad-norm",
            clip,
            "--report-to",
            "none",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    stderr = capsys.readouterr().err
    assert_one_line_error(code, stderr, "at step 2 is not finite", "finetune")
    # strict JSON
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints] == ["step-000001"]
    assert f"the last good checkpoint is {checkpoints[0]}" in stderr
    import torch
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(checkpoints[0] / "model.safetensors").values())


def test_a_full_disk_during_the_fine_tune_export_is_one_line_and_resumable(
    tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    """The disk fills while the patched base of the adapter is written: exit 2 in one line, no partial base
    folder, and --resume finishes the run once there is space again."""
    import errno

    (tmp_path / "docs.jsonl").write_text(DOCS)
    flags = ["--model", str(tiny_llama_dir), "--base", "1e5", "--data", str(tmp_path / "docs.jsonl"), "--seq-len", "32",
             "--max-steps", "1", "--report-to", "none", "--out", str(tmp_path / "run")]

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)  # the copies of the small files of the base
    capsys.readouterr()
    code = recipe_cli()(flags)
    assert_one_line_error(code, capsys.readouterr().err, "No space left on device", "finetune")
    assert not (tmp_path / "run" / "base").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if "longctx-partial" in p.name]
    monkeypatch.undo()
    assert recipe_cli()([*flags, "--resume"]) == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "base" / "config.json").read_text())["rope_theta"] == 1e5
