"""Values computed once where they are made, then carried: the patched config of a fine-tune, a patch's
validation, the record `longctx patch` prints, and the rotary settings of an eval run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def counting(monkeypatch, module, name: str, *also) -> list:
    """Replace `module.name` (and the same function imported into each of `also`) by a wrapper that counts calls."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for where in (module, *also):
        monkeypatch.setattr(where, name, wrapper)
    return calls


def test_a_patch_is_validated_once_and_the_cli_prints_without_reading_its_record_back(tiny_llama_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    from longctx import rope_methods
    from longctx.cli import main

    validations = counting(monkeypatch, rope_methods, "validate")
    read = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self.name) or read_text(self, *a, **k))
    out = tmp_path / "patched"
    assert main(["patch", "--model", str(tiny_llama_dir), "--method", "yarn", "--factor", "4", "--out", str(out)]) == 0
    assert len(validations) == 1
    assert "longctx_patch.json" not in read and (out / "longctx_patch.json").is_file()
    assert "max_position_embeddings 256 -> 1024" in capsys.readouterr().out


def test_a_fine_tune_derives_its_patched_config_once(tiny_llama_dir, tmp_path, monkeypatch):
    """Preflight, the in-memory patch, the patched base of the adapter and the merged checkpoint all carry one
    `patch_config` result (it was derived five times)."""
    from longctx import checkpoint, patch

    calls = counting(monkeypatch, patch, "patch_config", checkpoint)
    doc = tmp_path / "one.txt"
    doc.write_text("The grass is green. The sky is blue. " * 20)
    spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    argv = ["--model", str(tiny_llama_dir), "--method", "yarn", "--factor", "2", "--data", str(doc), "--seq-len", "32",
            "--max-steps", "1", "--merge", "--out", str(out), "--report-to", "none"]
    assert recipe.cli(argv) == 0
    assert len(calls) == 1
    for folder in (out / "base", out / "merged"):
        config = json.loads((folder / "config.json").read_text())
        assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 512


def test_an_eval_run_parses_the_rotary_settings_once(tiny_llama_dir, tmp_path, monkeypatch):
    from longctx import rope_config
    from longctx.evals.suite import make_config, run_tasks

    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(" ".join(f"word{i % 50}." for i in range(2000)))
    settings = {"ppl": {"lengths": "64,128", "docs": 1, "data": str(books)},
                "passkey": {"lengths": "200", "depths": "0,1", "trials": 1}}
    configs = {task: make_config(task, task_settings) for task, task_settings in settings.items()}
    calls = counting(monkeypatch, rope_config, "rope_parameters")
    run_tasks(str(tiny_llama_dir), configs, tmp_path / "out", label="tiny")
    # one check of the checkpoint's config.json before loading (checkpoint_files.check_rope_fields), one parse of the
    # loaded model's config (rope_config.model_rope) that model.json and every task's cells are written from
    assert len(calls) == 2
    model = json.loads((tmp_path / "out" / "tiny" / "model.json").read_text())
    assert model["rope"]["rope_type"] == "default" and model["trained_length"] == 256
