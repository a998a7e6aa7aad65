"""Reading approved answers from a spreadsheet (CSV or XLSX). The only home of ``openpyxl``.

The first non-empty row is the header. Its columns are found by name, case-insensitively, in English or
Portuguese: ``question``/``pergunta`` and ``answer``/``resposta`` are required, ``variants``/``variantes``
(other phrasings, separated by ``|`` or line breaks) optional; other columns are ignored. A CSV file may
be comma- or semicolon-separated (whichever its header line uses more), UTF-8 with or without a BOM, or
cp1252 (Excel's "CSV" on Windows). Rows keep the number a spreadsheet shows (the header's is 1 when it
is the first line), so an error can point at the row to fix.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kb.detect import decode_text, detect_file_type
from kb.errors import InvalidUpload, UnsupportedFileType

COLUMNS = {"question": ("question", "pergunta"), "answer": ("answer", "resposta"), "variants": ("variants", "variantes")}
_VARIANT_SEPARATOR = re.compile(r"[|\r\n]+")


@dataclass(frozen=True)
class SheetRow:
    """One data row: its number in the file and its cells, stripped (``""`` when empty)."""

    number: int
    question: str
    answer: str
    variants: tuple[str, ...]


def read_rows(filename: str, data: bytes, max_bytes: int) -> list[SheetRow]:
    """The data rows of a CSV or XLSX upload, blank rows left out.

    Raises ``kb.errors.InvalidUpload``: ``UnsupportedFileType`` (415) for other file types,
    ``FileTooLarge`` (413), ``EmptyFile``, or a plain ``InvalidUpload`` (400) when the header has no
    question or answer column.
    """
    file_type = detect_file_type(filename, data, max_bytes)
    if file_type == "csv":
        table = _csv_cells(decode_text(data))
    elif file_type == "xlsx":
        table = _xlsx_cells(data)
    else:
        raise UnsupportedFileType(f"'{filename}': approved answers are imported from .csv or .xlsx files")
    return _rows(filename, table)


def _csv_cells(text: str) -> Iterable[list[str]]:
    header_line = text.lstrip("\ufeff\r\n").split("\n", 1)[0]
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    return csv.reader(io.StringIO(text.lstrip("\ufeff")), delimiter=delimiter)


def _xlsx_cells(data: bytes) -> list[list[str]]:
    from openpyxl import load_workbook

    try:
        sheet = load_workbook(io.BytesIO(data), read_only=True, data_only=True).worksheets[0]
        return [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    except Exception as exc:  # openpyxl raises many types for damaged workbooks
        raise InvalidUpload(f"the workbook could not be read: {exc}") from exc


def _rows(filename: str, table: Iterable[list[str]]) -> list[SheetRow]:
    columns: dict[str, int] | None = None
    rows = []
    for number, cells in enumerate(table, start=1):
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if columns is None:
            columns = _header(filename, cells)
            continue
        question, answer, variants = (_cell(cells, columns.get(name)) for name in ("question", "answer", "variants"))
        rows.append(SheetRow(number, question, answer, tuple(v.strip() for v in _VARIANT_SEPARATOR.split(variants) if v.strip())))
    if columns is None:
        raise InvalidUpload(f"'{filename}' has no rows")
    return rows


def _cell(cells: list[str], column: int | None) -> str:
    return cells[column] if column is not None and column < len(cells) else ""


def _header(filename: str, cells: list[str]) -> dict[str, int]:
    names = [c.casefold() for c in cells]
    found = {key: names.index(alias) for key, aliases in COLUMNS.items() for alias in aliases if alias in names}
    missing = [" or ".join(repr(a) for a in COLUMNS[key]) for key in ("question", "answer") if key not in found]
    if missing:
        raise InvalidUpload(f"'{filename}': the header row needs a {' and a '.join(missing)} column; "
                            f"it has {', '.join(repr(c) for c in cells if c) or 'none'}")
    return found
