"""`longctx patch --out X.gguf`: the metadata llama.cpp reads, tensors byte for byte, refusals, kill -9.

The expected keys are written out here from llama.cpp's own code (src/llama-model.cpp's hparams loading,
src/llama-context.cpp's YaRN attention factor, convert_hf_to_gguf.py's rope_freqs and LongRoPE tensors), not
derived from longctx.gguf_meta, so a mapping error cannot agree with itself. Files are tiny GGUFs written
with the gguf package; one test uses the real SmolLM2 Q4_1 file. `make test-llamacpp` runs them in llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
ORIGINAL, DIM, BASE = 4096, 16, 10000.0


def write_tiny_gguf(path: Path, *, arch: str = "llama", context: int = ORIGINAL) -> Path:
    """A llama-shaped GGUF: f32 and f16 tensors, a Q8_0 one (raw bytes), the keys llama.cpp's loader reads."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(context)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_rope_dimension_count(DIM)
    writer.add_rope_freq_base(BASE)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_tensor("token_embd.weight", rng.standard_normal((8, 64)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_k.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in reader.tensors}


def patch(argv: list[str]) -> subprocess.CompletedProcess:
    """`longctx patch ARGV` in this process (the CLI's own main: exit code and stderr as a user sees them)."""
    import contextlib
    import io

    from longctx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["patch", *argv])
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def converter_llama3_factors(factor, low, high, original, base, dim) -> list[float]:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors, verbatim in numpy."""
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


SCALING = {"llama.rope.scaling.original_context_length": ORIGINAL, "llama.rope.scaling.finetuned": False}
EXPECTED = {  # flags -> llama.cpp keys (after the patch) that must hold these values
    "base": (
        ["--base", "1e6", "--target-length", "16384"],
        {"llama.rope.freq_base": 1e6, "llama.context_length": 16384},
    ),
    "ntk": (
        ["--method", "ntk", "--factor", "4"],
        {"llama.rope.freq_base": BASE * 4 ** (DIM / (DIM - 2)), "llama.context_length": 4 * ORIGINAL},
    ),
    "linear": (
        ["--method", "linear", "--factor", "4"],
        {
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": 4.0,
            "llama.context_length": 4 * ORIGINAL,
            **SCALING,
        },
    ),
    "yarn": (
        ["--method", "yarn", "--factor", "2"],
        {
            "llama.rope.scaling.type": "yarn",
            "llama.rope.scaling.factor": 2.0,
            "llama.context_length": 2 * ORIGINAL,
            "llama.rope.freq_base": BASE,
            "llama.rope.scaling.yarn_beta_fast": 32.0,
            "llama.rope.scaling.yarn_beta_slow": 1.0,
            **SCALING,
        },
    ),
    "yarn-attention": (
        ["--method", "yarn", "--factor", "2", "--attention-factor", "1.2"],
        {"llama.rope.scaling.attn_factor": 1.2 / (0.1 * math.log(2) + 1)},
    ),
    "llama3": (
        ["--method", "llama3", "--factor", "8"],
        {"llama.context_length": 8 * ORIGINAL, "llama.rope.freq_base": BASE},
    ),
    "longrope": (
        ["--method", "longrope", "--factor", "2", "--rope-factors", "FACTORS"],
        {
            "llama.rope.scaling.type": "longrope",
            "llama.rope.scaling.attn_factor": math.sqrt(1 + math.log(2) / math.log(ORIGINAL)),
            "llama.context_length": 2 * ORIGINAL,
            **SCALING,
        },
    ),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_written_metadata_is_what_llama_cpp_reads(name, tiny_gguf, tmp_path):
    flags, expected = EXPECTED[name]
    factors = {
        "short_factor": [1.0 + i / 10 for i in range(DIM // 2)],
        "long_factor": [2.0 + i for i in range(DIM // 2)],
    }
    (tmp_path / "f.json").write_text(json.dumps(factors))
    flags = [str(tmp_path / "f.json") if f == "FACTORS" else f for f in flags]
    before = digest(tiny_gguf)
    result = patch(["--model", str(tiny_gguf), "--out", str(tmp_path / "out.gguf"), *flags])
    assert result.returncode == 0, result.stderr
    fields, tensors = read(tmp_path / "out.gguf")
    for key, value in expected.items():
        assert fields.get(key) == (value if isinstance(value, (str, bool)) else pytest.approx(value, rel=1e-6)), key
    if name in ("base", "ntk", "llama3"):  # llama.cpp's default (linear with no factor) is no scaling
        assert "llama.rope.scaling.type" not in fields and "llama.rope.scaling.factor" not in fields
    if name == "longrope":  # a factor key would be applied by llama.cpp as a linear scale on top of the tensors
        assert "llama.rope.scaling.factor" not in fields
        assert np.frombuffer(tensors["rope_factors_long.weight"][1], np.float32).tolist() == factors["long_factor"]
        assert np.frombuffer(tensors["rope_factors_short.weight"][1], np.float32) == pytest.approx(
            factors["short_factor"]
        )
    if name == "llama3":
        got = np.frombuffer(tensors["rope_freqs.weight"][1], np.float32)
        assert got == pytest.approx(converter_llama3_factors(8.0, 1.0, 4.0, ORIGINAL, BASE, DIM), rel=1e-5)
    record = json.loads(fields["longctx.patch"])
    assert record["context_length"] == fields["llama.context_length"] and record["command"].startswith("longctx patch")
    assert (tmp_path / "out.Modelfile").read_text().splitlines()[1:] == [
        "FROM ./out.gguf",
        f"PARAMETER num_ctx {fields['llama.context_length']}",
    ]
    assert digest(tiny_gguf) == before


def test_every_method_has_a_gguf_form_or_a_refusal():
    from longctx import rope_methods
    from longctx.gguf_meta import FORMS, NO_GGUF_FORM

    for method in rope_methods.METHODS.values():
        assert (method.rope_type in FORMS) != (method.rope_type in NO_GGUF_FORM), method.name


def test_gguf_to_gguf_keeps_every_tensor_byte_for_byte(tiny_gguf, tmp_path):
    assert (
        patch(
            ["--model", str(tiny_gguf), "--out", str(tmp_path / "o.gguf"), "--method", "yarn", "--factor", "2"]
        ).returncode
        == 0
    )
    src_fields, src = read(tiny_gguf)
    out_fields, out = read(tmp_path / "o.gguf")
    assert out == src  # same names, same GGML types (Q8_0 stays Q8_0), same bytes
    assert {
        k: v for k, v in out_fields.items() if ".rope." not in k and k not in ("llama.context_length", "longctx.patch")
    } == {k: v for k, v in src_fields.items() if ".rope." not in k and k != "llama.context_length"}


def test_real_smollm2_q4_stays_q4_and_gets_yarn(tmp_path):
    from longctx.sources import smollm2_gguf_path

    source = smollm2_gguf_path()
    assert (
        patch(
            ["--model", str(source), "--out", str(tmp_path / "s.gguf"), "--method", "yarn", "--factor", "2"]
        ).returncode
        == 0
    )
    a, b = gguf.GGUFReader(source), gguf.GGUFReader(tmp_path / "s.gguf")
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a.tensors, b.tensors, strict=True))
    fields = {k: f.contents() for k, f in b.fields.items()}
    assert (
        fields["llama.context_length"],
        fields["llama.rope.scaling.type"],
        fields["llama.rope.scaling.factor"],
        fields["llama.rope.scaling.original_context_length"],
        fields["llama.rope.freq_base"],
    ) == (16384, "yarn", 2.0, 8192, 1e5)
    assert fields["tokenizer.ggml.pre"] == "smollm" and fields["general.file_type"] == 3


def damaged(tmp_path: Path, kind: str) -> Path:
    path = write_tiny_gguf(tmp_path / f"{kind}.gguf", arch="gpt2" if kind == "arch" else "llama")
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        data = data[: len(data) - 100]
    elif kind == "not-gguf":
        data[:4] = b"PK\x03\x04"
    elif kind == "quant":  # the GGML type of the first tensor becomes 99
        name = b"token_embd.weight"
        at = data.index(name) + len(name) + 4 + 8 * 2
        data[at:at + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("truncated", "truncated"),
        ("not-gguf", "not a GGUF"),
        ("quant", "quantization type"),
        ("arch", "architecture 'gpt2'"),
    ],
)
def test_bad_files_fail_in_one_line_and_write_nothing(kind, message, tmp_path):
    source = damaged(tmp_path, kind)
    before = digest(source)
    result = patch(
        ["--model", str(source), "--out", str(tmp_path / "out" / "x.gguf"), "--method", "yarn", "--factor", "2"]
    )
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )
    assert digest(source) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,message", [
    (["--method", "dynamic", "--factor", "2"], "use --method yarn"),
    (["--method", "yarn", "--factor", "2", "--beta-fast", "16"], "ignores yarn_beta_fast"),
    (["--method", "yarn", "--factor", "0.5"], "must be ≥ 1"),
    (["--method", "yarn", "--target-length", "1000"], "below the trained length"),
])
def test_settings_without_a_gguf_meaning_are_refused(flags, message, tiny_gguf, tmp_path):
    result = patch(["--model", str(tiny_gguf), "--out", str(tmp_path / "x.gguf"), *flags])
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_output_onto_the_source_or_over_a_foreign_file_is_refused(tiny_gguf, tmp_path):
    before = digest(tiny_gguf)
    result = patch(["--model", str(tiny_gguf), "--out", str(tiny_gguf), "--base", "1e6", "--force"])
    assert result.returncode == 2 and "source" in result.stderr
    foreign = write_tiny_gguf(tmp_path / "theirs.gguf")
    result = patch(["--model", str(tiny_gguf), "--out", str(foreign), "--base", "1e6", "--force"])
    assert result.returncode == 2 and "not written by longctx" in result.stderr
    assert digest(tiny_gguf) == before


def test_kill_9_while_writing_leaves_no_gguf_and_a_rerun_cleans_up(tiny_gguf, tmp_path):
    out = tmp_path / "k.gguf"
    argv = [sys.executable, "-m", "longctx", "patch", "--model", str(tiny_gguf), "--out", str(out), "--base", "1e6"]
    killed = subprocess.run(argv, cwd=ROOT, env={**ENV, "LONGCTX_KILL_AT": "gguf:tensor@2"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and [p.name for p in tmp_path.glob(".k.gguf.longctx-partial.*")]
    assert subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True).returncode == 0
    assert out.is_file() and not list(tmp_path.glob(".k.gguf.longctx-partial.*"))


def test_hf_to_gguf_loads_back_with_the_same_logits(tiny_llama_dir, tmp_path):
    """The q/k rows are permuted for GGML's rotary layout: transformers' GGUF reader undoes it, so the logits agree."""
    import torch
    from transformers import AutoModelForCausalLM

    result = patch(
        [
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "t.gguf"),
            "--method",
            "yarn",
            "--factor",
            "2",
            "--gguf-dtype",
            "f32",
        ]
    )
    assert result.returncode == 0, result.stderr
    fields, tensors = read(tmp_path / "t.gguf")
    assert (fields["llama.rope.scaling.type"], fields["llama.context_length"], fields["tokenizer.ggml.model"]) == (
        "yarn",
        512,
        "gpt2",
    )
    assert tensors["blk.0.attn_q.weight"][0] == gguf.GGMLQuantizationType.F32
    ids = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])
    want = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()(ids).logits
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="t.gguf", dtype=torch.float32).eval()
    # transformers' GGUF reader takes only freq_base of a llama file, so `back` runs the unscaled rope, like `want`
    torch.testing.assert_close(back(ids).logits, want, atol=1e-4, rtol=1e-4)


def test_longctx_reads_the_scaling_of_a_gguf_back(tiny_llama_dir, tmp_path):
    """transformers' GGUF reader keeps only freq_base: longctx restores the scaling, so `longctx eval X.gguf` is
    patched."""
    from longctx import rope_config
    from longctx.checkpoint_files import read_config_json
    from longctx.sources import resolve_model_dir

    assert (
        patch(
            [
                "--model",
                str(tiny_llama_dir),
                "--out",
                str(tmp_path / "y.gguf"),
                "--method",
                "yarn",
                "--factor",
                "2",
                "--gguf-dtype",
                "f32",
            ]
        ).returncode
        == 0
    )
    params = rope_config.rope_parameters(read_config_json(resolve_model_dir(tmp_path / "y.gguf")))
    assert {k: params[k] for k in ("rope_type", "factor", "original_max_position_embeddings", "beta_fast")} == \
           {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256, "beta_fast": 32.0}
