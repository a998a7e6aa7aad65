"""Acceptance test: ingest every real document in ../shared/data/docs with the CLI, then search each one.

The folder is ingested ONCE (module fixture): the 872-page DOCX alone takes about a minute.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from atende import cli
from atende.ingest_files import ingest_paths
from runtime.services import Services
from kb import registry
from kb.models import Document
from kb.search import search
from tests.conftest import DOCS, make_services, requires_shared

pytestmark = requires_shared

ASSISTANT = "docs"
IMAGE_ONLY = "single_table.pdf"
EDITED = "simple-table.md"
NEW_SENTENCE = "The lighthouse keeper on Berlenga island counts exactly forty-two seagulls every Tuesday at dawn."
PHRASE_WORDS = 16


@dataclass
class Corpus:
    folder: Path
    services: Services
    files: list[str]  # file names, as the knowledge base names its documents
    exit_code: int  # of the first `atende kb ingest`
    stdout: str  # of the first `atende kb ingest`
    first: dict  # filename -> (status, error, chunk_count, current_version) right after the first ingest


def _documents(services: Services) -> dict[str, Document]:
    with services.session() as session:
        kb = registry.get_assistant(session, ASSISTANT).knowledge_base
        docs = registry.list_documents(session, kb)
        for d in docs:
            _ = d.versions  # load before the session closes
        return {d.filename: d for d in docs}


def _collection(services: Services) -> str:
    with services.session() as session:
        return registry.get_assistant(session, ASSISTANT).knowledge_base.collection


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedders):
    root = tmp_path_factory.mktemp("shared_docs")
    folder = root / "docs"
    files = []
    for src in sorted(DOCS.rglob("*")):
        if src.is_file() and src.name != "SOURCES.md" and not src.name.startswith("LICENSE-"):
            dst = folder / src.relative_to(DOCS)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # not copy(): the originals are read-only and one file gets edited
            files.append(src.name)
    assert len(files) == len(set(files)) >= 20
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATENDE_HOME", str(home))
        for var in ("DATABASE_URL", "ATENDE_DATABASE_URL", "CHROMA_URL", "ATENDE_CHROMA_URL", "REDIS_URL", "ATENDE_REDIS_URL"):
            mp.delenv(var, raising=False)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["assistants", "create", ASSISTANT]) == 0
            exit_code = cli.main(["kb", "ingest", ASSISTANT, str(folder)])
        services = make_services(home, embedders)
        first = {name: (d.status, d.error, d.versions[-1].chunk_count if d.versions else 0, d.current_version)
                 for name, d in _documents(services).items()}
        try:
            yield Corpus(folder, services, sorted(files), exit_code, out.getvalue(), first)
        finally:
            services.engine.dispose()


def test_every_file_ingests_or_fails_with_a_clear_reason(corpus):
    assert sorted(corpus.first) == corpus.files
    failed = {name: error for name, (status, error, _, _) in corpus.first.items() if status != "ready"}
    assert set(failed) == {IMAGE_ONLY}, failed
    assert "no extractable text" in failed[IMAGE_ONLY]
    for name, (status, error, chunks, version) in corpus.first.items():
        if name != IMAGE_ONLY:
            assert (status, error, version) == ("ready", None, 1) and chunks > 0, (name, status, error, chunks)
    counts = {name: c for name, (_, _, c, _) in corpus.first.items()}
    assert counts["handbook-872p.docx"] > 500, counts  # the whole handbook, not a truncated part of it


def test_cli_ingest_exits_non_zero_and_prints_a_line_per_file(corpus):
    assert corpus.exit_code == 1  # single_table.pdf failed
    lines = corpus.stdout.splitlines()
    for name in corpus.files:
        mine = [ln for ln in lines if ln.split()[1:2] == [name]]
        assert len(mine) == 1, (name, corpus.stdout)
        status, _, chunks, _ = corpus.first[name]
        if status == "ready":
            assert mine[0].startswith("✓ ") and f"{chunks} chunks (version 1" in mine[0], mine[0]
        else:
            assert mine[0].startswith("✗ ") and "failed: " in mine[0] and "no extractable text" in mine[0], mine[0]
    n = len(corpus.files)
    assert lines[-1] == f"{n} files: {n - 1} ingested, 0 unchanged, 1 failed"


def _phrase(text: str) -> str:
    """About PHRASE_WORDS words from the middle of a chunk."""
    words = text.split()
    start = max(0, len(words) // 2 - PHRASE_WORDS // 2)
    return " ".join(words[start : start + PHRASE_WORDS])


def test_a_phrase_from_each_document_finds_that_document(corpus):
    services = corpus.services
    collection = services.vectors.client.get_collection(_collection(services))
    hits, misses = [], []
    with services.session() as session:
        kb = registry.get_assistant(session, ASSISTANT).knowledge_base
        for name, doc in sorted(_documents(services).items()):
            if doc.status != "ready":
                continue
            key = f"{doc.id}:{doc.current_version}"
            texts = collection.get(where={"doc_version": key}, include=["documents"])["documents"]
            assert texts, name
            query = _phrase(max(texts, key=len))
            results = search(services, session, kb, query, top_k=5)
            top = results[0] if results else None
            (hits if top and top.document_id == doc.id else misses).append(
                (name, query, top.filename if top else None, top.score if top else None))
    total = len(hits) + len(misses)
    print(f"\nphrase search hit rate: {len(hits)}/{total}")
    for name, query, got, score in misses:
        print(f"  MISS {name}: {query!r} -> {got} ({score})")
    assert total == len(corpus.files) - 1
    assert not misses, misses


def test_reingesting_the_folder_changes_nothing(corpus, capsys):
    services = corpus.services
    collection = _collection(services)
    before_count = services.vectors.count(collection)
    before = {n: (d.current_version, [v.version for v in d.versions if v.state == "current"])
              for n, d in _documents(services).items() if d.status == "ready"}

    assert cli.main(["kb", "ingest", ASSISTANT, str(corpus.folder)]) == 1  # the image-only PDF fails again
    lines = capsys.readouterr().out.splitlines()
    for name in corpus.files:
        mine = [ln for ln in lines if ln.split()[1:2] == [name]]
        assert len(mine) == 1, (name, lines)
        if name == IMAGE_ONLY:
            assert mine[0].startswith("✗ ") and "no extractable text" in mine[0]
        else:
            assert mine[0].startswith("= ") and "unchanged (version 1" in mine[0], mine[0]
    n = len(corpus.files)
    assert lines[-1] == f"{n} files: 0 ingested, {n - 1} unchanged, 1 failed"

    assert services.vectors.count(collection) == before_count
    after = {n: (d.current_version, [v.version for v in d.versions if v.state == "current"])
             for n, d in _documents(services).items() if d.status == "ready"}
    assert after == before


def test_cli_search_prints_json(corpus, capsys):
    assert cli.main(["kb", "search", ASSISTANT, "Norwich City football club history and stadium", "--json",
                     "--top-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and len(results) == 3
    assert [r["rank"] for r in results] == [1, 2, 3]
    for r in results:
        assert {"text", "score", "document_id", "filename", "page", "section", "version"} <= set(r) and r["text"]
    assert results[0]["filename"] == "norwich-city.txt"

    assert cli.main(["kb", "search", "no-such-assistant", "anything", "--json"]) == 2
    assert "no-such-assistant" in capsys.readouterr().err


def test_editing_one_file_reingests_only_that_file(corpus):
    services = corpus.services
    collection = _collection(services)
    docs = _documents(services)
    edited = docs[EDITED]
    old_key = f"{edited.id}:{edited.current_version}"
    old_chunks = services.vectors.count(collection, old_key)
    total_before = services.vectors.count(collection)
    assert old_chunks > 0

    path = next(corpus.folder.rglob(EDITED))
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + NEW_SENTENCE + "\n", encoding="utf-8")
    results = {r.name: r for r in ingest_paths(services, ASSISTANT, [corpus.folder])}

    assert sorted(results) == corpus.files
    assert (results[EDITED].status, results[EDITED].version) == ("ready", 2) and results[EDITED].chunks > 0
    assert results[IMAGE_ONLY].status == "failed" and "no extractable text" in results[IMAGE_ONLY].error
    others = {n: (r.status, r.version) for n, r in results.items() if n not in (EDITED, IMAGE_ONLY)}
    assert others == {n: ("unchanged", 1) for n in others}

    assert services.vectors.count(collection, old_key) == 0  # the old version's chunks are gone
    new_chunks = services.vectors.count(collection, f"{edited.id}:2")
    assert new_chunks == results[EDITED].chunks
    assert services.vectors.count(collection) == total_before - old_chunks + new_chunks
    with services.session() as session:
        kb = registry.get_assistant(session, ASSISTANT).knowledge_base
        hits = search(services, session, kb, "how many seagulls does the lighthouse keeper count?", top_k=5)
        states = {v.version: v.state for v in session.get(Document, edited.id).versions}
    assert states == {1: "gone", 2: "current"}
    assert (hits[0].filename, hits[0].version) == (EDITED, 2) and NEW_SENTENCE in hits[0].text
    assert all(h.version == 2 for h in hits if h.document_id == edited.id)
