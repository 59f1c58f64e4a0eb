"""The byte-level tokenizer of the from-scratch studies: one id per UTF-8 byte, so NLL/ln 2 is bits per byte."""

from __future__ import annotations

from longctx.byte_tokenizer import BYTE_OFFSET, VOCAB_SIZE, byte_tokenizer

TEXT = "Plain ASCII, ünïcödé, 中文, emoji 🙂,\n\ttabs and  double spaces."


def test_one_id_per_utf8_byte_and_exact_round_trip():
    tokenizer = byte_tokenizer()
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == [b + BYTE_OFFSET for b in TEXT.encode("utf-8")]
    assert tokenizer.decode(ids) == TEXT
    assert len(tokenizer) == VOCAB_SIZE == 259


def test_specials_are_the_first_ids_and_survive_save_and_reload(tmp_path):
    from transformers import AutoTokenizer

    byte_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (0, 1, 2)
    assert reloaded(TEXT, add_special_tokens=False)["input_ids"] == [b + BYTE_OFFSET for b in TEXT.encode("utf-8")]
    assert reloaded.decode(reloaded(TEXT, add_special_tokens=False)["input_ids"]) == TEXT
