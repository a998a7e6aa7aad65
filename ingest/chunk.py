"""Structure-aware chunking. The only home of ``llama_index``.

Elements are grouped into blocks under their section path (titles open sections); text blocks
are split by llama-index's ``SentenceSplitter`` measured with the embedding model's own
tokenizer; tables stay whole or are split by rows with their header repeated, except a question-answer table
(an FAQ sheet whose header names its question and answer columns in pt/en/es), which gives one chunk per row titled
by its question, so each answer retrieves on its own. Every chunk's
``embed_text`` is checked against the model's maximum sequence length, so nothing is ever
silently truncated by the model.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.parse import Element
from kb.embedders import Embedder
from kb.types import Chunk

SECTION_SEP = " > "
# headers naming the question and the answer columns of an FAQ sheet (pt, en, es; compared without accents and case)
QUESTION_HEADERS = {"pergunta", "perguntas", "questao", "question", "questions", "pregunta", "preguntas"}
ANSWER_HEADERS = {"resposta", "respostas", "answer", "answers", "respuesta", "respuestas"}
MAX_SECTION_DEPTH = 6
MAX_TITLE_CHARS = 120
MIN_BUDGET = 24


@dataclass
class _Block:
    section: list[str]
    items: list[tuple[Element, int]] = field(default_factory=list)  # (element, char offset in document)
    is_table: bool = False


def _blocks(elements: list[Element]) -> list[_Block]:
    """Group elements into blocks that share a section path; each table is a block of its own."""
    blocks: list[_Block] = []
    path: list[str] = []
    pending_titles: list[tuple[Element, int]] = []
    offset = 0
    for el in elements:
        start, offset = offset, offset + len(el.text) + 2
        if el.category == "Title":
            depth = min(max(el.depth or 0, 0), MAX_SECTION_DEPTH - 1)
            root = [el.sheet] if el.sheet else []
            path = (path[: len(root) + depth] if path[: len(root)] == root else root) + [el.text[:MAX_TITLE_CHARS]]
            pending_titles.append((el, start))
            continue
        section = path if not el.sheet or path[:1] == [el.sheet] else [el.sheet]
        is_table = el.category == "Table" and bool(el.html)
        cur = blocks[-1] if blocks else None
        if cur is None or is_table or cur.is_table or cur.section != section or pending_titles:
            cur = _Block(section=list(section), is_table=is_table)
            blocks.append(cur)
        if not is_table:  # a table's titles live in its section path, not in its rows
            cur.items.extend(pending_titles)
        pending_titles = []
        cur.items.append((el, start))
    if pending_titles:  # trailing titles with no body are still searchable text
        blocks.append(_Block(section=list(path), items=pending_titles))
    return blocks


def _table_grid(html: str) -> list[list[str]]:
    """The table's non-empty rows, each a list of its cells' text."""
    import lxml.html

    grid = []
    for tr in lxml.html.fromstring(html).iter("tr"):
        cells = [" ".join(td.text_content().split()) for td in tr if td.tag in ("td", "th")]
        if any(cells):
            grid.append(cells)
    return grid


def _table_rows(grid: list[list[str]]) -> list[str]:
    width = max((len(r) for r in grid), default=0)
    used = [i for i in range(width) if any(i < len(r) and r[i] for r in grid)]  # drop all-empty columns
    return ["| " + " | ".join(r[i] if i < len(r) else "" for i in used) + " |" for r in grid]


def _qa_columns(grid: list[list[str]]) -> tuple[int, int] | None:
    """(question column, answer column) when the table's first row names them, else None."""
    if len(grid) < 2:
        return None

    def plain(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c)).strip()

    heads = [plain(h) for h in grid[0]]
    q = next((i for i, h in enumerate(heads) if h in QUESTION_HEADERS), None)
    a = next((i for i, h in enumerate(heads) if h in ANSWER_HEADERS), None)
    return (q, a) if q is not None and a is not None else None


