"""Dynamic NTK keeps no state between evaluation cells: every score is what a freshly loaded model gives."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from result_cells import without_timings  # noqa: E402


@pytest.fixture(scope="module")
def dynamic_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama (trained length 256) patched with dynamic NTK ×2."""
    from longctx.checkpoint import write_patched_checkpoint
    from longctx.patch import PatchSpec

    return write_patched_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("dyn") / "out",
                                    PatchSpec(method="dynamic", factor=2))


def _load(path):
    from longctx.modeling import load_model

    model, tokenizer, _ = load_model(str(path), device="cpu")
    return model, tokenizer


def _nll(model, length: int, seed: int = 0) -> torch.Tensor:
    from longctx.evals.tasks.perplexity import token_nll

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=generator)
    return token_nll(model, ids)


def test_a_long_forward_does_not_change_a_later_shorter_one(dynamic_dir):
    fresh, _ = _load(dynamic_dir)
    expected = _nll(fresh, 400)
    used, _ = _load(dynamic_dir)
    _nll(used, 700)  # grows transformers' cached inv_freq to the 700-token base
    torch.testing.assert_close(_nll(used, 400), expected, rtol=0, atol=0)


def test_reset_restores_the_checkpoint_frequencies(dynamic_dir):
    from longctx.modeling import reset_rope_state

    model, _ = _load(dynamic_dir)
    rotary = model.model.rotary_emb
    original = rotary.original_inv_freq.clone()
    with torch.inference_mode():
        model(torch.ones(1, 700, dtype=torch.long))
    assert not torch.equal(rotary.inv_freq, original)  # transformers did grow it
    reset_rope_state(model)
    assert torch.equal(rotary.inv_freq, original)
    assert rotary.inv_freq.data_ptr() != rotary.original_inv_freq.data_ptr()


def _suite_cells(model_dir, out_dir, order: list[str]) -> dict:
    from longctx.evals.suite import make_config, run_tasks

    settings = {"ppl": {"lengths": "300,600", "docs": 1, "data": "stdlib"},
                "passkey": {"lengths": "320,640", "depths": "0,1", "trials": 1, "mode": "forced"}}
    configs = {task: make_config(task, {"seed": 0, **settings[task]}) for task in order}
    results = run_tasks(str(model_dir), configs, out_dir, label="m")
    return {task: without_timings(cells) for task, cells in results.items()}


def test_suite_scores_do_not_depend_on_cell_order(dynamic_dir, tmp_path):
    """Past the trained length (256) in both orders: passkey after ppl and ppl after passkey."""
    first = _suite_cells(dynamic_dir, tmp_path / "a", ["passkey", "ppl"])
    second = _suite_cells(dynamic_dir, tmp_path / "b", ["ppl", "passkey"])
    assert first == second


def test_forced_passkey_cells_of_a_dynamic_model_say_generation_may_grade_differently(
    dynamic_dir, tiny_llama_dir, tmp_path
):
    """Forced grading equals greedy decoding only for frequencies that do not depend on the length: the cells of a
    dynamic-NTK model say so, those of a plain model do not, and generate mode needs no such note."""
    from longctx.evals.tasks.scoring import grading_warnings

    dynamic = _suite_cells(dynamic_dir, tmp_path / "dynamic", ["passkey"])["passkey"]
    plain = _suite_cells(tiny_llama_dir, tmp_path / "plain", ["passkey"])["passkey"]
    assert dynamic and all(any("transformers #25104" in w for w in cell["warnings"]) for cell in dynamic)
    assert plain and not any("#25104" in w for cell in plain for w in cell["warnings"])
    model, _ = _load(dynamic_dir)
    assert grading_warnings(model, "generate") == [] and grading_warnings(model, "forced")
