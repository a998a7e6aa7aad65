"""File type detection from the content, checked against the extension, and text decoding."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import PurePath

from kb.errors import EmptyFile, ExtensionMismatch, FileTooLarge, UnsupportedFileType

EXTENSIONS = {
    ".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx",
    ".html": "html", ".htm": "html", ".md": "md", ".markdown": "md",
    ".txt": "txt", ".text": "txt", ".csv": "csv", ".tsv": "tsv", ".eml": "eml",
}
TEXT_TYPES = {"html", "md", "txt", "csv", "tsv", "eml"}
CONTENT_NAMES = {
    "pdf": "a PDF document", "docx": "a Word document", "pptx": "a PowerPoint presentation",
    "xlsx": "an Excel workbook", "text": "plain text", "zip": "a ZIP archive", "ole": "a legacy Office (97-2003) file",
    "image": "an image", "binary": "binary data",
}
# a ZIP's central directory is parsed whole (one object per member) to tell DOCX from XLSX: bounded
# first, as Office files list a few dozen to a few thousand members (~100 bytes each) and a 34 MB ZIP
# of 400,000 empty members took 7 s and 230 MB here
MAX_ZIP_DIRECTORY_BYTES = 1024 * 1024
_EOCD = b"PK\x05\x06"  # end of central directory record: 22 bytes plus a comment of up to 65,535
_BOMS = [
    (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"),
]


def sniff(data: bytes) -> str:
    """Name what the bytes are, regardless of the filename."""
    head = data[:1024]
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        directory = zip_directory_size(data)
        if directory is None:
            return "binary"
        if directory > MAX_ZIP_DIRECTORY_BYTES:
            return "big zip"
        try:
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
        except zipfile.BadZipFile:
            return "binary"
        for marker, kind in (("word/document.xml", "docx"), ("xl/workbook.xml", "xlsx"), ("ppt/presentation.xml", "pptx")):
            if marker in names:
                return kind
        return "zip"
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        return "ole"
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*")):
        return "image"
    try:
        decode_text(data)
        return "text"
    except UnicodeDecodeError:
        # the PDF format allows bytes before the header; text that merely mentions %PDF- decodes
        return "pdf" if b"%PDF-" in head else "binary"


def zip_directory_size(data: bytes) -> int | None:
    """The size of a ZIP's central directory as ``zipfile`` will read it: from the end record, or from
    the ZIP64 end record just before it when there is one; None when there is no end record."""
    end = data.rfind(_EOCD, max(0, len(data) - 22 - 65535))
    if end < 0 or end + 22 > len(data):
        return None
    zip64 = end - 20 - 56  # the ZIP64 end record (56 bytes), then its locator (20 bytes)
    if zip64 >= 0 and data[end - 20 : end - 16] == b"PK\x06\x07" and data[zip64 : zip64 + 4] == b"PK\x06\x06":
        return int(struct.unpack_from("<Q", data, zip64 + 40)[0])
    return int(struct.unpack_from("<I", data, end + 12)[0])


def decode_text(data: bytes) -> str:
    """Decode text files: BOMs (UTF-8/16/32), BOM-less UTF-16, UTF-8, then cp1252."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec)
    sample = data[:4096]
    if len(sample) >= 4 and sample.count(b"\x00") > len(sample) // 4:
        # BOM-less UTF-16: every other byte of ASCII-range text is NUL
        return data.decode("utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be")
    if b"\x00" in sample:
        raise UnicodeDecodeError("ascii", sample, 0, 1, "NUL bytes in text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="strict") if _cp1252_ok(data) else None
        if text is None:
            raise
        return text


def _cp1252_ok(data: bytes) -> bool:
    # the five bytes cp1252 leaves undefined never appear in real cp1252 text
    return not any(b in data for b in (b"\x81", b"\x8d", b"\x8f", b"\x90", b"\x9d"))


def detect_file_type(filename: str, data: bytes, max_bytes: int) -> str:
    """Return the file type for ``filename``/``data`` or raise an ``InvalidUpload`` that says why."""
    if not data:
        raise EmptyFile(f"'{filename}' is empty (0 bytes)")
    if len(data) > max_bytes:
        raise FileTooLarge(f"'{filename}' is over the size limit of {max_bytes / 2**20:g} MiB")
    ext = PurePath(filename).suffix.lower()
    expected = EXTENSIONS.get(ext)
    if expected is None:
        supported = ", ".join(sorted(EXTENSIONS))
        raise UnsupportedFileType(f"'{filename}': unsupported file type {ext or '(no extension)'}; supported: {supported}")
    actual = sniff(data)
    if actual == "big zip":
        directory = zip_directory_size(data)
        assert directory is not None  # sniff measured it to call the file a big zip
        raise FileTooLarge(
            f"'{filename}' is a ZIP archive whose list of contents takes {directory / 2**20:.1f} MiB, "
            f"over the limit of {MAX_ZIP_DIRECTORY_BYTES / 2**20:g} MiB (Office files list far fewer files)"
        )
    if actual == expected or (actual == "text" and expected in TEXT_TYPES):
        if expected in TEXT_TYPES and not decode_text(data).strip():
            raise EmptyFile(f"'{filename}' contains only whitespace")
        return expected
    if expected == "pdf" and actual in ("text", "binary"):
        raise ExtensionMismatch(f"'{filename}' is not a valid PDF (no %PDF header); the file is corrupt or not a PDF")
    raise ExtensionMismatch(f"'{filename}' has extension {ext} but its content is {CONTENT_NAMES.get(actual, actual)}")
