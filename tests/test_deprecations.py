"""The suite's guard against deprecated calls (tests/conftest.py): longctx's own calls fail, other libraries' don't."""

from __future__ import annotations

import warnings

import pytest
from conftest import ROOT, deprecated_caller

SITE = "/venv/lib/python3.11/site-packages"
TORCH_CALL = f"{SITE}/torch/nn/modules/module.py"


def test_a_deprecated_kwarg_passed_by_longctx_is_ours():
    stack = [f"{SITE}/transformers/utils/deprecation.py", TORCH_CALL, TORCH_CALL, str(ROOT / "longctx/evals/scoring.py")]
    assert deprecated_caller(stack) == str(ROOT / "longctx/evals/scoring.py")


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
