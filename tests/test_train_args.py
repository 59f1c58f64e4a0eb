"""Fine-tune settings: YAML + flags, schedule, patch options, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longctx.errors import UsageError
from longctx.train.args import check_args, known_keys, load_yaml, parse_args, patch_spec
from longctx.train.loop import lr_factor

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def test_recipe_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"smollm2-135m-base1e6.yaml", "llama2-7b-lora-4k.yaml", "llama3-8b-full-8k.yaml"} <= names
    assert {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero3.yaml", "cpu.yaml"} <= {p.name for p in ACCELERATE}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_yaml_has_only_known_keys(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= known_keys(), set(raw) - known_keys()
    args = parse_args(["--config", str(path)])
    check_args(args)
    spec = patch_spec(args.patch)
    assert spec is not None  # every shipped recipe extends the context: a larger base or a scaling method
    assert (spec.base and spec.base >= 1e6) or (spec.method in ("linear", "ntk", "dynamic", "yarn", "llama3")
                                                and spec.factor and spec.factor > 1)


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_use_accelerate_engines(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    engine = {"fsdp.yaml": "FSDP", "deepspeed_zero3.yaml": "DEEPSPEED", "multi_gpu.yaml": "MULTI_GPU"}.get(path.name, "NO")
    assert cfg["distributed_type"] == engine


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seq_len: 128\nbase: 1e6\nlora_targets: [q_proj, v_proj]\ngradient_checkpointing: true\n")
    args = parse_args(["--config", str(config), "--seq-len", "64", "--lr", "1e-3"])
    assert args.data.seq_len == 64 and args.train.lr == 1e-3
    assert args.patch.base == 1e6  # PyYAML reads 1e6 as a string: coerced to the field's type
    assert args.tune.lora_targets == "q_proj,v_proj" and args.model.gradient_checkpointing is True
    assert parse_args(["--config", str(config), "--no-gradient-checkpointing"]).model.gradient_checkpointing is False
    assert parse_args(["--seq_len", "32"]).data.seq_len == 32  # underscore spelling too


def test_unknown_yaml_key_names_the_closest_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seq_length: 128\n")
    with pytest.raises(UsageError, match="unknown key 'seq_length'.*did you mean 'seq_len'"):
        load_yaml(str(config))


def test_bad_yaml_values_are_usage_errors(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: ten\n")
    with pytest.raises(UsageError, match="max_steps must be an integer"):
        load_yaml(str(config))
    config.write_text("finetune: qlora\n")
    with pytest.raises(UsageError, match="finetune must be one of lora, full"):
        load_yaml(str(config))


def test_patch_spec_from_flags():
    assert patch_spec(parse_args([]).patch) is None  # no patch options: the model is used as it is
    spec = patch_spec(parse_args(["--base", "1e6"]).patch)
    assert spec.method == "base" and spec.base == 1e6
    spec = patch_spec(parse_args(["--method", "yarn", "--factor", "4"]).patch)
    assert spec.method == "yarn" and spec.factor == 4
    with pytest.raises(UsageError, match="--method"):
        patch_spec(parse_args(["--factor", "4"]).patch)
    with pytest.raises(UsageError, match="--base"):
        patch_spec(parse_args(["--method", "base"]).patch)


def test_patch_options_are_those_of_longctx_patch():
    import dataclasses

    from longctx.patch import PatchSpec
    from longctx.train.args import PatchArgs

    assert {f.name for f in dataclasses.fields(PatchArgs)} == {f.name for f in dataclasses.fields(PatchSpec)} - {"extra"}


def test_check_args_names_the_flag():
    with pytest.raises(UsageError, match="--init scratch.*--finetune full"):
        check_args(parse_args(["--init", "scratch"]))
    with pytest.raises(UsageError, match="--trainable-extra"):
        check_args(parse_args(["--trainable-extra", "lm_head"]))
    with pytest.raises(UsageError, match="--grad-accum must be ≥ 1"):
        check_args(parse_args(["--grad-accum", "0"]))


def test_lr_schedule_warmup_then_decay_to_min():
    kw = {"warmup": 4, "total": 20, "min_ratio": 0.1}
    assert [lr_factor(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(20, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(12, schedule="cosine", **kw) == pytest.approx(0.55)  # halfway: mean of 1 and 0.1
    assert lr_factor(12, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_factor(8, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_factor(15, schedule="constant", **kw) == 1.0
