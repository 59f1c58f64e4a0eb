"""Claims about real behaviour, on the real SmolLM2-135M-Instruct (8K context) at <= 1K tokens."""

from __future__ import annotations

import pytest

from longctx.evals.run.results import ResultsWriter
from longctx.evals.tasks import passkey, perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(smollm2_dir, device="cpu")
    return model, tokenizer


def test_smollm2_retrieves_the_passkey_at_1k(smollm2, tmp_path):
    model, tokenizer = smollm2
    cfg = passkey.Config(lengths=[1024], depths=[0.0, 0.5, 1.0], trials=4, seed=0)
    cells = passkey.TASK.run(model, tokenizer, cfg, ResultsWriter(tmp_path, "smollm2", "passkey"))
    samples = [s for cell in cells for s in cell["samples"]]
    accuracy = sum(s["correct"] for s in samples) / len(samples)
    assert len(samples) == 12 and accuracy >= 0.9, samples


def test_smollm2_perplexity_of_the_embedded_text_is_sane(smollm2, tmp_path):
    model, tokenizer = smollm2
    cell = perplexity.run(model, tokenizer, perplexity.Config(lengths=[1024], docs=2),
                          ResultsWriter(tmp_path, "smollm2", "ppl"))[0]
    assert 2 < cell["ppl"] < 60 and 0.3 < cell["bpb"] < 3, cell
    # later positions see more context, so they are predicted at least as well as the first bucket
    assert cell["buckets"][-1]["nll"] < cell["buckets"][0]["nll"]
