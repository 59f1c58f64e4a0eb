"""LongRoPE (`--method longrope --rope-factors FILE.json`): transformers derives longctx's frequencies from the
patched config, short factors within the trained length and long ones past it, and bad factor files are one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_patch_parity import LLAMA, transformers_rotary, v4_only, v5_only
from test_transformers4_parity import CHILD, TF4

from longctx import rope, rope_config, rope_methods
from longctx.errors import UsageError
from longctx.patch import PatchSpec, patch_config

HALF = 64  # LLAMA rotates head_dim 128: one factor per dimension pair


@pytest.fixture
def factors(tmp_path):
    """Short factors near 1, long ones growing towards the slow dimensions, as LongRoPE's search finds them."""
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"short_factor": [1.0 + 0.01 * i for i in range(HALF)],
                                "long_factor": [1.0 + 0.25 * i for i in range(HALF)]}))
    return path


def test_patched_config_writes_the_longrope_keys(factors):
    patched = patch_config(LLAMA, PatchSpec(method="longrope", factor=4, rope_factors=str(factors)))
    params = patched["rope_parameters"]
    assert params["rope_type"] == "longrope" and params["factor"] == 4.0
    assert params["original_max_position_embeddings"] == 4096 and patched["max_position_embeddings"] == 16384
    assert len(params["short_factor"]) == len(params["long_factor"]) == HALF
    assert (
        patched["rope_scaling"]["type"] == "longrope"
        and patched["rope_scaling"]["long_factor"] == params["long_factor"]
    )


@pytest.mark.parametrize("layout", [v5_only, v4_only, lambda c: c], ids=["v5", "v4", "both"])
def test_patched_config_frequencies_match_transformers(factors, layout):
    patched = patch_config(LLAMA, PatchSpec(method="longrope", factor=4, base=5e5, rope_factors=str(factors)))
    ours, our_scaling = rope_methods.inv_freq_for(rope_config.rope_parameters(patched), 128,
                                          max_position_embeddings=patched["max_position_embeddings"])
    theirs, their_scaling = transformers_rotary(layout(patched))
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)
    assert their_scaling == pytest.approx(our_scaling, rel=1e-6)
    assert our_scaling == pytest.approx(math.sqrt(1 + math.log(4) / math.log(4096)))


@pytest.mark.parametrize("seq_len", [2048, 4096, 4097, 16384])
def test_long_factors_apply_past_the_trained_length_as_in_rope_init_functions(factors, seq_len):
    patched = patch_config(LLAMA, PatchSpec(method="longrope", target_length=16384, rope_factors=str(factors)))
    params = rope_config.rope_parameters(patched)
    ours, _ = rope_methods.inv_freq_for(params, 128, max_position_embeddings=16384, seq_len=seq_len)
    theirs, _ = transformers_rotary(patched, seq_len=seq_len)  # ROPE_INIT_FUNCTIONS["longrope"]
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)
    ext = params["long_factor"] if seq_len > 4096 else params["short_factor"]
    torch.testing.assert_close(ours, rope.default_inv_freq(1e4, 128) / torch.tensor(ext, dtype=torch.float64))


@pytest.mark.compat
@pytest.mark.skipif(
    not (TF4 / "transformers").is_dir(), reason=f"no transformers 4 install at {TF4} (make test-compat makes one)"
)
def test_transformers4_reads_the_longrope_config_like_longctx(factors, tmp_path):
    patched = patch_config(LLAMA, PatchSpec(method="longrope", factor=4, rope_factors=str(factors)))
    configs = {"both": patched, "v4-keys-only": v4_only(patched)}
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "configs.json")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(TF4)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, scaling = rope_methods.inv_freq_for(rope_config.rope_parameters(patched), 128, max_position_embeddings=16384)
    for name, result in report["results"].items():
        torch.testing.assert_close(
            torch.tensor(result["inv_freq"], dtype=torch.float64), ours, rtol=1e-6, atol=0, msg=name
        )
        assert result["scaling"] == pytest.approx(scaling, rel=1e-6), name


