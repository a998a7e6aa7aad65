"""Export benchmark: the streamed conversation export stays flat in memory as the log grows.

Bulk-inserts a synthetic log (Core inserts in batches: 20 messages per conversation, every reply with
three cited passages, every fourth reply with a function call), then streams the export as JSONL and
as CSV through ``runtime.review.export.stream_export`` -- the generator the HTTP route serves -- into a sink
that parses every row back (``json.loads`` per line / ``csv.reader``) and keeps nothing. The process's
RSS is sampled after every chunk; the figures at 10k, 50k and 100k rows show whether it is flat.
Run: ``python -m atende.bench.export [--messages N] [--database-url URL]``.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import resource
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from sqlalchemy import insert

from atende.services import build_services

from core.db import new_id
from core.settings import Settings
from kb import registry
from runtime.models import Conversation, Message, MessageSource, ToolCallRecord
from runtime.review.export import stream_export
from runtime.review.filters import ConversationFilters
from runtime.services import Services

PER_CONVERSATION = 20
SOURCES_PER_REPLY = 3
BATCH = 5000
PASSAGE = ("Atendemos de segunda a sexta, das 8h às 18h, e aos sábados das 9h às 13h. "
           "Consultas de avaliação custam R$ 120; a limpeza, R$ 150, com retorno incluído em 30 dias. ") * 2
START = datetime(2024, 1, 1, tzinfo=UTC)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batches(rows: Iterable[dict], size: int = BATCH) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(services: Services, messages: int) -> dict:
    """Insert ``messages`` messages (half of them replies) with their conversations, sources and calls."""
    with services.session() as session:
        assistant_id = registry.create_assistant(session, name="bench-export", embedding_model="all-minilm-l6-v2",
                                                 chunk_size=256, chunk_overlap=32).id
        session.commit()
    conversations = -(-messages // PER_CONVERSATION)
    conv_rows = ({"id": new_id(), "assistant_id": assistant_id, "channel": ("whatsapp", "widget", "api")[c % 3],
                  "sender": "bench", "customer_id": f"5511{c:09d}", "variables": {},
                  "handoff_state": "ai" if c % 10 else "waiting_for_human",
                  "created_at": START + timedelta(minutes=c), "tokens_in": 0, "tokens_out": 0, "cost": 0.0}
                 for c in range(conversations))
    # parents before children: messages, then their sources and calls
    pending = {Message.__table__: [], MessageSource.__table__: [], ToolCallRecord.__table__: []}
    counts = {"conversations": conversations, "messages": 0, "sources": 0, "function_calls": 0}

    def flush(conn) -> None:
        for table, rows in pending.items():
            if rows:
                conn.execute(insert(table), rows)
                rows.clear()

    with services.engine.begin() as conn:
        for batch in _batches(conv_rows):
            conn.execute(insert(Conversation.__table__), batch)
            for conv in batch:
                rows = _conversation_rows(conv, min(PER_CONVERSATION, messages - counts["messages"]))
                for bucket, key, new in zip(pending.values(), ("messages", "sources", "function_calls"), rows,
                                            strict=True):
                    bucket.extend(new)
                    counts[key] += len(new)
                if len(pending[Message.__table__]) >= BATCH:
                    flush(conn)
        flush(conn)
    with services.engine.connect() as conn:  # planner statistics, as a live database has them
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return counts


def _conversation_rows(conv: dict, n: int) -> tuple[list[dict], list[dict], list[dict]]:
    msgs, sources, calls = [], [], []
    for i in range(n):
        outbound = i % 2 == 1
        mid = new_id()
        msgs.append({
            "id": mid, "conversation_id": conv["id"], "direction": "outbound" if outbound else "inbound",
            "text": f"Resposta {i} com base nas fontes [1][2]." if outbound else f"Pergunta {i}: qual o horário?",
            "status": "delivered" if outbound else "answered", "kind": "text", "channel_cost": 0.0,
            "created_at": conv["created_at"] + timedelta(seconds=30 * i), "tokens_in": 300 if outbound else 0,
            "tokens_out": 25 if outbound else 0, "cost": 0.0004 if outbound else 0.0, "latency_ms": 850 if outbound else None,
        })
        if not outbound:
            continue
        sources += [{"id": new_id(), "message_id": mid, "rank": r, "chunk_id": new_id(), "document_id": "doc",
                     "version": 1, "filename": "politica.pdf", "page": r, "section": "Horário", "score": 0.9 - r / 10,
                     "text": PASSAGE} for r in range(1, SOURCES_PER_REPLY + 1)]
        if i % 8 == 7:
            calls.append({"id": new_id(), "message_id": mid, "position": 0, "round": 1, "name": "search_knowledge_base",
                          "arguments": {"query": "horário de sábado"}, "result": PASSAGE[:200], "error": None,
                          "duration_ms": 12})
    return msgs, sources, calls


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """Complete lines (newline kept) out of arbitrary text chunks."""
    tail = ""
    for chunk in chunks:
        parts = (tail + chunk).split("\n")
        tail = parts.pop()
        for part in parts:
            yield part + "\n"
    if tail:
        yield tail


class ParsingSink:
    """Consumes the export as it streams: parses each row back, counts rows and cited sources, samples RSS."""

    def __init__(self, fmt: str, checkpoints: tuple[int, ...]):
        self.fmt, self.checkpoints = fmt, checkpoints
        self.rows = self.sources = self.bytes = 0
        self.rss_at: dict[int, float] = {}
        self.max_rss = 0.0
        self.parse_s = 0.0

    def consume(self, chunks: Iterable[str]) -> None:
        counted = self._count(chunks)
        rows = csv.reader(_lines(counted)) if self.fmt == "csv" else (json.loads(line) for line in _lines(counted))
        if self.fmt == "csv":
            header = next(rows)
            col = header.index("sources")
        for row in rows:
            self.rows += 1
            self.sources += len(row["sources"] if self.fmt == "jsonl" else json.loads(row[col]))
            for mark in self.checkpoints:
                if self.rows == mark:
                    self.rss_at[mark] = _rss_mb()

    def _count(self, chunks: Iterable[str]) -> Iterator[str]:
        for chunk in chunks:
            self.bytes += len(chunk.encode())
            self.max_rss = max(self.max_rss, _rss_mb())
            yield chunk


def measure(services: Services, fmt: str, checkpoints: tuple[int, ...]) -> dict:
    gc.collect()
    before = _rss_mb()
    sink = ParsingSink(fmt, checkpoints)
    t = time.perf_counter()
    sink.consume(stream_export(services, fmt, ConversationFilters()))
    wall = time.perf_counter() - t
    return {"format": fmt, "rows": sink.rows, "sources": sink.sources, "mb": round(sink.bytes / 2**20, 1),
            "wall_s": round(wall, 2), "rows_per_s": round(sink.rows / wall), "rss_before_mb": round(before, 1),
            "rss_at_mb": {k: round(v, 1) for k, v in sink.rss_at.items()}, "max_rss_mb": round(sink.max_rss, 1)}


def run_benchmark(messages: int = 100_000, database_url: str | None = None) -> dict:
    checkpoints = tuple(n for n in (10_000, 50_000, 100_000) if n <= messages) or (messages,)
    with tempfile.TemporaryDirectory(prefix="atende-bench-export-") as home:
        services = build_services(Settings(home=Path(home), database_url=database_url, workers=0))
        try:
            t = time.perf_counter()
            counts = seed(services, messages)
            seed_s = time.perf_counter() - t
            runs = [measure(services, fmt, checkpoints) for fmt in ("jsonl", "csv")]
        finally:
            services.engine.dispose()
    report = {"database": services.engine.dialect.name, **counts, "seed_s": round(seed_s, 2),
              "seed_messages_per_s": round(counts["messages"] / seed_s), "runs": runs,
              "peak_rss_mb": round(_peak_rss_mb(), 1)}
    for run in runs:
        assert run["rows"] == counts["messages"], f"{run['format']}: {run['rows']} rows, {counts['messages']} messages"
        assert run["sources"] == counts["sources"], f"{run['format']}: {run['sources']} sources"
    _print(report)
    return report


def _print(report: dict) -> None:
    print(f"export benchmark ({report['database']}): {report['messages']} messages in {report['conversations']} "
          f"conversations, {report['sources']} sources, {report['function_calls']} function calls")
    print(f"  seed     {report['seed_s']}s ({report['seed_messages_per_s']} messages/s, Core inserts of {BATCH})")
    for r in report["runs"]:
        at = " · ".join(f"{k // 1000}k {v} MB" for k, v in r["rss_at_mb"].items())
        print(f"  {r['format']:<5}    {r['rows']} rows, {r['mb']} MB in {r['wall_s']}s -> {r['rows_per_s']} rows/s "
              f"(parsed back)   RSS before {r['rss_before_mb']} MB · at {at} · max {r['max_rss_mb']} MB")
    print(f"  process peak RSS (seeding included) {report['peak_rss_mb']} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    run_benchmark(args.messages, args.database_url)
