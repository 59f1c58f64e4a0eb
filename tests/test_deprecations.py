"""The suite's guard against deprecated calls (tests/conftest.py): longctx's own calls fail, other libraries' don't."""

from __future__ import annotations

import warnings

import pytest
from conftest import ROOT, deprecated_caller

SITE = "/venv/lib/python3.11/site-packages"
TORCH_CALL = f"{SITE}/torch/nn/modules/module.py"


def test_a_deprecated_kwarg_passed_by_longctx_is_ours():
    stack = [
        f"{SITE}/transformers/utils/deprecation.py",
        TORCH_CALL,
        TORCH_CALL,
        str(ROOT / "longctx/evals/tasks/scoring.py"),
    ]
    assert deprecated_caller(stack) == str(ROOT / "longctx/evals/tasks/scoring.py")


def test_a_deprecated_property_read_by_peft_is_not_ours():
    stack = [f"{SITE}/transformers/modeling_utils.py", f"{SITE}/peft/peft_model.py", f"{SITE}/peft/mapping_func.py",
             str(ROOT / "longctx/train/model.py")]
    assert deprecated_caller(stack) is None


def test_the_guard_is_installed_and_raises_for_a_deprecated_call_from_longctx():
    library = {}
    exec(compile("import warnings\ndef old_api():\n    warnings.warn('old API', FutureWarning, stacklevel=2)\n",
                 f"{SITE}/fakelib/api.py", "exec"), library)
    caller = compile("old_api()\n", str(ROOT / "longctx" / "_fake.py"), "exec")
    with pytest.raises(FutureWarning, match="deprecated call from .*_fake.py: old API"):
        exec(caller, library)
    with warnings.catch_warnings(record=True) as seen:  # another library's call, and other categories: untouched
        warnings.simplefilter("always")
        exec(compile("old_api()\n", f"{SITE}/otherlib/x.py", "exec"), library)
        warnings.warn("a user warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["old API", "a user warning"]


def test_wrapping_a_model_in_lora_prints_no_future_warning(tiny_llama_dir):
    """peft's own read of transformers' deprecated `is_gradient_checkpointing` is hidden where longctx wraps."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from longctx.modeling import peft_deprecations_hidden

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_deprecations_hidden():
            get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
