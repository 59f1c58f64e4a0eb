"""Nothing silently wrong, nothing written twice at once, nothing written where it was not asked.

The table drives each bad input through the real CLI and recipe in one subprocess (tests/cli_driver.py, as in
tests/test_bad_inputs.py): exit 2, one line, no traceback, and the case folder byte-identical afterwards (so the
source is untouched, nothing partial is left and nothing was written outside --out). A case that may leave
resumable state inside its output (a fine-tune stopped by a write error) names that folder: everything outside
it must stay identical, and nothing inside it may be partial. Then, as separate processes: two writers on one
output at once, a second model under the same label, stale locks, and SIGTERM / SIGINT of the recipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_inputs import (
    DELETE,
    DOCS,
    ENV,
    LONGCTX,
    RECIPE,
    assert_one_line_error,
    both,
    docs,
    edit_config,
    ft,
    mkdir,
    patch,
    ppl,
    recipe_cli,
    src,
    tree_digest,
    write,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "smollm2-cpu-4k"  # finished results in the repository, only read here


# ------------------------------------------------------------------------------------------ case set-up
def fifo(relpath: str, *, with_src: bool = True):
    def prepare(d: Path, tiny: Path) -> None:
        if with_src:
            src(d, tiny)
        (d / relpath).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / relpath)
    return prepare


def other_results(
    task: str = "ppl", fingerprint: dict | None = None, rope: dict | None = None, model_json: bool = True
):
    """results/src as another model left it: its model.json and one cell."""
    def prepare(d: Path, tiny: Path) -> None:
        folder = d / "results" / "src"
        folder.mkdir(parents=True)
        info = {
            "label": "src",
            "source": "elsewhere/src",
            "rope": rope or {"rope_theta": 10000.0, "rope_type": "default"},
        }
        if fingerprint is not None:
            info["fingerprint"] = fingerprint
        if model_json:
            (folder / "model.json").write_text(json.dumps(info))
        (folder / f"{task}.jsonl").write_text(json.dumps({"key": f"{task}|L=64", "ppl": 1.0}) + "\n")
    return prepare


ANOTHER = {"id": "0123456789abcdef", "model": {}}


def tensors(drop: str | None = None, add: str | None = None):
    """The tiny weights re-saved without one tensor, or with one more."""
    def prepare(d: Path, tiny: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        src(d, tiny)
        path = d / "src" / "model.safetensors"
        state = load_file(path)
        if drop:
            del state[drop]
        if add:
            state[add] = torch.zeros(4)
        save_file(state, path, metadata={"format": "pt"})
    return prepare


def sharded(missing_shard: bool = False, lost_tensor: bool = False):
    """The tiny weights behind a safetensors index: one shard named but absent, or a tensor mapped to a shard
    that does not hold it."""
    def prepare(d: Path, tiny: Path) -> None:
        from safetensors import safe_open

        src(d, tiny)
        path = d / "src" / "model.safetensors"
        with safe_open(str(path), "pt") as handle:
            names = list(handle.keys())
        shard = "model-00001-of-00001.safetensors"
        path.rename(d / "src" / shard)
        weight_map = {name: shard for name in names}
        if missing_shard:
            weight_map[names[0]] = "model-00002-of-00002.safetensors"
        if lost_tensor:
            weight_map["model.layers.0.not_there.weight"] = shard
        (d / "src" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return prepare


def results_of_smollm2(d: Path, tiny: Path) -> None:
    """Nothing to set up: `report` reads the repository's finished results."""


def suite_yaml(text: str):
    return write("s.yaml", text, with_src=False)


SUITE = ["eval", "suite", "s.yaml", "--model", "src", "--out", "results"]
SUITE_OK = suite_yaml("tasks: {ppl: {lengths: 64}}\n")
TOO_LONG = "above 16,777,216"


def passkey(*flags, model="src"):
    return ["eval", "passkey", "--model", model, "--lengths", "160", "--depths", "0:1:2", "--trials", "1",
            "--out", "results", *flags]


def yaml_cfg(text: str):
    return both(src, docs, write("c.yaml", text, with_src=False))


