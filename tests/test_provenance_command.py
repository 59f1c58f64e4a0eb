"""Run records name the command a user can rerun, however longctx was started."""

from __future__ import annotations

import sys

import pytest

from longctx.provenance import RunRecord


@pytest.mark.parametrize("argv0", ["/venv/bin/longctx", "/src/longctx/__main__.py"])
def test_console_script_and_python_m_record_the_same_command(monkeypatch, argv0):
    monkeypatch.setattr(sys, "argv", [argv0, "eval", "suite", "s.yaml", "--out", "my results"])
    assert RunRecord().command == "longctx eval suite s.yaml --out 'my results'"
