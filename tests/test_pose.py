"""PoSE position ids (arXiv 2309.10400): ranges, contiguity, determinism, packing and the attention mask."""

from __future__ import annotations

import random

import pytest
import torch

from longctx.train.pose import block_causal_mask, skip_positions


@pytest.mark.parametrize("length,target,chunks", [(64, 1024, 2), (100, 4096, 3), (2, 10, 2), (500, 501, 4)])
def test_skip_positions_are_increasing_below_the_target_in_contiguous_chunks(length, target, chunks):
    for seed in range(50):
        positions = skip_positions(length, target, random.Random(seed), chunks)
        assert len(positions) == length and positions[0] == 0
        steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
        assert all(step >= 1 for step in steps)          # strictly increasing
        assert max(positions) < target                   # never reaches the target length
        assert sum(step > 1 for step in steps) <= chunks - 1  # at most chunks-1 jumps: each chunk is contiguous


def test_skips_cover_distances_up_to_the_target():
    """Across rows, the largest relative distance seen approaches the target (what PoSE trains for)."""
    spans = [skip_positions(64, 2048, random.Random(seed))[-1] for seed in range(400)]
    assert max(spans) > 0.9 * 2048 and min(spans) < 0.2 * 2048


def test_skip_positions_depend_only_on_the_seed():
    assert skip_positions(256, 8192, random.Random(7)) == skip_positions(256, 8192, random.Random(7))
    assert skip_positions(256, 8192, random.Random(7)) != skip_positions(256, 8192, random.Random(8))
    assert skip_positions(300, 300, random.Random(1)) == list(range(300))  # already as long as the target


def _packed_rows(tokenizer, **pose):
    from longctx.train.data import PackedRows

    docs = ["alpha beta gamma delta " * 8, "one two three four five " * 12, "x y z " * 30]
    return PackedRows(docs, tokenizer, 48, seed=3, **pose)


def test_packed_pose_rows_restart_per_document_and_resume_identically(tiny_llama_dir):
    from longctx.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    iterator = iter(_packed_rows(tokenizer, pose_target_length=1000))
    rows = [next(iterator) for _ in range(6)]
    plain = iter(_packed_rows(tokenizer))
    for row in rows:
        reference = next(plain)
        assert torch.equal(row["input_ids"], reference["input_ids"]) and torch.equal(row["labels"], reference["labels"])
        segments = row["segment_ids"]
        starts = [0, *(torch.nonzero(segments[1:] != segments[:-1]).flatten() + 1).tolist(), len(segments)]
        for begin, end in zip(starts, starts[1:], strict=False):
            positions = row["position_ids"][begin:end]
            assert positions[0] == 0 and bool((positions[1:] > positions[:-1]).all()) and positions.max() < 1000
    assert any(int(r["position_ids"].max()) >= 48 for r in rows)  # skips happened
    resumed = next(_packed_rows(tokenizer, pose_target_length=1000).rows(4))
    assert torch.equal(resumed["position_ids"], rows[4]["position_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_block_mask_makes_a_packed_document_equal_to_the_document_alone(tiny_llama_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn).eval()
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, 500, (1, 20), generator=generator), torch.randint(3, 500, (1, 28), generator=generator)
    pos_a = torch.tensor([skip_positions(20, 200, random.Random(1))])
    pos_b = torch.tensor([skip_positions(28, 200, random.Random(2))])
    segments = torch.tensor([[0] * 20 + [1] * 28])
    mask = block_causal_mask(segments, attn_implementation=attn, dtype=torch.float32)
    with torch.no_grad():
        packed = model.model(input_ids=torch.cat([a, b], 1), position_ids=torch.cat([pos_a, pos_b], 1),
                             attention_mask=mask).last_hidden_state
        # alone: an all-ones 2D mask stops transformers from reading the position jumps as document starts
        alone_a = model.model(input_ids=a, position_ids=pos_a, attention_mask=torch.ones_like(a)).last_hidden_state
        alone_b = model.model(input_ids=b, position_ids=pos_b, attention_mask=torch.ones_like(b)).last_hidden_state
    torch.testing.assert_close(packed[:, :20], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[:, 20:], alone_b, atol=1e-5, rtol=1e-4)


def test_pose_refuses_flash_attention():
    from longctx.errors import UsageError

    with pytest.raises(UsageError, match="flash_attention_2"):
        block_causal_mask(
            torch.zeros(1, 4, dtype=torch.long), attn_implementation="flash_attention_2", dtype=torch.float32
        )


def test_finetune_with_pose_trains_and_checks_its_flags(tiny_llama_dir, tmp_path):
    import importlib.util
    from pathlib import Path

    from longctx.errors import UsageError

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_recipe_pose", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    common = ["--model", str(tiny_llama_dir), "--method", "yarn", "--factor", "4", "--data", "pydoc",
              "--seq-len", "64", "--max-steps", "3", "--report-to", "none"]
    assert module.cli([*common, "--pose-target-length", "1024", "--out", str(tmp_path / "run")]) == 0
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 3 and all('"loss": ' in line and "NaN" not in line for line in log)
    from longctx.train.args import check_args, parse_args

    with pytest.raises(UsageError, match="pose-target-length"):  # not longer than the training length
        check_args(parse_args([*common, "--pose-target-length", "32", "--out", str(tmp_path / "bad")]))
