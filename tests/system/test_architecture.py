"""The packages keep one direction of dependencies (the import-linter contracts in pyproject.toml hold), and
ARCHITECTURE.md names only modules, functions, classes and files that exist, so it cannot rot silently."""
from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "ARCHITECTURE.md"
IMPORTLINTER = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
ROOTS = set(IMPORTLINTER["root_packages"])
# `Services.<field>` is short for runtime.services.Services.<field> in the document
ALIASES = {"Services": "runtime.services.Services"}
# `name` or `name(arguments)` in backticks
DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.\w+)+)(?:\([^`]*\))?`")
# a relative path in backticks: `kb/`, `tests/system/test_architecture.py`
PATH = re.compile(r"`(\w[\w.-]*(?:/[\w.-]+)*/?)`")


def _document() -> str:
    return ARCHITECTURE.read_text(encoding="utf-8")


def dotted_names(text: str) -> list[str]:
    """The names in backticks that start with one of our packages (or an alias), each once, in order."""
    found = (m.group(1) for m in DOTTED.finditer(text))
    return list(dict.fromkeys(n for n in found if n.split(".")[0] in ROOTS | ALIASES.keys()))


def resolve(name: str) -> object:
    """Import the longest module prefix of ``name``, then get the rest as attributes (dataclass fields count,
    also those with a default factory, which the class itself does not carry)."""
    head, _, rest = name.partition(".")
    parts = f"{ALIASES.get(head, head)}.{rest}".split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):  # a dependency is missing, not the name
                raise
    for attr in parts[i:]:
        if dataclasses.is_dataclass(obj) and isinstance(obj, type) and attr in obj.__dataclass_fields__:
            obj = obj.__dataclass_fields__[attr]
            continue
        obj = getattr(obj, attr)
    return obj


def test_import_contracts_are_kept():
    # lint-imports reads [tool.importlinter] and the packages of the checkout it runs in
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("name", dotted_names(_document()))
def test_architecture_names_exist(name):
    try:
        resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"ARCHITECTURE.md names `{name}`, which does not resolve: {type(exc).__name__}: {exc}")


def test_architecture_names_enough_to_be_checked():
    # a broken pattern would find nothing and check nothing
    names = dotted_names(_document())
    assert len(names) >= 60, names
    assert "runtime.turn.run_turn" in names and "ingest.pipeline.run_job" in names


def test_architecture_paths_exist():
    paths = [p for p in PATH.findall(_document()) if "/" in p]
    assert paths
    assert [p for p in paths if not (REPO / p).exists()] == []


def test_architecture_states_the_layers_contract():
    layers = next(c for c in IMPORTLINTER["contracts"] if c["id"] == "layers")["layers"]
    assert f"({' > '.join(layers)})" in _document()
