"""Parsing of uploaded files into structural elements. The only home of ``unstructured``.

Text formats are decoded here (see kb.detect.decode_text) so that UTF-16 and cp1252 files
parse correctly; PDFs use the fast strategy (text layer only, no OCR, nothing downloaded).
"""
from __future__ import annotations

import importlib
import io
import logging
import os
from dataclasses import dataclass

from ingest.errors import IngestError, NoExtractableText, ParseError
from kb.detect import decode_text

os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
# unstructured reports each partition over HTTP from a new thread unless told not to (a thread that
# hung a parse at its memory cap, and a request per document we never want to send)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SKIPPED_CATEGORIES = {"PageBreak", "Header", "Footer"}
# unstructured's partitioners, imported on first use (ingest.sandbox's forkserver imports them ahead)
PARTITIONER_MODULES = [
    f"unstructured.partition.{name}" for name in ("pdf", "docx", "pptx", "xlsx", "email", "html", "md", "csv", "text")
]
# parsed once by warm_up(): the first parse of a type loads models, JIT-compiles and imports lazily
WARM_UP_TEXT = b"Opening hours.\n\nThe shop opens at nine in the morning. It closes at six in the evening."
WARM_UP_PDF = (  # a minimal PDF with a text layer (no xref table: pdfminer finds the objects itself)
    b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [3 0 R] /Count 1>> endobj\n"
    b"3 0 obj <</Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources <</Font <</F1 4 0 R>>>> /Contents 5 0 R>>"
    b" endobj\n4 0 obj <</Type /Font /Subtype /Type1 /BaseFont /Helvetica>> endobj\n5 0 obj <</Length 58>> stream\n"
    b"BT /F1 12 Tf 72 720 Td (Opening hours: nine to six.) Tj ET\nendstream endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
)
log = logging.getLogger(__name__)
for _noisy in ("pdfminer", "unstructured"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


@dataclass(frozen=True)
class Element:
    """A structural piece of a document: a title, a paragraph, a list item, a table..."""

    text: str
    category: str
    page: int | None = None
    depth: int | None = None  # heading level for titles, when the format has one
    html: str | None = None  # tables: their HTML, to split by rows
    sheet: str | None = None  # spreadsheets: the sheet name


def _partition(data: bytes, file_type: str) -> list:
    if file_type == "pdf":
        from unstructured.partition.pdf import partition_pdf

        return partition_pdf(file=io.BytesIO(data), strategy="fast", languages=["eng"])
    if file_type == "docx":
        from unstructured.partition.docx import partition_docx

        return partition_docx(file=io.BytesIO(data))
    if file_type == "pptx":
        from unstructured.partition.pptx import partition_pptx

        return partition_pptx(file=io.BytesIO(data))
    if file_type == "xlsx":
        from unstructured.partition.xlsx import partition_xlsx

        return partition_xlsx(file=io.BytesIO(data))
    if file_type == "eml":
        from unstructured.partition.email import partition_email

        return partition_email(file=io.BytesIO(data))
    text = decode_text(data)
    if file_type == "html":
        from unstructured.partition.html import partition_html

        return partition_html(text=text)
    if file_type == "md":
        from unstructured.partition.md import partition_md

        return partition_md(text=text)
    if file_type in ("csv", "tsv"):
        from unstructured.partition.csv import partition_csv

        return partition_csv(file=io.BytesIO(text.encode("utf-8")), include_header=True)
    from unstructured.partition.text import partition_text

    return partition_text(text=text)


def parse_document(data: bytes, file_type: str) -> list[Element]:
    """Parse a file of a known type into elements, or raise ``ParseError``/``NoExtractableText``."""
    try:
        raw = _partition(data, file_type)
    except MemoryError:
        raise  # over the sandbox's memory limit: not the file's format at fault (ingest.sandbox says so)
    except Exception as exc:  # unstructured and its parsers raise anything on broken files
        raise ParseError(f"could not read this {file_type.upper()} file: {type(exc).__name__}: {exc}") from exc
    elements = []
    if file_type == "eml" and raw and getattr(raw[0].metadata, "subject", None):
        elements.append(Element(text=raw[0].metadata.subject, category="Title", depth=0))
    for el in raw:
        text = (el.text or "").strip()
        if not text or el.category in SKIPPED_CATEGORIES:
            continue
        md = el.metadata
        elements.append(
            Element(
                text=text,
                category=el.category,
                page=getattr(md, "page_number", None),
                depth=getattr(md, "category_depth", None),
                html=getattr(md, "text_as_html", None) if el.category == "Table" else None,
                sheet=getattr(md, "page_name", None),
            )
        )
    if not elements:
        raise NoExtractableText(_why_no_text(data, file_type))
    return elements


def warm_up() -> None:
    """Import every partitioner and parse a text, a PDF and a Word document once (~10 s in all): each
    parse forked from a warm process then skips the language-detection profiles, the spaCy model,
    numba's compiled layout sorting and lazy imports (~1.2 s for a first text, ~0.5 s more for a PDF)."""
    import docx

    for module in PARTITIONER_MODULES:
        importlib.import_module(module)
    word = io.BytesIO()
    document = docx.Document()
    document.add_paragraph(WARM_UP_TEXT.decode())
    document.save(word)
    for data, file_type in ((WARM_UP_TEXT, "txt"), (WARM_UP_PDF, "pdf"), (word.getvalue(), "docx")):
        try:
            parse_document(data, file_type)
        except IngestError:
            log.exception("warming up the %s parser failed; each parse will load it itself", file_type)


def _why_no_text(data: bytes, file_type: str) -> str:
    if file_type != "pdf":
        return f"no text could be extracted from this {file_type.upper()} file"
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = len(reader.pages)
        for page in reader.pages:  # unstructured skips a page whose content is over pypdf's limit
            page.get_contents()
    except LimitReachedError as exc:
        return f"the PDF's page content inflates past the decoding limit; it may be a decompression bomb ({exc})"
    except Exception as exc:
        return f"the PDF is corrupt or unreadable ({type(exc).__name__}: {exc})"
    return (
        f"the PDF has no extractable text: its {pages} page(s) have no text layer "
        "(scanned or image-only); OCR is not enabled"
    )
