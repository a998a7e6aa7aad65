"""``atende eval answers``: the answer normaliser and token F1 (en/pt/es, hand-computed), the sample, and
the whole command on a tiny corpus with a scripted model that answers with the text of source [1]."""
from __future__ import annotations

import json
import re

import pytest

from atende.cli import build_parser
from atende.evaluation import answers
from atende.evaluation.answers import best_f1, contains_answer, format_report, normalize, sample_queries, token_f1
from atende.evaluation.retrieval import half
from runtime.llm import ScriptedChatModel
from tests.conftest import make_services
from tests.factories import use_scripted_model

CORPUS = [
    {"id": "p1", "title": "Store hours", "text": "We open Monday to Friday from 9 am to 6 pm."},
    {"id": "p2", "title": "Delivery", "text": "Orders are delivered in two business days anywhere in the city."},
    {"id": "p3", "title": "Returns", "text": "Products can be returned within thirty days with the receipt."},
    {"id": "p4", "title": "Payment", "text": "We accept credit cards and bank transfers."},
]
QUERIES = [
    {"id": "q1", "question": "When does the store open?", "answers": ["from 9 am to 6 pm"], "gold_ids": ["p1"]},
    {"id": "q2", "question": "How long does delivery take?", "answers": ["two business days"], "gold_ids": ["p2"]},
    # nothing in the knowledge base is near it: no source passes min_score, the model gives up
    {"id": "q3", "question": "Who won the 1998 football World Cup?", "answers": ["France"], "gold_ids": ["p3"]},
]


@pytest.mark.parametrize("text, tokens", [
    ("The U.S. Army's a big one!", ["us", "armys", "big", "one"]),
    ("A Constituição é de 1988, não é?", ["constituicao", "e", "de", "1988", "nao", "e"]),
    ("¿Dónde está el Museo del Prado?", ["donde", "esta", "museo", "del", "prado"]),
    ("Os índios e as línguas; uma aldeia", ["indios", "e", "linguas", "aldeia"]),
    ("Los *precios* — unas ofertas", ["precios", "ofertas"]),
])
def test_normalize_lowercases_strips_accents_punctuation_and_articles(text, tokens):
    assert normalize(text) == tokens


def test_token_f1_on_hand_computed_examples():
    # en: 4 reply tokens, 1 gold token, 1 shared: P 1/4, R 1 -> 0.4
    assert token_f1("The answer is Paris, France.", "Paris") == pytest.approx(0.4)
    # pt: "os" dropped on both sides; indios tupis viviam no litoral (5) vs tupis no litoral brasileiro (4),
    # 3 shared: P 3/5, R 3/4 -> 2/3
    assert token_f1("Os índios tupis viviam no litoral", "os tupis no litoral brasileiro") == pytest.approx(2 / 3)
    # es: esta en madrid capital de espana (6) vs en madrid (2): P 1/3, R 1 -> 0.5
    assert token_f1("Está en Madrid, la capital de España.", "en Madrid") == pytest.approx(0.5)
    # repeated tokens count once per occurrence in the gold answer: "to" x2 in the reply, x1 in the gold
    assert token_f1("to to pm", "to pm") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("Lisboa", "Madrid") == 0.0
    assert token_f1("", "Madrid") == 0.0
    assert token_f1("The", "a") == 1.0  # nothing left on either side, as in SQuAD
    # the best gold answer counts: madrid vs ciudad de madrid -> P 1, R 1/3 -> 0.5
    assert best_f1("Madrid", ["Lisboa", "la ciudad de Madrid"]) == pytest.approx(0.5)
    assert best_f1("Madrid", []) == 0.0


def test_containment_matches_whole_normalised_tokens():
    assert contains_answer("Fica em São Paulo, na *Avenida Paulista*.", ["a avenida paulista"])
    assert contains_answer("El museo está en Madrid.", ["Lisboa", "en madrid"])
    assert not contains_answer("Abrimos às 18h.", ["8h"])
    assert not contains_answer("Anything", ["the"])  # an answer that normalises to nothing never matches


def test_sample_is_random_reproducible_and_of_the_split():
    queries = [{"id": f"q{i}", "question": "?", "answers": [], "gold_ids": [f"passage-{i}"]} for i in range(200)]
    first = sample_queries(queries, "test", 20, seed=0)
    assert len(first) == 20 and all(half(q["gold_ids"][0]) == "test" for q in first)
    assert first == sample_queries(queries, "test", 20, seed=0)
    assert first != sample_queries(queries, "test", 20, seed=1)
    assert first != select_first(queries, "test", 20)  # random, not the head of the file
    assert len(sample_queries(queries, "all", 500, seed=0)) == 200


def select_first(queries, split, n):
    return [q for q in queries if half(q["gold_ids"][0]) == split][:n]


