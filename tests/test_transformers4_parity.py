"""The same patched config.json, read by a real transformers 4 install, gives longctx's frequencies.

transformers 4 lives in its own folder (`make test-compat` installs it with `pip install --target
$LONGCTX_CACHE/tf4 'transformers<5'`) and runs in a subprocess, so the suite's transformers 5 is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_patch_parity import LLAMA, SPECS

from longctx import rope_config, rope_methods
from longctx.patch import patch_config

TF4 = Path(os.environ.get("LONGCTX_TF4_PATH") or Path(os.environ["LONGCTX_CACHE"]) / "tf4")
pytestmark = pytest.mark.compat  # deselected by default; `make test-compat` installs transformers 4 and runs it

CHILD = r"""
import json, sys
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
assert transformers.__version__.startswith("4."), transformers.__version__
out = {"version": transformers.__version__, "results": {}}
for name, config in json.load(open(sys.argv[1])).items():
    module = LlamaRotaryEmbedding(config=LlamaConfig.from_dict(config))
    out["results"][name] = {"inv_freq": module.inv_freq.double().tolist(), "scaling": float(module.attention_scaling)}
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not (TF4 / "transformers").is_dir(), reason=f"no transformers 4 install at {TF4} (make test-compat makes one)"
)
def test_transformers4_reads_the_patched_config_like_longctx(tmp_path):
    configs = {name: patch_config(LLAMA, spec) for name, spec in SPECS.items()}
    configs.update({f"{name}/v4-keys-only": {k: v for k, v in config.items() if k != "rope_parameters"}
                    for name, config in list(configs.items())})
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(configs))
    env = {**os.environ, "PYTHONPATH": str(TF4)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["version"].startswith("4.")
    for name, config in configs.items():
        params = rope_config.rope_parameters(config)
        ours, scaling = rope_methods.inv_freq_for(
            params, 128, max_position_embeddings=config["max_position_embeddings"]
        )
        theirs = torch.tensor(report["results"][name]["inv_freq"], dtype=torch.float64)
        torch.testing.assert_close(
            theirs, ours, rtol=1e-6, atol=0, msg=f"{name} under transformers {report['version']}"
        )
        assert report["results"][name]["scaling"] == pytest.approx(scaling, rel=1e-6), name
