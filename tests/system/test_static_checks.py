"""The code passes its static checks: ``ruff check .`` (the rules in pyproject.toml's [tool.ruff], over every
package, the tests, the scripts and the notebook) and ``mypy`` (strict on core and kb, [tool.mypy]), run as the
venv's own executables so that the pinned versions in requirements.lock are the ones that judge."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = BIN / name
    if not executable.is_file():
        pytest.fail(f"{executable} is missing: install the test extra (pip install -r requirements.lock)")
    return subprocess.run([str(executable), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run_tool("ruff", "check", ".", "--output-format", "concise")
    assert result.returncode == 0, f"ruff check . reported:\n{result.stdout}{result.stderr}"


def test_mypy_finds_nothing():
    result = run_tool("mypy")  # the files and the strict modules come from [tool.mypy]
    assert result.returncode == 0, f"mypy reported:\n{result.stdout}{result.stderr}"
