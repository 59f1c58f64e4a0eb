"""Fine-tune settings: YAML + flags (precedence, coercion, unknown keys), schedule, patch options, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longctx import rope_methods
from longctx.errors import UsageError
from longctx.train.args import check_args, known_keys, load_yaml, parse_args, patch_spec
from longctx.train.loop import lr_factor, optimizer_and_schedule

ROOT = Path(__file__).resolve().parents[1]
# the shipped recipe configs and the study configs of recipes/configs (each file in one place)
CONFIGS = sorted([*(ROOT / "longctx" / "train" / "configs").glob("*.yaml"),
                  *(ROOT / "recipes" / "configs").glob("*.yaml")])
ACCELERATE = sorted((ROOT / "longctx" / "train" / "accelerate").glob("*.yaml"))


def test_recipe_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"smollm2-135m-base1e6.yaml", "llama2-7b-lora-4k.yaml", "llama3-8b-full-8k.yaml"} <= names
    assert {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero3.yaml", "cpu.yaml"} <= {
        p.name for p in ACCELERATE
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_yaml_has_only_known_keys(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= known_keys(), set(raw) - known_keys()
    args = parse_args(["--config", str(path)])
    check_args(args)
    spec = patch_spec(args.patch)
    assert spec is not None  # every shipped recipe extends the context: a larger base or a scaling method
    assert (spec.base and spec.base >= 1e6) or (rope_methods.METHODS[spec.method].scales and spec.factor > 1)


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_use_accelerate_engines(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    engine = {"fsdp.yaml": "FSDP", "deepspeed_zero3.yaml": "DEEPSPEED", "multi_gpu.yaml": "MULTI_GPU"}.get(
        path.name, "NO"
    )
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


def sample(option) -> float:
    """A valid value for a numeric patch option that differs from its default."""
    return 2 * (option.default or 1)


NUMERIC = [m for m in rope_methods.METHODS.values() if m.scales and all(o.type in (int, float) for o in m.options)]


@pytest.mark.parametrize("method", NUMERIC, ids=lambda m: m.name)  # a method taking a file tests its flag itself
def test_every_registry_option_of_a_method_reaches_the_patch_spec_from_flags_and_yaml(method, tmp_path):
    """PatchArgs is derived from longctx.rope_methods: each method's own options are recipe flags and YAML keys,
    and patch_spec carries their values to the PatchSpec that `longctx patch` would build."""
    values = {"method": method.name, "factor": 2.0, **{o.name: o.type(sample(o)) for o in method.options}}
    flags = [arg for name, value in values.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{name}: {value}\n" for name, value in values.items()))
    from_flags, from_yaml = patch_spec(parse_args(flags).patch), patch_spec(parse_args(["--config", str(config)]).patch)
    assert from_flags == from_yaml
    assert from_flags.to_dict() == values


def test_patch_options_in_yaml_are_coerced_and_overridden_by_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: yarn\nfactor: 4\nbeta-fast: '16'\ntarget_length: 1024.0\noriginal_length: 256\n")
    spec = patch_spec(parse_args(["--config", str(config)]).patch)
    assert spec.factor == 4.0 and spec.beta_fast == 16.0 and spec.target_length == 1024
    assert isinstance(spec.target_length, int)  # YAML reads 1024.0 as a float: coerced to the field's type
    spec = patch_spec(parse_args(["--config", str(config), "--factor", "2", "--target_length", "512"]).patch)
    assert spec.factor == 2.0 and spec.target_length == 512 and spec.beta_fast == 16.0
    config.write_text("target_length: 1.5\n")
    with pytest.raises(UsageError, match="target_length must be an integer"):
        load_yaml(str(config))


def test_unknown_patch_key_suggests_the_registry_name(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("beta_fst: 16\n")
    with pytest.raises(UsageError, match="unknown key 'beta_fst'.*did you mean 'beta_fast'"):
        parse_args(["--config", str(config)])
    config.write_text("method: rope-magic\n")
    with pytest.raises(UsageError, match="method must be one of base, linear"):
        load_yaml(str(config))


def test_bad_flags_are_one_line_usage_errors():
    with pytest.raises(UsageError, match=r"unrecognized arguments: --beta-fst 16 \(see finetune --help\)"):
        parse_args(["--beta-fst", "16"])
    with pytest.raises(UsageError, match="argument --factor: invalid float value: 'two'"):
        parse_args(["--factor", "two"])
    with pytest.raises(UsageError, match="--beta-fast only apply to --method yarn"):
        patch_spec(parse_args(["--method", "linear", "--factor", "2", "--beta-fast", "16"]).patch)


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


def test_optimizer_is_fused_adamw_with_the_same_update_as_the_for_loop():
    """On CPU the fused kernel (the Trainer's default optimizer too) must give the update of torch's reference
    for-loop AdamW with our groups: decay on matrices only, betas and lr from the arguments."""
    import torch

    t = parse_args(["--lr", "1e-2", "--weight-decay", "0.1"]).train

    def params():
        torch.manual_seed(0)
        weight, bias = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(8))
        for p in (weight, bias):
            p.grad = torch.randn_like(p)
        return [weight, bias]

    fused_params, loop_params = params(), params()
    optimizer, scheduler = optimizer_and_schedule(fused_params, t)
    assert all(group["fused"] for group in optimizer.param_groups)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    reference = torch.optim.AdamW(
        [{"params": loop_params[:1], "weight_decay": 0.1}, {"params": loop_params[1:], "weight_decay": 0.0}],
        lr=scheduler.get_last_lr()[0],
        betas=(t.adam_beta1, t.adam_beta2),
        foreach=False,
    )
    for _ in range(3):
        optimizer.step()
        reference.step()
    for a, b in zip(fused_params, loop_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(fused_params[0], params()[0])  # it did move


def test_every_help_line_renders_as_written():
    """argparse %-formats help strings: a literal % in a field's help (``~30% slower``) must reach --help intact."""
    from longctx.train.args import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "~30% slower" in text and "{'" not in text


# What a resume may change: how long, how often, where and how fast the run goes; nothing that changes the model
# it trains, its data or its optimisation. Written out here so the test does not trust the code it checks.
MAY_CHANGE_ON_RESUME = {"out", "resume", "force", "max_steps", "max_minutes", "save_every", "keep_last", "log_every",
                        "loss_chunk", "liger", "peak_flops", "report_to", "merge", "attn_implementation",
                        "gradient_checkpointing", "trust_remote_code"}


def _another(field, value):
    """A valid-looking value of `field` other than `value`."""
    import dataclasses

    choices = field.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != value)
    kind = str(field.type).replace(" | None", "")
    if kind == "bool":
        return not value
    if kind == "int":
        return 4096 if value is None else value + 1
    if kind == "float":
        return 0.5 if value is None else value + 0.25
    assert kind == "str", (field.name, field.type, dataclasses.MISSING)
    return "something-else" if value != "something-else" else "other"