# (id, tool, prepare, argv, expected words of the one error line, driver fault, folder the case may leave state in)
CASES = [
    # -- 1. results of one model served as another's
    (
        "eval ppl: another model's results under the label",
        "longctx",
        both(src, other_results(fingerprint=ANOTHER)),
        ppl(),
        "holds results of another model",
        None,
        None,
    ),
    (
        "eval passkey: another model's results under the label",
        "longctx",
        both(src, other_results("passkey", ANOTHER)),
        passkey(),
        "holds results of another model",
        None,
        None,
    ),
    (
        "eval niah: another model's results under the label",
        "longctx",
        both(src, other_results("niah", ANOTHER)),
        ["eval", "niah", "--model", "src", "--lengths", "160", "--depths", "2", "--trials", "1", "--out", "results"],
        "holds results of another model",
        None,
        None,
    ),
    (
        "eval suite: another model's results under the label",
        "longctx",
        both(src, SUITE_OK, other_results(fingerprint=ANOTHER)),
        SUITE,
        "holds results of another model",
        None,
        None,
    ),
    (
        "eval: an earlier longctx's results of another rope",
        "longctx",
        both(src, other_results(rope={"rope_theta": 5e5, "rope_type": "default"})),
        ppl(),
        "holds results of another model",
        None,
        None,
    ),
    (
        "eval: results without a model.json",
        "longctx",
        both(src, other_results(model_json=False)),
        ppl(),
        "without a model.json",
        None,
        None,
    ),
    (
        "eval --force: a foreign folder under the label",
        "longctx",
        both(src, write("results/src/thesis.tex", "years", with_src=False)),
        ppl("--force"),
        "not a longctx results folder",
        None,
        None,
    ),
    # -- 2. two writers, one output (another writer holds the lock)
    ("patch: --out in use", "longctx", src, patch("--base", "1e6"), "is in use by pid 4242", "locked:out", None),
    (
        "patch --force: --out in use",
        "longctx",
        both(src, mkdir("out"), write("out/longctx_patch.json", "{}", with_src=False)),
        patch("--base", "1e6", "--force"),
        "is in use by pid 4242",
        "locked:out",
        None,
    ),
    (
        "patch: --out FILE.gguf in use",
        "longctx",
        src,
        patch("--base", "1e6", out="out.gguf"),
        "is in use by pid 4242",
        "locked:out.gguf",
        None,
    ),
    ("eval ppl: --out in use", "longctx", src, ppl(), "is in use by pid 4242", "locked:results", None),
    ("eval passkey: --out in use", "longctx", src, passkey(), "is in use by pid 4242", "locked:results", None),
    (
        "eval suite: --out in use",
        "longctx",
        both(src, SUITE_OK),
        SUITE,
        "is in use by pid 4242",
        "locked:results",
        None,
    ),
    (
        "report: the report folder in use",
        "longctx",
        results_of_smollm2,
        ["report", str(RESULTS), "--out", "rep"],
        "is in use by pid 4242",
        "locked:rep",
        None,
    ),
    ("finetune: --out in use", "finetune", both(src, docs), ft(), "is in use by pid 4242", "locked:run", None),
    (
        "finetune --force: --out in use",
        "finetune",
        both(src, docs, write("run/finetune_args.json", "{}", with_src=False)),
        ft("--force"),
        "is in use by pid 4242",
        "locked:run",
        None,
    ),
    # -- 3. writes outside the output
    ("eval: --label ../x", "longctx", src, ppl("--label", "../x"), "must name one folder inside --out", None, None),
    ("eval: --label ..", "longctx", src, ppl("--label", ".."), "must name one folder inside --out", None, None),
    ("eval: --label a/b", "longctx", src, ppl("--label", "a/b"), "must name one folder inside --out", None, None),
    (
        "eval: --label absolute",
        "longctx",
        src,
        ppl("--label", "/tmp/longctx-escaped"),
        "must name one folder inside --out",
        None,
        None,
    ),
    (
        "eval: --label .hidden",
        "longctx",
        src,
        ppl("--label", ".hidden"),
        "must name one folder inside --out",
        None,
        None,
    ),
    (
        "eval passkey: --label ../../x",
        "longctx",
        src,
        passkey("--label", "../../x"),
        "must name one folder inside --out",
        None,
        None,
    ),
    (
        "eval suite: --labels ../x",
        "longctx",
        both(src, SUITE_OK),
        [*SUITE, "--labels", "../x"],
        "--labels '../x' must name",
        None,
        None,
    ),
    (
        "eval suite: --labels with an absolute one",
        "longctx",
        both(src, SUITE_OK),
        [
            "eval",
            "suite",
            "s.yaml",
            "--model",
            "src",
            "--model",
            "src",
            "--labels",
            "a,/tmp/longctx-escaped",
            "--out",
            "results",
        ],
        "must name one folder",
        None,
        None,
    ),
    ("eval: --out is the model", "longctx", src, ppl("--out", "src"), "would write into the model folder", None, None),
    (
        "eval: --out inside the model",
        "longctx",
        src,
        ppl("--out", "src/results"),
        "would write into the model folder",
        None,
        None,
    ),
    (
        "eval: results folder is the model (--out .)",
        "longctx",
        src,
        ppl("--out", "."),
        "would write into the model folder",
        None,
        None,
    ),
    (
        "eval: --out .. from inside the model",
        "longctx",
        both(src, mkdir("src/work")),
        ["eval", "ppl", "--model", "..", "--label", "m", "--lengths", "64", "--out", ".."],
        "would write into the model folder",
        "cwd:src/work",
        None,
    ),
    (
        "eval passkey: --out inside the model",
        "longctx",
        src,
        passkey("--out", "src/deep/results"),
        "would write into the model folder",
        None,
        None,
    ),
    (
        "eval suite: --out is the model",
        "longctx",
        both(src, SUITE_OK),
        [*SUITE[:-1], "src"],
        "would write into the model folder",
        None,
        None,
    ),
    # -- 4. weights that do not match the config
    (
        "patch: config claims 3 layers over 2",
        "longctx",
        edit_config(num_hidden_layers=3),
        patch("--base", "1e6"),
        "no weights for layer(s) 2",
        None,
        None,
    ),
    (
        "eval: config claims 3 layers over 2",
        "longctx",
        edit_config(num_hidden_layers=3),
        ppl(),
        "no weights for layer(s) 2",
        None,
        None,
    ),
    (
        "finetune: config claims 3 layers over 2",
        "finetune",
        both(edit_config(num_hidden_layers=3), docs),
        ft(),
        "no weights for layer(s) 2",
        None,
        None,
    ),
    (
        "patch: config claims 1 layer over 2",
        "longctx",
        edit_config(num_hidden_layers=1),
        patch("--base", "1e6"),
        "the config does not have",
        None,
        None,
    ),
    (
        "eval: config claims 1 layer over 2",
        "longctx",
        edit_config(num_hidden_layers=1),
        ppl(),
        "the config does not have",
        None,
        None,
    ),
    (
        "finetune: config claims 1 layer over 2",
        "finetune",
        both(edit_config(num_hidden_layers=1), docs),
        ft(),
        "the config does not have",
        None,
        None,
    ),
    (
        "patch: vocab_size of another model",
        "longctx",
        edit_config(vocab_size=600),
        patch("--base", "1e6"),
        "vocab_size 600",
        None,
        None,
    ),
    ("eval: vocab_size of another model", "longctx", edit_config(vocab_size=600), ppl(), "vocab_size 600", None, None),
    (
        "finetune: vocab_size of another model",
        "finetune",
        both(edit_config(vocab_size=600), docs),
        ft(),
        "vocab_size 600",
        None,
        None,
    ),
    (
        "eval: a missing tensor",
        "longctx",
        tensors(drop="model.norm.weight"),
        ppl(),
        "1 missing (model.norm.weight)",
        None,
        None,
    ),
    (
        "finetune: a missing tensor",
        "finetune",
        both(tensors(drop="model.norm.weight"), docs),
        ft(),
        "1 missing (model.norm.weight)",
        None,
        None,
    ),
    (
        "eval: an unexpected tensor",
        "longctx",
        tensors(add="model.extra.weight"),
        ppl(),
        "1 unexpected (model.extra.weight)",
        None,
        None,
    ),
    (
        "finetune: an unexpected tensor",
        "finetune",
        both(tensors(add="model.extra.weight"), docs),
        ft("--finetune", "full"),
        "1 unexpected (model.extra.weight)",
        None,
        None,
    ),
    (
        "patch: a missing shard",
        "longctx",
        sharded(missing_shard=True),
        patch("--base", "1e6"),
        "missing the shard",
        None,
        None,
    ),
    ("eval: a missing shard", "longctx", sharded(missing_shard=True), ppl(), "missing the shard", None, None),
    (
        "finetune: a missing shard",
        "finetune",
        both(sharded(missing_shard=True), docs),
        ft(),
        "missing the shard",
        None,
        None,
    ),
    (
        "patch: index maps a tensor no shard holds",
        "longctx",
        sharded(lost_tensor=True),
        patch("--base", "1e6"),
        "do not hold them",
        None,
        None,
    ),
    # -- 5. OS and library write errors (a real file-size limit: EFBIG)
    (
        "patch --copy: file-size limit",
        "longctx",
        src,
        patch("--base", "1e6", "--copy"),
        "File too large",
        "fsize:100000",
        None,
    ),
    ("eval: file-size limit", "longctx", src, ppl(), "File too large", "fsize:300", None),
    (
        "report: file-size limit",
        "longctx",
        results_of_smollm2,
        ["report", str(RESULTS), "--out", "rep"],
        "File too large",
        "fsize:8000",
        None,
    ),
    (
        "finetune lora checkpoint: file-size limit",
        "finetune",
        both(src, docs),
        ft("--save-every", "1"),
        "File too large",
        "fsize:20000",
        "run",
    ),
    (
        "finetune full checkpoint: file-size limit (safetensors)",
        "finetune",
        both(src, docs),
        ft("--finetune", "full"),
        "File too large",
        "fsize:200000",
        "run",
    ),
    (
        "finetune --merge: file-size limit",
        "finetune",
        both(src, docs),
        ft("--merge", "--base", "1e5"),
        "File too large",
        "fsize:300000",
        "run",
    ),
    # -- 6. no hangs
    (
        "eval: --data is a FIFO",
        "longctx",
        both(src, fifo("pipe.txt", with_src=False)),
        ppl("--data", "pipe.txt"),
        "not a regular file",
        None,
        None,
    ),
    ("eval: --data is a device", "longctx", src, ppl("--data", "/dev/zero"), "not a regular file", None, None),
    (
        "eval niah: --haystack is a FIFO",
        "longctx",
        both(src, fifo("pipe.txt", with_src=False)),
        ["eval", "niah", "--model", "src", "--lengths", "160", "--haystack", "pipe.txt", "--out", "results"],
        "not a regular file",
        None,
        None,
    ),
    (
        "finetune: --data is a FIFO",
        "finetune",
        both(src, fifo("pipe.txt", with_src=False)),
        ft("--data", "pipe.txt"),
        "not a regular file",
        None,
        None,
    ),
    (
        "finetune: a FIFO in the --data folder",
        "finetune",
        both(src, docs, fifo("corpus/b.txt", with_src=False), write("corpus/a.txt", "text " * 100, with_src=False)),
        ft("--data", "corpus"),
        "not a regular file",
        None,
        None,
    ),
    (
        "patch: a FIFO in the source folder",
        "longctx",
        fifo("src/notes.txt"),
        patch("--base", "1e6"),
        "not a regular file",
        None,
        None,
    ),
    (
        "eval: a FIFO in the source folder",
        "longctx",
        fifo("src/tokenizer.model"),
        ppl(),
        "not a regular file",
        None,
        None,
    ),
    (
        "finetune: a FIFO in the source folder",
        "finetune",
        both(fifo("src/notes.txt"), docs),
        ft(),
        "not a regular file",
        None,
        None,
    ),
    (
        "eval suite: the suite file is a FIFO",
        "longctx",
        both(src, fifo("s.yaml", with_src=False)),
        SUITE,
        "not a regular file",
        None,
        None,
    ),
    (
        "finetune: --config is a FIFO",
        "finetune",
        both(src, docs, fifo("c.yaml", with_src=False)),
        ft("--config", "c.yaml"),
        "not a regular file",
        None,
        None,
    ),
    (
        "patch: max_position_embeddings 1e12 with --base 1e300",
        "longctx",
        edit_config(max_position_embeddings=10**12),
        patch("--base", "1e300"),
        TOO_LONG,
        None,
        None,
    ),
    (
        "eval: max_position_embeddings 1e12",
        "longctx",
        edit_config(max_position_embeddings=10**12),
        ppl(),
        TOO_LONG,
        None,
        None,
    ),
    (
        "eval: --lengths 1000000000",
        "longctx",
        src,
        ["eval", "ppl", "--model", "src", "--lengths", "1000000000"],
        TOO_LONG,
        None,
        None,
    ),
    (
        "eval: --lengths 4k..1024m",
        "longctx",
        src,
        ["eval", "ppl", "--model", "src", "--lengths", "4k..1024m"],
        TOO_LONG,
        None,
        None,
    ),
    (
        "eval: --depths with a billion depths",
        "longctx",
        src,
        ["eval", "passkey", "--model", "src", "--lengths", "1k", "--depths", "0:1:1000000000"],
        "bad depths",
        None,
        None,
    ),
    (
        "eval suite: YAML lengths 1e9",
        "longctx",
        both(src, suite_yaml("tasks: {ppl: {lengths: 1000000000}}\n")),
        SUITE,
        TOO_LONG,
        None,
        None,
    ),
    (
        "finetune: --pose-target-length 1e12",
        "finetune",
        both(src, docs),
        ft("--pose-target-length", str(10**12)),
        TOO_LONG,
        None,
        None,
    ),
    # -- 7. nonsense refused before it is written
    (
        "patch: unknown rope_type in the config",
        "longctx",
        edit_config(rope_scaling={"rope_type": "magic", "factor": 2.0}),
        patch("--base", "1e6"),
        "rope_type 'magic'",
        None,
        None,
    ),
    (
        "eval: unknown rope_type in the config",
        "longctx",
        edit_config(rope_scaling={"rope_type": "magic", "factor": 2.0}),
        ppl(),
        "rope_type 'magic'",
        None,
        None,
    ),
    (
        "finetune: unknown rope_type in the config",
        "finetune",
        both(edit_config(rope_scaling={"rope_type": "magic", "factor": 2.0}), docs),
        ft(),
        "rope_type 'magic'",
        None,
        None,
    ),
    (
        "patch: odd head_dim",
        "longctx",
        edit_config(head_dim=15),
        patch("--base", "1e6"),
        "rotary dimension of 15",
        None,
        None,
    ),
    ("eval: head_dim 0", "longctx", edit_config(head_dim=0), ppl(), "rotary dimension", None, None),
    (
        "patch: hidden_size not divisible by the heads",
        "longctx",
        edit_config(head_dim=DELETE, hidden_size=62),
        patch("--base", "1e6"),
        "not divisible by num_attention_heads",
        None,
        None,
    ),
    (
        "patch: negative original length in the config",
        "longctx",
        edit_config(original_max_position_embeddings=-5),
        patch("--base", "1e6"),
        "original_max_position_embeddings = -5",
        None,
        None,
    ),
    (
        "patch: negative rope factor in the config",
        "longctx",
        edit_config(rope_scaling={"rope_type": "linear", "factor": -2.0}),
        patch("--base", "1e6"),
        "rope factor = -2.0",
        None,
        None,
    ),
    ("patch: --base 1", "longctx", src, patch("--base", "1"), "--base must be a finite number > 1", None, None),
    ("patch: --base 0.5", "longctx", src, patch("--base", "0.5"), "--base must be a finite number > 1", None, None),
    (
        "patch: --base 1 with yarn",
        "longctx",
        src,
        patch("--method", "yarn", "--factor", "2", "--base", "1"),
        "--base must be",
        None,
        None,
    ),
    (
        "finetune: --base 1",
        "finetune",
        both(src, docs),
        ft("--base", "1"),
        "--base must be a finite number > 1",
        None,
        None,
    ),
    ("finetune: --seed -1", "finetune", both(src, docs), ft("--seed", "-1"), "--seed must be", None, None),
    (
        "finetune: YAML max_steps .inf",
        "finetune",
        yaml_cfg("max_steps: .inf\n"),
        ft("--config", "c.yaml"),
        "max_steps must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML max_steps 1e400",
        "finetune",
        yaml_cfg("max_steps: 1e400\n"),
        ft("--config", "c.yaml"),
        "max_steps must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML save_every -.inf",
        "finetune",
        yaml_cfg("save_every: -.inf\n"),
        ft("--config", "c.yaml"),
        "save_every must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML seed 2^32",
        "finetune",
        yaml_cfg("seed: 4294967296\n"),
        ft("--config", "c.yaml"),
        "--seed must be",
        None,
        None,
    ),
    (
        "finetune: YAML warmup_steps .inf",
        "finetune",
        yaml_cfg("warmup_steps: .inf\n"),
        ft("--config", "c.yaml"),
        "warmup_steps must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML seed 1e30",
        "finetune",
        yaml_cfg("seed: 1e30\n"),
        ft("--config", "c.yaml"),
        "seed must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML lora_r .inf",
        "finetune",
        yaml_cfg("lora_r: .inf\n"),
        ft("--config", "c.yaml"),
        "lora_r must be an integer",
        None,
        None,
    ),
    (
        "finetune: YAML lr true",
        "finetune",
        yaml_cfg("lr: true\n"),
        ft("--config", "c.yaml"),
        "lr must be a number",
        None,
        None,
    ),
    (
        "eval suite: YAML seed .inf",
        "longctx",
        both(src, suite_yaml("seed: .inf\ntasks: {ppl: {lengths: 64}}\n")),
        SUITE,
        "seed in s.yaml must be a whole number",
        None,
        None,
    ),
    (
        "eval suite: YAML seed 1.5",
        "longctx",
        both(src, suite_yaml("seed: 1.5\ntasks: {ppl: {lengths: 64}}\n")),
        SUITE,
        "seed in s.yaml must be a whole number",
        None,
        None,
    ),
    (
        "eval suite: YAML seed abc",
        "longctx",
        both(src, suite_yaml("seed: abc\ntasks: {ppl: {lengths: 64}}\n")),
        SUITE,
        "seed in s.yaml must be a whole number",
        None,
        None,
    ),
    (
        "eval suite: YAML seed -3",
        "longctx",
        both(src, suite_yaml("seed: -3\ntasks: {ppl: {lengths: 64}}\n")),
        SUITE,
        "seed in s.yaml must be a whole number",
        None,
        None,
    ),
]
# --resume of a run whose trainer_state.json (or RNG file) was edited: (id, how, expected words)
RESUME_CASES = [
    ("finetune --resume: step -1", {"step": -1}, "bad step -1"),
    ("finetune --resume: step of another folder", {"step": 7}, "bad step 7"),
    ("finetune --resume: rows_consumed -5", {"rows_consumed": -5}, "bad rows_consumed -5"),
    ("finetune --resume: accelerate_step 'x'", {"accelerate_step": "x"}, "bad accelerate_step 'x'"),
    ("finetune --resume: scheduler garbage", {"scheduler": "garbage"}, "bad scheduler"),
    ("finetune --resume: scheduler base_lrs", {"scheduler.base_lrs": ["x", 1]}, "bad scheduler.base_lrs"),
    ("finetune --resume: scheduler last_epoch 1.5", {"scheduler.last_epoch": 1.5}, "bad scheduler.last_epoch 1.5"),
    (
        "finetune --resume: scheduler lr_lambdas code-like",
        {"scheduler.lr_lambdas": [{"x": 1}]},
        "bad scheduler.lr_lambdas",
    ),
    ("finetune --resume: files with a negative size", {"files": {"model.safetensors": -1}}, "bad files"),
    ("finetune --resume: RNG state garbage", {"rng": [999, -1]}, "rng_state_0.json"),
]


