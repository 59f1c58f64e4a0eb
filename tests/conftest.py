"""Shared fixtures: a tiny random Llama for fast unit tests, the real SmolLM2-135M for claims about behaviour."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LONGCTX_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: each worker's torch gets its share
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))  # for the subprocesses tests start, too
    import torch

    torch.set_num_threads(_share)

PACKAGE = str(ROOT / "longctx") + os.sep
# Frames that only carry a call into the library that warns (torch's module call, functools wrappers).
PLUMBING = (os.sep + os.path.join("torch", "nn", "modules") + os.sep, os.sep + "functools.py", os.sep + "contextlib.py")


def deprecated_caller(filenames: list[str]) -> str | None:
    """Who made the deprecated call, from the stack of a warnings.warn (innermost frame first): skip the frames
    of the package that warns and call plumbing; the next frame is the caller. Returns its file when it is
    longctx's own code, None when another library made the call (peft reading transformers'
    `is_gradient_checkpointing` inside `get_peft_model` is peft's to fix, not ours)."""
    if not filenames:
        return None

    def package_of(path: str) -> str:
        parts = Path(path).parts
        return parts[parts.index("site-packages") + 1] if "site-packages" in parts else str(Path(path).parent)

    warner = package_of(filenames[0])
    for path in filenames:
        if package_of(path) == warner or any(p in path for p in PLUMBING):
            continue
        return path if path.startswith(PACKAGE) else None
    return None


@pytest.fixture(autouse=True, scope="session")
def fail_on_deprecated_calls_from_longctx():
    """A FutureWarning or DeprecationWarning caused by longctx's own call is an error (as `-W error` would
    make it), so the next deprecation fails the suite the day a pin moves, not the day the API is removed.
    pytest's `filterwarnings` cannot do this: a library's warning is attributed to its own frames
    (transformers' `deprecate_kwarg` warns from inside torch's module call), not to the code that called it."""
    original = warnings.warn

    def guarded(message, category=None, stacklevel=1, source=None, **kwargs):
        kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(kind, (FutureWarning, DeprecationWarning)):
            frames, frame = [], sys._getframe(1)
            while frame is not None:
                frames.append(frame.f_code.co_filename)
                frame = frame.f_back
            caller = deprecated_caller(frames)
            if caller is not None:
                raise kind(f"deprecated call from {caller}: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    warnings.warn = guarded
    yield
    warnings.warn = original


def _train_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on the embedded pydoc topics: real text, tiny vocabulary, no download."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(topics.values()), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_tiny_llama(out_dir: Path, *, rope_theta: float = 10000.0, max_position_embeddings: int = 256,
                    seed: int = 0) -> Path:
    """`longctx.testing`'s tiny random Llama with a 512-token BPE tokenizer, saved as safetensors."""
    from longctx.testing import write_tiny_llama

    return write_tiny_llama(out_dir, _train_tiny_tokenizer(), max_position_embeddings=max_position_embeddings,
                            rope_theta=rope_theta, seed=seed)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Read-only tiny checkpoint shared by the session: copy it before changing anything in it."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir):
    """(model, tokenizer) of the tiny checkpoint, loaded once for the evaluation tests (read-only: hooks a
    test adds must be removed by it)."""
    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(tiny_llama_dir, device="cpu")
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct (8K context, base 1e5), dequantized once into LONGCTX_CACHE."""
    from longctx.sources import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def retrieval_tokenizers(tiny_llama_dir, tmp_path_factory) -> dict:
    """One small tokenizer of each family retrieval prompts must handle (see tests/tokenizer_fixtures.py)."""
    from tokenizer_fixtures import sentencepiece_llama, tiktoken_llama3
    from transformers import AutoTokenizer

    return {
        "byte-level": AutoTokenizer.from_pretrained(tiny_llama_dir),
        "sentencepiece-legacy": sentencepiece_llama(),
        "sentencepiece-reloaded": sentencepiece_llama(tmp_path_factory.mktemp("spm"), saved=True),
        "llama3": tiktoken_llama3(),
    }
