"""Untrusted files are parsed in a child process within limits (ingest/sandbox.py): a wall-clock limit,
a memory limit, and a bound on what ZIP-based files inflate to. A file over a limit fails its job with
an error that names the limit, and the document's previous version stays current and searchable."""
from __future__ import annotations

import io
import zipfile
import zlib

import psutil
import pytest
from fastapi.testclient import TestClient

from atende.app import create_app
from ingest.errors import NoExtractableText, ParseLimitExceeded
from ingest.parse import parse_document
from ingest.sandbox import ParseLimits, parse_isolated
from kb.detect import detect_file_type
from kb.errors import FileTooLarge
from tests.conftest import ADMIN_TOKEN, DOCS, requires_shared, shared_doc, wait_for_document
from tests.api.test_api import create_assistant, ingest, search, upload
from tests.ingest.test_ingest_units import make_docx

MIB = 1024 * 1024
MANUAL = ("Warranty policy", "All kettles carry a two-year warranty from the date of delivery.")
QUESTION = "how long is the kettle warranty?"
PARAGRAPH = b"<w:p><w:r><w:t>a</w:t></w:r></w:p>"


def bomb_docx(body: bytes) -> bytes:
    """A real Word document (python-docx's) whose word/document.xml body is ``body``."""
    base = zipfile.ZipFile(io.BytesIO(make_docx(*MANUAL)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for info in base.infolist():
            part = base.read(info)
            if info.filename == "word/document.xml":
                head, tail = part.split(b"<w:body>")
                part = head + b"<w:body>" + body + tail
            bomb.writestr(info.filename, part)
    return out.getvalue()


def text_bomb() -> bytes:
    """One paragraph of 64 MiB of 'a', zipped to ~65 KiB."""
    return bomb_docx(b"<w:p><w:r><w:t>" + b"a" * (64 * MIB) + b"</w:t></w:r></w:p>")


def pdf_with_stream(content: bytes) -> bytes:
    """A one-page PDF whose content stream is ``content``, deflated."""
    stream = zlib.compress(content, 9)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.fixture
def app(sqlite_services):
    """The real app and its job consumer; returns (client, services)."""
    with TestClient(create_app(services=sqlite_services)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client, sqlite_services


def replace_and_fail(app, filename: str, good: bytes, bad: bytes, **limits) -> dict:
    """Ingest ``good`` with the default limits, set ``limits``, upload ``bad`` under the same name; check
    the new version failed and the previous one stayed current and searchable; returns the document."""
    client, services = app
    a = create_assistant(client)
    v1 = ingest(client, a["id"], filename, good)
    for name, value in limits.items():  # read by each job (ParseLimits.from_settings)
        setattr(services.settings, name, value)
    r = upload(client, a["id"], filename, bad)
    assert r.status_code == 202, r.text
    doc = wait_for_document(client, v1["id"])
    assert doc["status"] == "failed" and doc["job"]["status"] == "failed" and doc["job"]["error"] == doc["error"]
    assert "internal error" not in doc["error"]
    assert doc["current_version"] == 1 and doc["latest_version"] == 2 and doc["chunk_count"] == v1["chunk_count"] > 0
    hits = search(client, a["id"], QUESTION)
    assert hits and {(h["document_id"], h["version"]) for h in hits} == {(v1["id"], 1)}
    assert "two-year warranty" in hits[0]["text"]
    return doc


def parse_children() -> list[psutil.Process]:
    """Processes forked by the parse forkserver (they share its command line) still running."""
    server = [p for p in psutil.Process().children(recursive=True) if "forkserver" in " ".join(p.cmdline())]
    return [p for s in server for p in s.children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# ---------------------------------------------------------------------------------------------- zip bombs


def test_zip_bomb_docx_fails_its_job_and_the_previous_version_stays_current(app):
    bomb = text_bomb()
    assert len(bomb) < 100 * 1024 and sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(bomb)).infolist()) > 64 * MIB
    assert detect_file_type("manual.docx", bomb, 50 * MIB) == "docx"  # a well-formed Word file, under the upload limit
    doc = replace_and_fail(app, "manual.docx", make_docx(*MANUAL), bomb)
    assert "decompression bomb" in doc["error"] and "over the limit of 100:1 (ATENDE_MAX_COMPRESSION_RATIO)" in doc["error"]
    client, _ = app
    assert client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False).status_code == 303
    assistant = client.get("/api/assistants").json()[0]["id"]
    assert "ATENDE_MAX_COMPRESSION_RATIO" in client.get(f"/dashboard/knowledge?assistant_id={assistant}").text


def test_archive_over_the_inflated_size_limit_is_refused_before_parsing():
    limits = ParseLimits(timeout_s=60, memory_mb=1024, max_inflated_mb=16, max_compression_ratio=1e9)
    with pytest.raises(ParseLimitExceeded, match=r"inflates to 64\.\d MiB, over the limit of 16 MiB \(ATENDE_MAX_INFLATED_MB\)"):
        parse_isolated(text_bomb(), "docx", limits)


def test_zip_listing_too_many_members_is_refused_at_upload():
    """The upload's type is sniffed in the server's own process: a ZIP's list of contents is bounded first."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", b"<w:document/>")
        for i in range(40_000):
            archive.writestr(f"{i}", b"")
    with pytest.raises(FileTooLarge, match=r"'many\.docx' is a ZIP archive whose list of contents takes 1\.\d MiB"):
        detect_file_type("many.docx", out.getvalue(), 50 * MIB)


# ---------------------------------------------------------------------------------------------- time and memory


@requires_shared
def test_parse_over_the_time_limit_is_killed_and_fails_its_job(app):
    """The 872-page handbook takes ~30 s to parse; a 1 s limit stops it, and its process is gone."""
    handbook = shared_doc("docx/handbook-872p.docx").read_bytes()
    doc = replace_and_fail(app, "handbook.docx", make_docx(*MANUAL), handbook, parse_timeout_s=1)
    assert "took longer than the limit of 1 s (ATENDE_PARSE_TIMEOUT_S)" in doc["error"], doc["error"]
    assert parse_children() == []


def test_parse_over_the_memory_limit_fails_its_job(app):
    """With the archive bounds lifted, the bomb reaches the parser: 64 MiB cannot even be inflated in 32."""
    doc = replace_and_fail(app, "manual.docx", make_docx(*MANUAL), text_bomb(),
                           parse_memory_mb=32, max_inflated_mb=4096, max_compression_ratio=1e9)
    assert "needs more memory than the limit of 32 MiB (ATENDE_PARSE_MEMORY_MB)" in doc["error"], doc["error"]


def test_xml_parser_at_the_memory_limit_is_reported_as_such():
    """Two million paragraphs (64 MiB) build an lxml tree bigger than 256 MiB; libxml2 reports the refused
    allocation as an "unknown error", which the sandbox tells as the memory limit."""
    limits = ParseLimits(timeout_s=120, memory_mb=256, max_inflated_mb=4096, max_compression_ratio=1e9)
    with pytest.raises(ParseLimitExceeded, match=r"memory limit of 256 MiB \(ATENDE_PARSE_MEMORY_MB\)"):
        parse_isolated(bomb_docx(PARAGRAPH * (64 * MIB // len(PARAGRAPH))), "docx", limits)


def test_pdf_whose_page_inflates_past_the_decoding_limit_is_told_as_a_bomb():
    """unstructured skips a page whose content inflates past pypdf's limit (75 MB): the error says why."""
    limits = ParseLimits(timeout_s=120, memory_mb=2048, max_inflated_mb=256, max_compression_ratio=100)
    pdf = pdf_with_stream(b"BT /F1 12 Tf 72 720 Td (Warranty policy) Tj ET\n" + b" " * 128 * MIB)
    assert len(pdf) < MIB
    with pytest.raises(NoExtractableText, match="page content inflates past the decoding limit; it may be a decompression bomb"):
        parse_isolated(pdf, "pdf", limits)


# ---------------------------------------------------------------------------------------------- normal documents


@requires_shared
@pytest.mark.parametrize("relative", [
    "pdf/layout-parser-paper-with-table.pdf", "docx/docx-tables.docx", "pptx/sample-presentation.pptx",
    "xlsx/vodafone.xlsx", "html/example-10k-1p.html", "md/the-art-of-command-line-README-pt.md",
    "csv/stanley-cups.csv", "eml/family-day.eml", "txt/fake-text-utf-16.txt",
])
def test_real_documents_parse_the_same_in_the_child(relative):
    data, file_type = (DOCS / relative).read_bytes(), relative.split(".")[-1]
    limits = ParseLimits(timeout_s=300, memory_mb=2048, max_inflated_mb=256, max_compression_ratio=100)
    assert parse_isolated(data, file_type, limits) == parse_document(data, file_type)
