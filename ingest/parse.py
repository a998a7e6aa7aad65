"""Parsing of uploaded files into structural elements. The only home of ``unstructured``.

Text formats are decoded here (see ingest.detect.decode_text) so that UTF-16 and cp1252 files
parse correctly; PDFs use the fast strategy (text layer only, no OCR, nothing downloaded).
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

from ingest.detect import decode_text
from ingest.errors import NoExtractableText, ParseError

os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SKIPPED_CATEGORIES = {"PageBreak", "Header", "Footer"}
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


def _why_no_text(data: bytes, file_type: str) -> str:
    if file_type != "pdf":
        return f"no text could be extracted from this {file_type.upper()} file"
    try:
        from pypdf import PdfReader

        pages = len(PdfReader(io.BytesIO(data)).pages)
    except Exception as exc:
        return f"the PDF is corrupt or unreadable ({type(exc).__name__}: {exc})"
    return (
        f"the PDF has no extractable text: its {pages} page(s) have no text layer "
        "(scanned or image-only); OCR is not enabled"
    )
