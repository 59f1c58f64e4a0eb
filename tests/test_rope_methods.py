"""The registry of rope methods is the one place a method is described: flags, PatchSpec fields, validation, config
keys, frequencies and the README table all follow from it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from longctx import rope_config, rope_methods
from longctx.errors import UsageError
from longctx.patch import PatchSpec, add_patch_arguments, patch_config, spec_from_args

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"model_type": "llama", "hidden_size": 512, "num_attention_heads": 4, "head_dim": 128,
         "max_position_embeddings": 4096, "rope_theta": 10000.0}
# Modules on the patch path: none of them may compare anything with a method name (the registry does).
PATCH_PATH = ("patch.py", "patch_cli.py", "rope.py", "rope_config.py", "checkpoint.py", "analyze.py", "train/args.py")


def readme_table() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `--method`"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[start:end])


def test_readme_methods_table_is_generated_from_the_registry():
    assert readme_table() == rope_methods.methods_table(), (
        "README.md's methods table is stale: paste the output of\n  python -c 'from longctx.rope_methods import "
        "methods_table; print(methods_table())'")


def test_every_option_is_a_flag_and_a_patch_spec_field():
    parser = argparse.ArgumentParser()
    add_patch_arguments(parser)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    names = [option.name for option in rope_methods.options()]
    assert {option.flag for option in rope_methods.options()} <= flags
    assert [f.name for f in dataclasses.fields(PatchSpec)] == [*names, "extra"]


def test_flags_reach_the_spec_and_defaults_are_written_from_one_place():
    parser = argparse.ArgumentParser()
    add_patch_arguments(parser)
    spec = spec_from_args(parser.parse_args(["--method", "yarn", "--factor", "4", "--beta-fast", "16"]))
    assert spec.to_dict() == {"method": "yarn", "factor": 4.0, "beta_fast": 16.0}
    written = patch_config(LLAMA, spec)["rope_parameters"]
    yarn = rope_methods.METHODS["yarn"]
    assert written["beta_fast"] == 16.0 and written["beta_slow"] == yarn.setting({}, "beta_slow") == 1.0
    assert "attention_factor" not in written  # no default: transformers derives 0.1·ln s + 1
    llama3 = patch_config(LLAMA, PatchSpec(method="llama3", factor=8))["rope_parameters"]
    assert (llama3["low_freq_factor"], llama3["high_freq_factor"]) == (1.0, 4.0)


def test_base_alone_means_the_base_method_and_a_factor_needs_a_method():
    assert rope_methods.implied_method({"base": 1e6}) == "base"
    with pytest.raises(UsageError, match=r"--factor needs a --method \(linear, ntk"):
        rope_methods.implied_method({"base": 1e6, "factor": 2})
    with pytest.raises(UsageError, match="give --method"):
        rope_methods.implied_method({"target_length": 8192})


@pytest.mark.parametrize(
    "values,message",
    [
        ({"method": "rope-magic"}, "unknown method 'rope-magic': choose one of base, linear"),
        ({"method": "linear", "factor": 2, "beta_fast": 16}, "--beta-fast only apply to --method yarn"),
        ({"method": "yarn", "factor": 2, "low_freq_factor": 2}, "--low-freq-factor only apply to --method llama3"),
        (
            {"method": "yarn", "factor": 2, "beta_fast": 1, "beta_slow": 2},
            "--beta-fast must be greater than --beta-slow",
        ),
        (
            {"method": "llama3", "factor": 2, "low_freq_factor": 4, "high_freq_factor": 2},
            "--high-freq-factor must be greater",
        ),
        ({"method": "yarn", "factor": float("nan")}, "--factor must be a finite number > 0"),
        ({"method": "yarn", "factor": 1e300}, "--factor 1e[+]300 is absurdly large"),
        ({"method": "yarn", "factor": 0.5}, "--factor must be ≥ 1 for yarn"),
        ({"method": "base", "base": 1e6, "factor": 2}, "--factor has no meaning for --method base"),
        ({"method": "base"}, "method base needs --base"),
        ({"method": "linear", "target_length": 1 << 30}, "--target-length 1073741824 is above 16,777,216 tokens"),
        ({"method": "linear", "original_length": 2.5}, "--original-length must be a positive integer"),
    ],
)
def test_bad_settings_are_one_line_usage_errors_naming_the_flag(values, message):
    with pytest.raises(UsageError, match=message):
        rope_methods.validate(values)


def test_architectures_take_only_the_rope_types_their_config_accepts():
    assert set(rope_methods.methods_for("phi3")) == {n for n, m in rope_methods.METHODS.items()
                                                     if m.rope_type in ("default", "longrope")}
    assert rope_methods.methods_for("llama") == tuple(rope_methods.METHODS)


def test_reading_a_config_dispatches_on_its_rope_type():
    assert rope_methods.for_rope_type("default").name == "base"
    assert rope_methods.for_rope_type("yarn").name == "yarn"
    assert rope_methods.for_rope_type("mrope") is None
    with pytest.raises(ValueError, match="not modelled"):
        rope_methods.inv_freq_for({"rope_type": "mrope", "rope_theta": 1e4}, 64, max_position_embeddings=4096)


def test_dynamic_claims_factor_times_the_trained_length():
    patched = patch_config(LLAMA, PatchSpec(method="dynamic", factor=4))
    assert patched["max_position_embeddings"] == 4096 and rope_config.max_length(patched) == 16384
    assert rope_config.max_length(patch_config(LLAMA, PatchSpec(method="yarn", factor=4))) == 16384


def test_an_option_belongs_to_one_method():
    class Clash(rope_methods.RopeMethod):
        name = rope_type = "clash"
        options = (rope_methods.Option("beta_fast", float, "taken by yarn"),)

    with pytest.raises(ValueError, match="already registered"):
        rope_methods.register(Clash)
    assert "clash" not in rope_methods.METHODS


@pytest.mark.parametrize("module", PATCH_PATH)
def test_no_module_on_the_patch_path_branches_on_a_method_name(module):
    names = set(rope_methods.METHODS)
    tree = ast.parse((ROOT / "longctx" / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            constants = {c.value for side in (node.left, *node.comparators) for c in ast.walk(side)
                         if isinstance(c, ast.Constant)}
            assert not constants & names, f"{module}:{node.lineno} compares with a method name: ask rope_methods"
