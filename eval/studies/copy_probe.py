"""Has a model learned to copy at all? Mean NLL of the key's digits at its three occurrences in the synthetic
passkey documents it was trained on (longctx.train.retrieval_mix): in the needle ("The pass key is K."),
repeated right after it ("K is the pass key.", ~15 tokens later) and as the answer after the question.

    python eval/studies/copy_probe.py .cache/rope-base-scratch/bound-scratch-base1e4

A model that copies predicts the 2nd and 3rd occurrence far better than the 1st (which is random: ln 10 =
2.303 nats per digit). Equal values mean no copying even at short range, so passkey retrieval at any length
cannot be expected (the situation of the base-bound experiment at this scale); a drop at the 2nd but not the 3rd means
copying over short distances only. The last line does the same on dense copy documents ("seg|seg" lines of
random letters and digits): a model with an induction circuit predicts the second copy far better than the first.
"""

from __future__ import annotations

import math
import random
import sys


def char_nll(model, tokenizer, document: str):
    """NLL (nats) of each character of `document` given the ones before it (byte tokenizer: token i of the text
    is character i, ASCII text); the first character, predicted from BOS alone where there is one, is NaN without."""
    import torch

    ids = tokenizer(document, add_special_tokens=True)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    nll = -logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    prefix = len(ids) - len(tokenizer(document, add_special_tokens=False)["input_ids"])  # BOS
    return torch.cat([torch.full((1 - prefix,), float("nan")), nll])  # index i: character i


def key_nll(model, tokenizer, document: str, key: str) -> list[float]:
    """Mean NLL (nats) of the key's characters at each place the key occurs in `document`."""
    nll = char_nll(model, tokenizer, document)
    starts = [i for i in range(len(document)) if document.startswith(key, i)]
    return [float(nll[start:start + len(key)].mean()) for start in starts]


def segment_nll(model, tokenizer, document: str) -> tuple[float, float]:
    """Mean NLL (nats) of the characters of each segment's first and second copy in a copy document
    ("seg|seg" lines, longctx.train.retrieval_mix.copy_document)."""
    nll = char_nll(model, tokenizer, document)
    first, second, start = [], [], 0
    for line in document.splitlines(keepends=True):
        size = line.index("|")
        first += range(start, start + size)
        second += range(start + size + 1, start + 2 * size + 1)
        start += len(line)
    return float(nll[first].nanmean()), float(nll[second].mean())


def main(path: str, documents: int = 20, seed: int = 0) -> int:
    from transformers import AutoModelForCausalLM

    from longctx.modeling import load_tokenizer
    from longctx.train.retrieval_mix import COPY_ALPHABET, copy_document, passkey_document

    tokenizer = load_tokenizer(path)
    if len(tokenizer("12345", add_special_tokens=False)["input_ids"]) != 5:
        print("copy_probe reads one token per character: use it on a byte-level model", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rng = random.Random(seed)
    sums = [0.0, 0.0, 0.0]
    for _ in range(documents):
        document = passkey_document(rng, 460)
        key = document.split("The pass key is ", 1)[1].split(".", 1)[0]
        for i, value in enumerate(key_nll(model, tokenizer, document, key)[:3]):
            sums[i] += value / documents
    for name, value in zip(("needle (1st, random)", "repeat in needle (2nd)", "answer (3rd)"), sums, strict=True):
        print(f"{name:24s} {value:.3f} nats/digit")
    print(f"uniform over digits: {math.log(10):.3f}")
    firsts, seconds = zip(
        *(segment_nll(model, tokenizer, copy_document(rng, 460)) for _ in range(documents)), strict=True
    )
    print(f"copy documents, 1st copy {sum(firsts) / documents:.3f}, 2nd copy {sum(seconds) / documents:.3f} nats/char "
          f"(uniform over the {len(COPY_ALPHABET)} characters: {math.log(len(COPY_ALPHABET)):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