def edit_state(run: Path, changes: dict) -> None:
    step = run / "checkpoints" / "step-000001"
    path = step / "trainer_state.json"
    state = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "rng":  # the size it was saved with, so only the content check can tell
            rng = step / "rng_state_0.json"
            rng.write_text(json.dumps({"torch": value}).ljust(rng.stat().st_size))
        elif key.startswith("scheduler."):
            state["scheduler"][key.split(".", 1)[1]] = value
        else:
            state[key] = value
    path.write_text(json.dumps(state))


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 1-step LoRA run with a checkpoint, and the flags that resume it."""
    base = tmp_path_factory.mktemp("trained")
    (base / "docs.jsonl").write_text(DOCS)
    flags = ["--model", str(tiny_llama_dir), "--data", str(base / "docs.jsonl"), "--seq-len", "32", "--max-steps", "1",
             "--save-every", "1", "--report-to", "none"]
    assert recipe_cli()([*flags, "--out", str(base / "run")]) == 0
    return base / "run", flags


def digest_outside(root: Path, keep: str | None) -> dict:
    digest = tree_digest(root)
    return {k: v for k, v in digest.items() if keep is None or not (k == keep or k.startswith(keep + os.sep))}


def test_safety_cases_fail_in_one_line_and_change_nothing(tiny_llama_dir, trained_run, tmp_path):
    run, resume_flags = trained_run
    cases, may_write = [], {}
    for index, (case_id, tool, prepare, argv, expect, fault, keep) in enumerate(CASES):
        folder = tmp_path / f"case{index:03d}"
        folder.mkdir()
        prepare(folder, tiny_llama_dir)
        cwd = folder / fault[4:] if fault and fault.startswith("cwd:") else folder
        fault = None if fault and fault.startswith("cwd:") else fault
        cases.append({"id": case_id, "tool": tool, "argv": argv, "cwd": str(cwd), "fault": fault, "expect": expect})
        may_write[case_id] = keep
    for index, (case_id, changes, expect) in enumerate(RESUME_CASES):
        folder = tmp_path / f"resume{index:03d}"
        shutil.copytree(run, folder / "run")
        edit_state(folder / "run", changes)
        cases.append({"id": case_id, "tool": "finetune", "argv": [*resume_flags, "--out", "run", "--resume"],
                      "cwd": str(folder), "fault": None, "expect": expect})
        may_write[case_id] = None
    assert len({case["id"] for case in cases}) == len(cases) >= 60
    roots = {case["id"]: next(p for p in [Path(case["cwd"]), *Path(case["cwd"]).parents] if p.parent == tmp_path)
             for case in cases}
    before = {case_id: digest_outside(root, may_write[case_id]) for case_id, root in roots.items()}
    around = sorted(p.name for p in tmp_path.iterdir())
    tiny_before = tree_digest(tiny_llama_dir)

    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "results.json")], capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())}

    failures = []
    for case in cases:
        result, keep = results[case["id"]], may_write[case["id"]]
        try:
            assert result["traceback"] is None, result["traceback"]
            assert_one_line_error(result["code"], result["stderr"], case["expect"], case["tool"])
            assert digest_outside(roots[case["id"]], keep) == before[case["id"]], "the case folder changed"
            if keep:
                partial = [
                    p for p in (roots[case["id"]] / keep).rglob("*") if "longctx-" in p.name or ".tmp-" in p.name
                ]
                assert not partial, f"partial files left: {partial}"
                assert not (roots[case["id"]] / keep / "merged").exists(), "a half merged export"
        except AssertionError as exc:
            failures.append(f"{case['id']}: {str(exc)[:600]}")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == around, (
        "written outside the cases"
    )
    assert not Path("/tmp/longctx-escaped").exists()
    assert tree_digest(tiny_llama_dir) == tiny_before
    assert not failures, f"{len(failures)} of {len(cases)} cases misbehaved:\n" + "\n".join(failures)


# ------------------------------------------------------------------------------- two writers at once
def start_pair(argv: list[str], cwd: Path, go: Path) -> list[subprocess.Popen]:
    """Two identical runs started together; the one that gets the lock waits (LONGCTX_PAUSE_AT) until `go`
    exists, so the other certainly meets the held lock."""
    env = {**ENV, "LONGCTX_PAUSE_AT": f"lock-held:{go}"}
    return [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]


def settle(procs: list[subprocess.Popen], go: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """(the loser, the survivor): the first to finish must have been refused while the other held the lock."""
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    first = next(p for p in procs if p.poll() is not None)
    second = next(p for p in procs if p is not first)
    refused = subprocess.CompletedProcess(first.args, first.returncode, *first.communicate())
    assert second.poll() is None, "the survivor finished before the other was refused"
    go.touch()
    survivor = subprocess.CompletedProcess(second.args, second.wait(timeout=300), *second.communicate())
    return refused, survivor


def test_two_writers_on_one_output_one_runs_the_other_exits_2_at_once(tiny_llama_dir, tmp_path, monkeypatch):
    from result_cells import cells_by_key
    from test_kill9 import without_timestamps

    from longctx.cli import main

    (tmp_path / "docs.jsonl").write_text(DOCS)
    shutil.copytree(tiny_llama_dir, tmp_path / "tiny")
    runs = {
        "patch": [str(LONGCTX), "patch", "--model", "../tiny", "--base", "1e6", "--out", "out"],
        "eval": [str(LONGCTX), "eval", "passkey", "--model", "../tiny", "--lengths", "160", "--depths", "0:1:2",
                 "--trials", "1", "--out", "results"],
        "finetune": [sys.executable, str(RECIPE), "--model", "../tiny", "--data", "../docs.jsonl", "--seq-len", "32",
                     "--max-steps", "2", "--report-to", "none", "--out", "run"],
    }
    pairs = {}
    for name, argv in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / f"lone-{name}").mkdir()
        pairs[name] = start_pair(argv, tmp_path / name, tmp_path / f"go-{name}")
    for name, procs in pairs.items():
        refused, survivor = settle(procs, tmp_path / f"go-{name}")
        assert_one_line_error(refused.returncode, refused.stderr, "is in use by pid",
                              "finetune" if name == "finetune" else "longctx")
        assert survivor.returncode == 0, survivor.stderr[-2000:]
        assert not [p.name for p in (tmp_path / name).iterdir() if p.name.startswith(".")], "a lock or partial left"

    monkeypatch.chdir(tmp_path / "lone-patch")
    assert main(runs["patch"][1:]) == 0
    assert without_timestamps(tmp_path / "patch" / "out") == without_timestamps(tmp_path / "lone-patch" / "out")
    monkeypatch.chdir(tmp_path / "lone-eval")
    assert main(runs["eval"][1:]) == 0
    assert cells_by_key(tmp_path / "eval" / "results" / "tiny" / "passkey.jsonl") == \
        cells_by_key(tmp_path / "lone-eval" / "results" / "tiny" / "passkey.jsonl")
    monkeypatch.chdir(tmp_path / "lone-finetune")
    assert recipe_cli()(runs["finetune"][2:]) == 0
    monkeypatch.undo()

    import torch
    from safetensors.torch import load_file

    got, expected = (
        load_file(tmp_path / d / "run" / "adapter_model.safetensors") for d in ("finetune", "lone-finetune")
    )
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])

    def steps(d):
        return [
            json.loads(line)["step"] for line in (tmp_path / d / "run" / "train_log.jsonl").read_text().splitlines()
        ]

    assert steps("finetune") == steps("lone-finetune") == [1, 2]  # no interleaved logs


def test_a_lock_left_by_a_dead_process_is_taken_and_removed(tiny_llama_dir, tmp_path):
    """flock dies with its process: a lock file of a killed run (here: a pid that is gone) does not block."""
    from longctx.cli import main
    from longctx.locks import lock_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = lock_path(tmp_path / "out")
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "started": 0}))
    assert main(["patch", "--model", str(tiny_llama_dir), "--base", "1e6", "--out", str(tmp_path / "out")]) == 0
    assert not lock.exists()
    assert (tmp_path / "out" / "config.json").is_file()


# ----------------------------------------------------------------------- which model the results measured
def test_a_second_model_under_the_same_label_is_refused_and_force_starts_over(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    """Two models whose folders share a name: the second run used to exit 0 with the first one's cells."""
    from conftest import make_tiny_llama

    from longctx.cli import main
    from longctx.files import recorded_path

    first = tmp_path / "a" / "model"
    shutil.copytree(tiny_llama_dir, first)
    second = make_tiny_llama(tmp_path / "b" / "model", seed=1)
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "ppl", "--lengths", "64", "--out", "results"]
    assert main([*argv, "--model", str(first)]) == 0
    cells = (tmp_path / "results" / "model" / "ppl.jsonl").read_text()
    fingerprint = json.loads((tmp_path / "results" / "model" / "model.json").read_text())["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint["id"]) and "model.safetensors" in fingerprint["model"]
    capsys.readouterr()
    assert main([*argv, "--model", str(second)]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "holds results of another model")
    assert (tmp_path / "results" / "model" / "ppl.jsonl").read_text() == cells
    suite = tmp_path / "s.yaml"
    suite.write_text("tasks: {ppl: {lengths: 64}}\n")
    assert main(["eval", "suite", str(suite), "--model", str(second), "--out", "results"]) == 2
    # the same model resumes (nothing to compute), another label takes the second, --force starts over
    assert main([*argv, "--model", str(first)]) == 0
    assert main([*argv, "--model", str(second), "--label", "model-b"]) == 0
    assert main([*argv, "--model", str(second), "--force"]) == 0
    after = json.loads((tmp_path / "results" / "model" / "model.json").read_text())
    assert after["fingerprint"]["id"] != fingerprint["id"] and after["source"] == recorded_path(second)


def test_a_label_cannot_escape_out(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from longctx.cli import main

    monkeypatch.chdir(tmp_path)
    for label in ("../x", str(tmp_path / "abs"), "..", "a/../../x"):
        assert main(["eval", "ppl", "--model", str(tiny_llama_dir), "--lengths", "64", "--out", "results/inner",
                     "--label", label]) == 2
        assert "must name one folder inside --out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_recipe_with_a_line_that_says_what_was_saved(tiny_llama_dir, tmp_path, signum):
    """The progress bar is on (no TQDM_DISABLE): the message must still start a line of its own."""
    (tmp_path / "docs.jsonl").write_text(DOCS)
    env = {k: v for k, v in ENV.items() if k != "TQDM_DISABLE"}
    argv = [sys.executable, str(RECIPE), "--model", str(tiny_llama_dir), "--data", "docs.jsonl", "--seq-len", "32",
            "--max-steps", "100000", "--save-every", "2", "--report-to", "none", "--out", "run"]
    # a suite started in the background (`pytest &`) hands its children SIGINT ignored, and Python then keeps it so
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), stderr[-2000:]
    assert "Traceback" not in stderr
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    lines = [line for line in stderr.split("\n") if line.startswith(f"finetune: stopped by {name}")]
    assert len(lines) == 1, stderr[-2000:]
    kept = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert f"the last checkpoint is {kept[-1].relative_to(tmp_path)}" in lines[0] and lines[0].endswith("--resume")
    assert not [p for p in (tmp_path / "run").rglob(".*") if "longctx-" in p.name or ".tmp-" in p.name]


def test_sigterm_of_an_eval_says_what_is_kept(tiny_llama_dir, tmp_path):
    argv = [str(LONGCTX), "eval", "ppl", "--model", str(tiny_llama_dir), "--lengths", "64,128,256", "--docs", "300",
            "--out", "results"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "results" / "tiny-llama0" / "model.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("longctx: stopped by SIGTERM: every finished result is kept")


# ------------------------------------------------------------------------------------- atomic exports
def test_a_failed_full_export_leaves_the_run_folder_as_it_was(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """save_pretrained wrote config.json and then failed (a full disk in the weights): nothing of it is in OUT,
    and --resume exports once the disk has room."""
    import errno

    from transformers import PreTrainedModel

    (tmp_path / "docs.jsonl").write_text(DOCS)
    flags = [
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(tmp_path / "docs.jsonl"),
        "--seq-len",
        "32",
        "--max-steps",
        "1",
        "--finetune",
        "full",
        "--report-to",
        "none",
        "--out",
        str(tmp_path / "run"),
    ]
    real = PreTrainedModel.save_pretrained

    def half(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", half)
    capsys.readouterr()
    assert recipe_cli()(flags) == 2
    assert_one_line_error(2, capsys.readouterr().err, "No space left on device", "finetune")
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if "longctx-" in p.name]
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    assert recipe_cli()([*flags, "--resume"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
