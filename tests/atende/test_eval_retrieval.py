"""The retrieval evaluation's own arithmetic: metrics on hand-computed rankings, the dev/test split."""
from __future__ import annotations

import math

import pytest

from atende.evaluation.retrieval import half, scores, select_queries


def test_metrics_match_hand_computed_values():
    ranked = [["a", "b", "c"], ["x", "y", "g"], ["p", "q", "r"], ["m", "g1", "g2"]]
    gold = [["a"], ["g"], ["z"], ["g1", "g2"]]
    r = scores(ranked, gold, [10.0, 20.0, 30.0, 40.0])
    assert r["recall@1"] == 0.25  # only the first query has its gold passage first
    assert r["recall@5"] == r["recall@10"] == 0.75
    assert r["mrr@10"] == pytest.approx(round((1 + 1 / 3 + 0 + 1 / 2) / 4, 4))
    ndcg4 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # two gold ids at ranks 2 and 3
    assert r["ndcg@10"] == pytest.approx(round((1 + 1 / math.log2(4) + 0 + ndcg4) / 4, 4))
    assert (r["p50_ms"], r["p95_ms"]) == (25.0, 38.5)


def test_split_is_stable_and_follows_the_gold_passage():
    ids = [f"set-{i:03d}" for i in range(200)]
    halves = [half(i) for i in ids]
    assert halves == [half(i) for i in ids] and 60 < halves.count("dev") < 140
    queries = [{"id": str(n), "gold_ids": [pid]} for n, pid in enumerate(ids)]
    dev, test = select_queries(queries, "dev", None), select_queries(queries, "test", None)
    assert len(dev) + len(test) == 200 and not {q["id"] for q in dev} & {q["id"] for q in test}
    assert all(half(q["gold_ids"][0]) == "test" for q in test)
    assert len(select_queries(queries, "all", 7)) == 7