def test_resume_refuses_every_setting_that_changes_the_run_in_one_line(tmp_path):
    """PoSE, LoRA dropout, YaRN/Llama-3 options and every other setting of the model, data or optimiser must match
    the run a --resume continues; only the settings above may change."""
    import dataclasses
    import json

    from longctx.train.args import GROUPS
    from longctx.train.finetune import ARGS_FILE, check_resume_args

    fields = {f.name: f for group in GROUPS for f in dataclasses.fields(group)}
    saved = parse_args(["--out", str(tmp_path)]).to_dict()
    (tmp_path / ARGS_FILE).write_text(json.dumps(saved))
    must = sorted(set(fields) - MAY_CHANGE_ON_RESUME)
    assert {"pose_target_length", "pose_chunks", "lora_dropout", "beta_fast", "beta_slow", "attention_factor",
            "low_freq_factor", "high_freq_factor", "lr"} <= set(must)
    for name in must:
        changed = {**saved, name: _another(fields[name], saved[name])}
        with pytest.raises(UsageError) as info:
            check_resume_args(tmp_path, changed)
        message = str(info.value)
        assert f"--{name.replace('_', '-')} was" in message and "\n" not in message, (name, message)
    for name in MAY_CHANGE_ON_RESUME:
        check_resume_args(tmp_path, {**saved, name: _another(fields[name], saved[name])})
