"""A byte-level tokenizer: one token per UTF-8 byte (ids 3..258) plus <pad>, <s>, </s> (0, 1, 2).

For models trained from scratch in experiments about positions (the rope-base studies): the vocabulary is
tiny, so the output layer costs nothing, and since every token is exactly one byte the mean NLL in nats
divided by ln 2 IS bits per byte — no tokenizer-dependent conversion between models. Built offline from the
`tokenizers` library (no merges), saved with the model like any Hugging Face tokenizer.
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<s>", "</s>")
BYTE_OFFSET = len(SPECIALS)  # id of byte b is b + BYTE_OFFSET
VOCAB_SIZE = BYTE_OFFSET + 256


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` mapping text to its UTF-8 bytes, one id each; decode(encode(t)) == t."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for byte, char in sorted(_byte_to_char().items()):
        vocab[char] = byte + BYTE_OFFSET
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=int(1e30))
