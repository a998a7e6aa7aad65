"""notebooks/retrieval_eval.ipynb runs end to end (on 20 test queries per QA set) with the venv's kernel."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA, requires_shared

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = REPO / "notebooks" / "retrieval_eval.ipynb"
QA = SHARED_DATA / "qa"
ARTIFACTS = REPO / "tests" / "artifacts"


def qa_sets() -> list[str]:
    """Every folder under qa/ with both files, as the notebook discovers them."""
    if not QA.is_dir():
        return []
    return sorted(d.name for d in QA.iterdir()
                  if d.is_dir() and (d / "corpus.jsonl").is_file() and (d / "queries.jsonl").is_file())


def _python3_kernel(monkeypatch, tmp_path) -> None:
    """Make sure the ``python3`` kernel runs this interpreter (the venv's): jupyter_client swaps a bare
    ``python`` argv for sys.executable; any other python3 spec found first (user, system) is shadowed by one
    installed for sys.executable in a directory put at the head of JUPYTER_PATH."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    bare = {"python", "python3", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
        if argv0 in bare or Path(argv0).resolve() == Path(sys.executable).resolve():
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    prefix = tmp_path / "kernel-prefix"
    install(kernel_name="python3", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), spec.argv


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


@requires_shared
def test_retrieval_notebook_runs_on_a_subset(monkeypatch, tmp_path):
    sets = qa_sets()
    if not sets:
        pytest.skip(f"no QA sets under {QA}")
    _python3_kernel(monkeypatch, tmp_path)
    monkeypatch.setenv("ATENDE_EVAL_LIMIT", "20")
    monkeypatch.setenv("ATENDE_EVAL_SPLIT", "test")
    monkeypatch.setenv("ATENDE_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.delenv("ATENDE_EVAL_SAVE_FIG", raising=False)
    monkeypatch.delenv("ATENDE_EVAL_MODEL", raising=False)
    # the kernel imports this checkout's packages, not those of whichever checkout the venv was installed from
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / "retrieval_eval.executed.ipynb")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, json.dumps(errors, indent=1)[:4000]
    text = "".join(_text(o) for o in outputs)
    rows = {tuple(line.split()[:2]) for line in text.splitlines()}
    for name in sets:
        assert (name, "atende") in rows, f"no atende row for {name} in the table:\n{text[-4000:]}"
        for baseline in ("dense", "bm25"):
            assert (name, baseline) in rows, f"no {baseline} row for {name}"
    assert "comparison printed, not asserted" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not displayed"
    assert f"saved {NOTEBOOK.parent}" not in text, "the figure is saved only with ATENDE_EVAL_SAVE_FIG"