class Chunker:
    """Splits parsed elements into chunks sized in the embedder's tokens."""

    def __init__(self, embedder: Embedder, chunk_size: int, chunk_overlap: int):
        from llama_index.core.node_parser import SentenceSplitter

        self._count = embedder.count_tokens
        self._max = embedder.max_tokens
        self._overhead = embedder.count_tokens("")
        self.chunk_size = max(MIN_BUDGET, min(chunk_size, self._max - self._overhead))
        self.chunk_overlap = max(0, min(chunk_overlap, self.chunk_size // 4))
        self._splitter_cls = SentenceSplitter
        self._splitters: dict[int, object] = {}

    def _tokens(self, text: str) -> int:
        return self._count(text) - self._overhead

    def _split(self, text: str, budget: int) -> list[str]:
        if budget not in self._splitters:
            self._splitters[budget] = self._splitter_cls(
                chunk_size=budget,
                chunk_overlap=min(self.chunk_overlap, budget // 4),
                tokenizer=lambda t: range(self._tokens(t)),
                paragraph_separator="\n\n",
            )
        return [t for t in self._splitters[budget].split_text(text) if t.strip()]

    def _fit(self, text: str, header: str) -> list[tuple[str, int]]:
        """Split ``text`` into (piece, offset in text) whose ``header + piece`` fits the model,
        whatever the splitter did."""
        out = []
        cursor = 0
        for piece in self._split(text, self._budget(header)):
            found = text.find(piece, cursor)
            offset = found if found >= 0 else cursor
            cursor = offset + 1  # pieces overlap, but each starts after the previous one
            while self._count(header + piece) > self._max:
                # a run without separators (e.g. a long URL) can defeat the splitter: cut by characters
                cut = self._longest_fitting_prefix(piece, header)
                out.append((piece[:cut], offset))
                piece, offset = piece[cut:], offset + cut
            out.append((piece, offset))
        return out

    def _longest_fitting_prefix(self, piece: str, header: str) -> int:
        lo, hi = 1, len(piece) - 1  # binary search on the measured count, never on an estimate
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._count(header + piece[:mid]) <= self._max:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _budget(self, header: str) -> int:
        return max(MIN_BUDGET, min(self.chunk_size, self._max - self._overhead - self._tokens(header)))

    def chunk(self, elements: list[Element], check: Callable[[], None] = lambda: None) -> list[Chunk]:
        """The chunks of a parsed document, in reading order; ``check`` is called before each block (titles and
        the text under them, or a table) and may raise to stop (the ingestion deadline). A question-answer table
        (``_qa_columns``) gives one chunk per row, titled by its question."""
        chunks: list[Chunk] = []
        for block in _blocks(elements):
            check()
            section = SECTION_SEP.join(block.section)
            header = f"{SECTION_SEP.join(block.section[:-1] if not block.is_table else block.section)}\n\n"
            header = header if header.strip() else ""
            grid = _table_grid(block.items[0][0].html or "") if block.is_table else []
            columns = _qa_columns(grid)
            if columns is not None:
                el, offset = block.items[0]
                for question, text in self._qa_pieces(grid, columns, header):
                    title = SECTION_SEP.join([*block.section, question[:MAX_TITLE_CHARS]])
                    chunks.append(self._chunk(text, header, len(chunks), title, block.items, offset,
                                              offset + len(el.text)))
                continue
            pieces = self._table_pieces(block, grid, header) if block.is_table else self._text_pieces(block, header)
            for text, items, char_start, char_end in pieces:
                chunks.append(self._chunk(text, header, len(chunks), section, items, char_start, char_end))
        return chunks

    @staticmethod
    def _chunk(text: str, header: str, position: int, section: str, items: list[tuple[Element, int]],
               char_start: int, char_end: int) -> Chunk:
        pages = [el.page for el, _ in items if el.page is not None]
        return Chunk(
            text=text,
            embed_text=header + text,
            position=position,
            section=section,
            page=min(pages) if pages else None,
            page_end=max(pages) if pages else None,
            element_types=tuple(dict.fromkeys(el.category for el, _ in items)),
            char_start=char_start,
            char_end=char_end,
        )

    def _text_pieces(self, block: _Block, header: str):
        text = "\n\n".join(el.text for el, _ in block.items)
        spans, pos = [], 0
        for el, doc_offset in block.items:
            spans.append((pos, pos + len(el.text), el, doc_offset))
            pos += len(el.text) + 2
        for piece, start in self._fit(text, header):
            end = start + len(piece)
            hit = [(s, e, el, off) for s, e, el, off in spans if s < end and e > start] or [spans[-1]]
            char_start = hit[0][3] + max(0, start - hit[0][0])
            char_end = hit[-1][3] + min(hit[-1][1], end) - hit[-1][0]
            yield piece, [(el, off) for _, _, el, off in hit], char_start, char_end

    def _table_pieces(self, block: _Block, grid: list[list[str]], header: str):
        el, offset = block.items[0]
        span = (offset, offset + len(el.text))
        rows = _table_rows(grid)
        if not rows:
            yield from ((p, block.items, *span) for p, _ in self._fit(el.text, header))
            return
        whole = "\n".join(rows)
        if self._fits(header, whole):
            yield whole, block.items, *span
            return
        head, body = rows[0], rows[1:] or rows[:1]
        group: list[str] = []
        for row in body:
            if group and not self._fits(header, "\n".join([head, *group, row])):
                yield "\n".join([head, *group]), block.items, *span
                group = []
            if not self._fits(header, f"{head}\n{row}"):  # one row longer than a chunk
                for piece, _ in self._fit(row, f"{header}{head}\n"):
                    yield f"{head}\n{piece}", block.items, *span
                continue
            group.append(row)
        if group:
            yield "\n".join([head, *group]), block.items, *span

    def _qa_pieces(self, grid: list[list[str]], columns: tuple[int, int], header: str) -> list[tuple[str, str]]:
        """(question, text) per question-answer row of ``grid`` (``columns``: the question's and the answer's): the
        text is the question, the answer, then the row's other cells as "header: value" lines; an answer longer than
        a chunk is split, each piece under its question."""
        q, a = columns
        names = grid[0]
        pieces = []
        for row in grid[1:]:
            cell = dict(enumerate(row))
            question, answer = cell.get(q, ""), cell.get(a, "")
            if not question or not answer:
                continue
            extra = [f"{names[i]}: {v}" for i, v in cell.items() if i not in (q, a) and v and i < len(names)]
            body = "\n".join([answer, *extra])
            pieces += [(question, f"{question}\n{p}") for p, _ in self._fit(body, f"{header}{question}\n")]
        return pieces

    def _fits(self, header: str, text: str) -> bool:
        return self._tokens(text) <= self._budget(header) and self._count(header + text) <= self._max