def first_source_and_marker(messages, tools):
    """The text of source [1] followed by the marker [1]; NO_ANSWER when no source was shown."""
    prompt = messages[-1]["content"]
    found = re.search(r"^\[1\] \(.*?\)\n(.*?)(?:\n\n\[2\]|\n\nCustomer message:)", prompt, re.S | re.M)
    return f"{found.group(1)} [1]" if found else "NO_ANSWER"


def test_the_command_runs_every_question_through_the_turn_engine_and_scores_it(tmp_path, embedders, monkeypatch, capsys):
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in CORPUS), encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES), encoding="utf-8")
    model = ScriptedChatModel().enqueue(*[first_source_and_marker] * 3)

    def scripted_services(home, embedding_model, cache=True):
        services = make_services(home, embedders, workers=0, ingest_parallelism=2)
        use_scripted_model(services, model)
        return services

    monkeypatch.setattr(answers, "evaluation_services", scripted_services)
    args = build_parser().parse_args([
        "eval", "answers", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
        "--split", "all", "--model", "all-minilm-l6-v2", "--json",
    ])
    assert (args.sample, args.seed) == (20, 0)
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)

    # the assistant's prompt is the neutral one, every question was a conversation of its own
    assert len(model.requests) == 3
    assert all(r.messages[0]["content"].startswith(answers.SYSTEM_PROMPT) for r in model.requests)
    assert all(len(r.messages) == 2 for r in model.requests)  # system + this question: no history
    assert result["meta"]["top_k"] == 3 and result["meta"]["passages"] == 4

    q1, q2, q3 = result["items"]
    assert [i["id"] for i in result["items"]] == ["q1", "q2", "q3"]
    # q1: "store hours we open monday to friday from 9 am to 6 pm 1" (14 tokens) vs "from 9 am to 6 pm" (6),
    # all 6 shared: P 6/14, R 1 -> F1 12/20
    assert q1["reply"] == "Store hours\n\nWe open Monday to Friday from 9 am to 6 pm. [1]"
    assert (q1["status"], q1["sources"][0], q1["retrieved_gold"], q1["cited_gold"], q1["cited_in_text"]) == \
        ("answered", "p1", True, True, True)
    assert q1["f1"] == pytest.approx(0.6) and q1["contains"]
    # q2: "delivery orders are delivered in two business days anywhere in city 1" (12) vs 3 gold tokens: F1 6/15
    assert (q2["status"], q2["sources"][0], q2["cited_gold"], q2["cited_in_text"]) == ("answered", "p2", True, True)
    assert q2["f1"] == pytest.approx(0.4) and q2["contains"]
    # q3: no source shown, the fallback message shares nothing with "France"
    assert (q3["status"], q3["sources"], q3["retrieved_gold"], q3["cited_gold"], q3["f1"], q3["contains"]) == \
        ("fallback", [], False, False, 0.0, False)

    s = result["summary"]
    assert s["n"] == 3
    assert s["cited_gold_rate"] == s["retrieved_gold_rate"] == s["cited_in_text_rate"] == s["contains_rate"] == 0.6667
    assert s["mean_f1"] == pytest.approx((0.6 + 0.4 + 0) / 3, abs=1e-4)
    assert s["fallback_rate"] == 0.3333 and s["statuses"] == {"answered": 2, "fallback": 1}
    assert 0 < s["p50_ms"] <= s["p95_ms"]

    table = format_report(result)
    assert re.search(r"When does the store open\?\s+answered\s+yes\s+0\.60\s+yes", table)
    assert re.search(r"Who won the 1998 football World Cup\?\s+fallback\s+no\s+0\.00\s+no", table)
    assert "n=3  cited-gold 67%  retrieved-gold 67%  mean F1 0.333  contains 67%  fallback 33%" in table


def test_wrong_language_and_invented_answers_are_counted_apart():
    item = {"cited_gold": True, "retrieved_gold": True, "cited_in_text": False, "f1": 0.5, "contains": True,
            "status": "answered", "latency_ms": 100.0}
    items = [{**item, "wrong_language": False}, {**item, "wrong_language": True}]
    oos = [{**item, "status": "answered"}, {**item, "status": "fallback"}, {**item, "status": "fallback"},
           {**item, "status": "smalltalk"}]
    s = answers.summarize(items, oos)
    assert s["wrong_language_rate"] == 0.5 and s["oos_n"] == 4 and s["invented_rate"] == 0.25
    assert s["oos_statuses"] == {"answered": 1, "fallback": 2, "smalltalk": 1}
    table = answers.format_comparison({"summary": {**s, "invented_rate": 0.75}}, {"summary": s})
    assert re.search(r"invented \(out of scope\)\s+0\.750\s+0\.250", table)
    assert re.search(r"wrong language\s+0\.500\s+0\.500", table)
