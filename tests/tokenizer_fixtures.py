"""Small tokenizers of the families real checkpoints use, trained in well under a second on text made here.

- `sentencepiece_llama`: a SentencePiece-style BPE laid out like Llama-2's / Mistral's / TinyLlama's
  `tokenizer.json` (normalizer: prepend "▁" and turn spaces into "▁"; no pre-tokenizer; byte fallback; BOS),
  wrapped as a legacy `LlamaTokenizerFast`. Every separately tokenized piece gains a leading "▁" and
  " " + key becomes "▁▁…": the trap retrieval prompts fall into.
- `sentencepiece_llama(..., saved=True)`: the same files loaded back with `AutoTokenizer`, which in
  transformers 5 rebuilds them with a Metaspace pre-tokenizer (prepend "▁" unless there already is one).
- `tiktoken_llama3`: byte-level BPE split by Llama-3's regex (which glues punctuation to the newlines after
  it: ".\n\n" is one pre-token) with a `<|begin_of_text|>` BOS.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@cache
def training_text() -> tuple[str, ...]:
    """Python's documentation prose plus the retrieval prompts' own words, so both tokenize into real merges."""
    from pydoc_data.topics import topics

    from longctx.evals.tasks import niah, passkey

    prompts = [passkey.TASK_LINE, "".join(passkey.FILLER) * 3, passkey.NEEDLE.format(key=31415), passkey.QUESTION,
               *(niah.NEEDLE.format(city=c, number=2718281) + niah.QUESTION.format(city=c) for c in niah.CITIES)]
    return (*(topics[key] for key in sorted(topics)), *prompts)


def _train_sentencepiece(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Training sees words the way SentencePiece does (split before "▁", newlines alone); encoding then uses
    # Llama-2's tokenizer.json layout exactly: no pre-tokenizer, the normalizer prepends "▁".
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.Metaspace(prepend_scheme="never")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def sentencepiece_llama(out_dir: Path | None = None, *, vocab_size: int = 1200, saved: bool = False):
    """A legacy Llama-2-style SentencePiece BPE tokenizer; `saved` loads it back from `out_dir` instead."""
    from transformers import AutoTokenizer, LlamaTokenizerFast

    tok = LlamaTokenizerFast(tokenizer_object=_train_sentencepiece(vocab_size), legacy=True, add_bos_token=True,
                             bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if not saved:
        return tok
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LlamaTokenizer", legacy=True, add_bos_token=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(out_dir)


def tiktoken_llama3(vocab_size: int = 1200):
    """A byte-level BPE with Llama-3's split regex and BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    bos = tok.token_to_id(specials[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A", pair=f"{specials[0]} $A $B",
                                                       special_tokens=[(specials[0], bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1])
