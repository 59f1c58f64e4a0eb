"""Corpora and packing: per-document positions, labels that never cross documents, no cross-document attention."""

from __future__ import annotations

import json
from itertools import islice

import pytest
import torch

from longctx.corpus import load_documents
from longctx.errors import UsageError
from longctx.train.data import IGNORE_INDEX, PackedRows, row_tensors


def test_row_tensors_restart_positions_and_ignore_cross_document_labels():
    ids = torch.tensor([10, 11, 12, 2, 20, 21, 2, 30])
    segments = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    row = row_tensors(ids, segments)
    assert row["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert row["labels"].tolist() == [11, 12, 2, IGNORE_INDEX, 21, 2, IGNORE_INDEX, IGNORE_INDEX]


class CharTokenizer:
    """Enough of a tokenizer for packing: one id per character, EOS = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True, verbose=True):
        return {"input_ids": [ord(c) for c in text]}


def test_packed_rows_are_deterministic_full_length_and_resumable():
    docs = ["a" * 5, "bb" * 7, "c" * 3, "d" * 20]
    rows = list(islice(PackedRows(docs, CharTokenizer(), seq_len=8, seed=3), 12))
    again = list(islice(PackedRows(docs, CharTokenizer(), seq_len=8, seed=3), 12))
    assert all(len(r["input_ids"]) == 8 for r in rows)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows, again, strict=True))
    skipped = list(islice(PackedRows(docs, CharTokenizer(), seq_len=8, seed=3).rows(5), 7))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows[5:], skipped, strict=True))
    other = list(islice(PackedRows(docs, CharTokenizer(), seq_len=8, seed=4), 12))
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows, other, strict=True))
    stream = torch.cat([r["input_ids"] for r in rows]).tolist()
    assert stream.count(0) >= len(docs)  # an EOS after every document of the first epoch


def test_load_documents_from_jsonl_text_and_embedded_corpora(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "b.txt").write_text("a whole file is one document")
    assert load_documents(str(tmp_path)) == ["first", "second", "a whole file is one document"]
    assert len(load_documents("pydoc")) > 50
    assert any("def " in doc for doc in load_documents("stdlib")[:20])


def test_bad_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_documents(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.jsonl").write_text(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(UsageError, match="no string field 'text'"):
        load_documents(str(tmp_path / "x.jsonl"))
    with pytest.raises(UsageError, match="hf:NAME"):
        load_documents("hf:")
    with pytest.raises(UsageError, match="could not load dataset 'nobody/nothing'"):
        load_documents("hf:nobody/nothing")  # offline in tests (HF_HUB_OFFLINE=1)


def _hidden(model, ids, positions):
    # The call the training loss makes: no attention_mask, no cache, per-document position ids.
    return model.model(input_ids=ids[None], position_ids=positions[None], use_cache=False).last_hidden_state[0]


def test_packing_isolates_documents_with_sdpa(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randint(3, 500, (37,), generator=generator), torch.randint(3, 500, (27,), generator=generator)
    packed = torch.cat([first, second])
    positions = torch.cat([torch.arange(37), torch.arange(27)])
    with torch.no_grad():
        alone = model.lm_head(_hidden(model, second, torch.arange(27)))
        together = model.lm_head(_hidden(model, packed, positions))[37:]
        leaking = model.lm_head(_hidden(model, packed, torch.arange(64)))[37:]  # one long document
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert (leaking - alone).abs().max() > 1e-3  # the check can fail: attention across documents changes logits


def test_pydoc_next_to_files(tmp_path):
    (tmp_path / "book.txt").write_text("a book of one line\n")
    docs = load_documents(f"pydoc,{tmp_path / 'book.txt'}")
    assert docs[:-1] == load_documents("pydoc") and docs[-1] == "a book of one line\n"
