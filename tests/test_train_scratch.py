"""The recipe options of the from-scratch studies: a model-config override file, the byte tokenizer, a
passkey mix, and a base change when training on."""

from __future__ import annotations

import json

import pytest
from test_train_finetune import finetune, losses

from longctx.byte_tokenizer import BYTE_OFFSET


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                                "max_position_embeddings": 512}))
    return path


def test_byte_level_model_from_scratch_with_a_passkey_mix_then_a_base_change(tiny_llama_dir, small, tmp_path):
    from transformers import AutoTokenizer

    doc = tmp_path / "book.txt"
    doc.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 60)
    out = tmp_path / "scratch"
    assert (
        finetune(
            "--model",
            tiny_llama_dir,
            "--init",
            "scratch",
            "--finetune",
            "full",
            "--model-config",
            small,
            "--tokenizer",
            "bytes",
            "--base",
            "500",
            "--retrieval-mix",
            "0.2",
            "--copy-mix",
            "0.3",
            "--data",
            doc,
            "--seq-len",
            512,
            "--max-steps",
            3,
            "--lr",
            "1e-3",
            "--out",
            out,
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (32, 1, 259)
    assert config["max_position_embeddings"] == 512 and config["rope_theta"] == 500
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Ab", add_special_tokens=False)["input_ids"] == [ord("A") + BYTE_OFFSET, ord("b") + BYTE_OFFSET]
    saved = json.loads((out / "finetune_args.json").read_text())
    assert (saved["retrieval_mix"], saved["copy_mix"]) == (0.2, 0.3)
    assert sorted(losses(out)) == [1, 2, 3]

    tuned = tmp_path / "tuned"  # continued training at the same length with another base (arXiv 2310.05209)
    assert finetune("--model", out, "--finetune", "full", "--base", "1e6", "--data", doc, "--seq-len", 512,
                    "--max-steps", 2, "--out", tuned) == 0
    config = json.loads((tuned / "config.json").read_text())
    assert config["rope_theta"] == 1e6 and config["vocab_size"] == 259


@pytest.mark.parametrize("flags, message", [
    (["--model-config", "{small}"], "use them with --init scratch"),
    (["--tokenizer", "bytes"], "use them with --init scratch"),
    (["--init", "scratch", "--finetune", "full", "--tokenizer", "chars"], "--tokenizer takes 'bytes'"),
    (["--init", "scratch", "--finetune", "full", "--model-config", "missing.json"], "does not exist"),
    (["--retrieval-mix", "1.5"], "--retrieval-mix must be in [0, 1)"),
    (["--copy-mix", "-0.5"], "--copy-mix must be in [0, 1)"),
    (["--retrieval-mix", "0.5", "--copy-mix", "0.5"], "must stay below 1"),
])
def test_bad_scratch_options_fail_in_one_line(tiny_llama_dir, small, tmp_path, capsys, flags, message):
    flags = [f.format(small=small) for f in flags]
    assert finetune("--model", tiny_llama_dir, *flags, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