def test_flag_and_recipe_key_reach_the_spec(factors, tmp_path):
    from longctx.train.args import parse_args, patch_spec

    config = tmp_path / "c.yaml"
    config.write_text(f"method: longrope\nfactor: 4\nrope_factors: {factors}\n")
    spec = patch_spec(parse_args(["--config", str(config)]).patch)
    assert spec.to_dict() == {"method": "longrope", "factor": 4.0, "rope_factors": str(factors)}
    assert (
        patch_spec(parse_args(["--method", "longrope", "--factor", "4", "--rope-factors", str(factors)]).patch) == spec
    )


def test_longrope_checkpoint_loads_in_transformers(tiny_llama_dir, factors, tmp_path):
    from transformers import AutoModelForCausalLM

    from longctx.checkpoint import write_patched_checkpoint

    half = rope_config.rotary_dim(json.loads((tiny_llama_dir / "config.json").read_text())) // 2
    factors.write_text(json.dumps({"short_factor": [1.0] * half, "long_factor": [2.0] * half}))
    out = write_patched_checkpoint(tiny_llama_dir, tmp_path / "out", PatchSpec(method="longrope", factor=4,
                                                                                rope_factors=str(factors)))
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(16)[None]).logits).all()


def test_phi3_takes_longrope(factors, tmp_path):
    """Phi-3 configs accept only default and longrope rope types: longrope is their one scaling method."""
    from test_architectures import rotary_buffers, save_tiny
    from transformers import AutoModelForCausalLM

    from longctx.checkpoint import write_patched_checkpoint

    src = save_tiny("phi3", tmp_path / "src")  # partial_rotary_factor 0.5: the factors cover the rotated dims only
    half = rope_config.rotary_dim(json.loads((src / "config.json").read_text())) // 2
    factors.write_text(
        json.dumps({"short_factor": [1 + i / 10 for i in range(half)], "long_factor": [2.0 + i for i in range(half)]})
    )
    out = write_patched_checkpoint(
        src, tmp_path / "out", PatchSpec(method="longrope", factor=4, rope_factors=str(factors))
    )
    config = json.loads((out / "config.json").read_text())
    expected, _ = rope_methods.inv_freq_for(rope_config.rope_parameters(config), 2 * half, max_position_embeddings=2048)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert any(torch.allclose(buf.double(), expected, rtol=1e-6, atol=0) for buf in rotary_buffers(model)
               if buf.shape == expected.shape)


BAD_FACTORS = {
    "missing file": (None, "no such file"),
    "not json": ("{short", "is not valid JSON"),
    "a list": ([1.0], "must hold an object"),
    "no long_factor": ({"short_factor": [1.0] * HALF}, "long_factor must be a non-empty list"),
    "zero": (
        {"short_factor": [0.0] * HALF, "long_factor": [1.0] * HALF},
        "short_factor holds 0.0; every factor must be",
    ),
    "nan": ('{"short_factor": [NaN], "long_factor": [1.0]}', "short_factor holds nan"),
    "text": ({"short_factor": ["1"] * HALF, "long_factor": [1.0] * HALF}, "holds '1'"),
    "wrong length": ({"short_factor": [1.0] * 8, "long_factor": [1.0] * 8}, "short_factor has 8 values; .* needs 64"),
}


@pytest.mark.parametrize("case", list(BAD_FACTORS))
def test_bad_factor_files_are_one_line_usage_errors(case, tmp_path):
    content, message = BAD_FACTORS[case]
    path = tmp_path / "factors.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UsageError, match=message) as error:
        patch_config(LLAMA, PatchSpec(method="longrope", factor=4, rope_factors=str(path)))
    assert "\n" not in str(error.value)


def test_rope_factors_belong_to_longrope_and_longrope_needs_them(factors):
    with pytest.raises(UsageError, match="--rope-factors only apply to --method longrope"):
        patch_config(LLAMA, PatchSpec(method="yarn", factor=4, rope_factors=str(factors)))
    with pytest.raises(UsageError, match="method longrope needs --rope-factors"):
        patch_config(LLAMA, PatchSpec(method="longrope", factor=4))
    with pytest.raises(UsageError, match="needs --factor or --target-length"):
        patch_config(LLAMA, PatchSpec(method="longrope", rope_factors=str(factors)))
