"""Ingest benchmark: the real pipeline, per stage, against the model's raw encode throughput.

Ingests the given files/folders into a fresh assistant (temporary data dir) with the real
pipeline, then encodes the very same chunk texts with the same model at its best batch size.
The ratio of the two throughputs is the pipeline's efficiency (1.0 = no overhead at all).
Run: ``atende bench ingest ../shared/data/docs`` (or ``make bench``).
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from atende.ingest_files import ingest_paths
from atende.services import build_services
from core.settings import Settings
from kb import registry
from kb.models import IngestJob


class RecordingEmbedder:
    """Wraps an embedder and keeps every passage it embeds, to replay them for the raw baseline."""

    def __init__(self, inner):
        self.inner, self.passages = inner, []
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def embed_documents(self, texts, batch_size=32):
        self.passages.extend(texts)
        return self.inner.embed_documents(texts, batch_size)

    def embed_query(self, text):
        return self.inner.embed_query(text)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_encode(embedder, texts: list[str], batch_sizes: list[int]) -> tuple[int, float, dict]:
    """Best batch size on a sample, then the time to encode all texts with it."""
    sample = texts[: min(len(texts), 256)]
    embedder.embed_documents(sample[:16], 16)  # warm-up
    per_batch = {}
    for bs in batch_sizes:
        t = time.perf_counter()
        embedder.embed_documents(sample, bs)
        per_batch[bs] = len(sample) / (time.perf_counter() - t)
    best = max(per_batch, key=per_batch.get)
    t = time.perf_counter()
    embedder.embed_documents(texts, best)
    return best, time.perf_counter() - t, per_batch


def run_benchmark(paths: list[Path], model: str = "all-minilm-l6-v2", batch_sizes: list[int] = (8, 16, 32, 64)) -> dict:
    with tempfile.TemporaryDirectory(prefix="atende-bench-") as home:
        services = build_services(Settings(home=Path(home), workers=0))
        real = services.embedders.get(model)
        recorder = RecordingEmbedder(real)
        services.embedders.put(recorder)
        s = services.settings
        with services.session() as session:
            registry.create_assistant(session, name="bench", embedding_model=model,
                                      chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap)
            session.commit()
        real.embed_documents(["warm-up"] * 4)
        t = time.perf_counter()
        results = ingest_paths(services, "bench", paths, progress=True)
        wall = time.perf_counter() - t
        with services.session() as session:
            stages = {k: 0.0 for k in ("parse_s", "chunk_s", "embed_s", "store_s")}
            for job in session.query(IngestJob).filter(IngestJob.kind == "ingest"):
                for k in stages:
                    stages[k] += (job.timings or {}).get(k, 0.0)
        chunks = len(recorder.passages)
        best, raw_s, per_batch = raw_encode(real, recorder.passages, list(batch_sizes))
        report = {
            "model": model, "files": len(results), "failed": sum(r.failed for r in results), "chunks": chunks,
            "wall_s": round(wall, 2), **{k: round(v, 2) for k, v in stages.items()},
            "pipeline_chunks_per_s": round(chunks / wall, 2),
            "raw_encode_best_batch": best, "raw_encode_chunks_per_s": round(chunks / raw_s, 2),
            "raw_encode_sample_per_s_by_batch": {b: round(v, 1) for b, v in per_batch.items()},
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        report["pipeline_vs_raw"] = round(report["pipeline_chunks_per_s"] / report["raw_encode_chunks_per_s"], 3)
    _print(report, results)
    return report


def _print(report: dict, results) -> None:
    for r in results:
        print(f"  {r.symbol} {r.name}: {r.summary}")
    print(f"\ningest benchmark ({report['model']}): {report['files']} files, {report['chunks']} chunks, {report['failed']} failed")
    print(f"  stages   parse {report['parse_s']}s · chunk {report['chunk_s']}s · embed {report['embed_s']}s · store {report['store_s']}s")
    print(f"  pipeline {report['wall_s']}s wall -> {report['pipeline_chunks_per_s']} chunks/s")
    print(f"  raw encode (same chunks, batch {report['raw_encode_best_batch']}) -> {report['raw_encode_chunks_per_s']} chunks/s"
          f"   (sample by batch size: {report['raw_encode_sample_per_s_by_batch']})")
    print(f"  pipeline / raw encode = {report['pipeline_vs_raw']}   peak RSS {report['peak_rss_mb']} MB")
