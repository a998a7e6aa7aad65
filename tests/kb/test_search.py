"""Hybrid search: the keyword index follows ingestion, re-uploads and deletes; fusion, filters, diversity
and language-aware tokenisation. Real chromadb, real embedding model, SQLite and PostgreSQL."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidRequest
from kb import registry
from kb.keyword import KeywordIndex, IndexedChunk, detect_language, query_terms, terms, words
from kb.search import _fuse, search
from tests.kb.test_store import find, ingest, new_assistant

PARTS = (
    "Spare parts\n\n"
    "The replacement hinge for the cabinet door has catalogue number QX-4471-B. "
    "It ships within two days and fits every model made after 2019."
)
PARTS_V2 = (
    "Spare parts\n\n"
    "The replacement hinge for the cabinet door now has catalogue number ZR-9902-K. "
    "It ships within two days and fits every model made after 2019."
)
RETURNS = (
    "Returns policy\n\n"
    "Unused products can be returned within thirty days in their original box. "
    "Refunds are paid to the original card within fourteen days of receiving the return."
)
HOURS_PT = (
    "Horários\n\n"
    "A loja de Lisboa abre às nove horas e fecha às dezoito horas de segunda a sexta-feira. "
    "Aos sábados funcionamos das dez às catorze horas e não abrimos aos domingos."
)


def test_keyword_index_follows_reuploads_and_deletes(services):
    a = new_assistant(services)
    parts, _ = ingest(services, a, "parts.txt", PARTS.encode())
    ingest(services, a, "returns.txt", RETURNS.encode())
    # an exact code: the keyword side finds it, and it ranks first in hybrid search
    assert find(services, a, "QX-4471-B")[0].document_id == parts
    hit = find(services, a, "QX-4471-B")[0]
    assert hit.keyword_score > 0 and hit.fusion > 0 and -1 <= hit.score <= 1
    assert [h.document_id for h in find(services, a, "QX-4471-B", 5) if h.keyword_score > 0] == [parts]

    # a new version replaces the old words in the keyword index at once
    ingest(services, a, "parts.txt", PARTS_V2.encode())
    assert all(h.keyword_score == 0 for h in find(services, a, "QX-4471-B"))
    top = find(services, a, "ZR-9902-K")[0]
    assert top.document_id == parts and top.version == 2 and top.keyword_score > 0

    with services.session() as s:
        registry.delete_document(s, services.vectors, services.blobs, registry.get_document(s, parts))
        s.commit()
    assert all(h.document_id != parts for h in find(services, a, "ZR-9902-K"))
    with services.session() as s:
        kb = registry.get_assistant(s, a).knowledge_base
        assert search(services, s, kb, "ZR-9902-K", 5, mode="keyword") == []


def test_modes_filters_and_diversity(services):
    a = new_assistant(services)
    returns, _ = ingest(services, a, "returns.txt", (RETURNS + "\n\n" + RETURNS.replace("thirty", "sixty")).encode())
    parts, _ = ingest(services, a, "parts.txt", PARTS.encode())
    with services.session() as s:
        kb = registry.get_assistant(s, a).knowledge_base
        keyword = search(services, s, kb, "catalogue number hinge", 5, mode="keyword")
        assert keyword and all(h.keyword_score > 0 for h in keyword) and keyword[0].document_id == parts
        dense = search(services, s, kb, "how long until my money comes back?", 5, mode="dense")
        assert dense[0].document_id == returns and dense[0].fusion > 0

        only_parts = search(services, s, kb, "refunds within fourteen days", 5, where={"filename": "parts.txt"})
        assert only_parts and {h.document_id for h in only_parts} == {parts}
        by_id = search(services, s, kb, "refunds", 5, where={"document_id": [returns]})
        assert by_id and {h.document_id for h in by_id} == {returns}

        many = search(services, s, kb, "returned within days", 10)
        diverse = search(services, s, kb, "returned within days", 10, max_per_document=1)
        assert len([h for h in many if h.document_id == returns]) >= 1
        assert len({h.document_id for h in diverse}) == len(diverse)
        assert [h.rank for h in diverse] == list(range(1, len(diverse) + 1))

        with pytest.raises(InvalidRequest, match="unknown filter"):
            search(services, s, kb, "refunds", 5, where={"colour": "red"})
        with pytest.raises(InvalidRequest, match="filter 'page'"):
            search(services, s, kb, "refunds", 5, where={"page": []})
        with pytest.raises(InvalidRequest, match="max_per_document"):
            search(services, s, kb, "refunds", 5, max_per_document=0)


def test_accents_and_word_forms_match(sqlite_services):
    services = sqlite_services
    a = new_assistant(services)
    hours, _ = ingest(services, a, "horarios.txt", HOURS_PT.encode())
    ingest(services, a, "returns.txt", RETURNS.encode())
    with services.session() as s:
        kb = registry.get_assistant(s, a).knowledge_base
        # no accents, and a singular where the text has a plural
        hits = search(services, s, kb, "horario de funcionamento no sabado", 5, mode="keyword")
        assert hits and hits[0].document_id == hours


def test_language_detection_and_stemming():
    assert detect_language(words("Qual o horário de funcionamento da loja aos sábados?")) == "pt"
    assert detect_language(words("¿Cuál es el horario de la tienda los sábados?")) == "es"
    assert detect_language(words("What are the opening hours of the shop on Saturdays?")) == "en"
    assert detect_language(words("QX-4471-B 2019 12.5 kg")) is None
    assert terms(words("Informações e horários"), "pt") == terms(words("informação e horário"), "pt") == ["inform", "horari"]
    assert terms(words("Ações"), None) == ["acoes"]  # no language: folded, not stemmed
    # a query gets each word's stem in every language of the index, once
    assert query_terms("sábados", ("en", "pt")) == ["sab", "sabado"]
    assert query_terms("sábados", ("pt",)) == ["sab"]
    assert query_terms("sábados", (None, "pt")) == ["sab", "sabados"]


def test_keyword_index_ranks_bm25():
    chunks = [
        IndexedChunk("a", "The hinge QX-4471-B fits every cabinet made after 2019.", {"section": "Parts"}),
        IndexedChunk("b", "Refunds are paid within fourteen days.", {"section": "Returns"}),
        IndexedChunk("c", "Cabinet doors and cabinet hinges: see the parts list.", {"section": ""}),
    ]
    index = KeywordIndex(chunks)
    assert [c.chunk_id for c, _ in index.top("QX-4471-B", 3)] == ["a"]
    assert {c.chunk_id for c, _ in index.top("cabinet hinge", 3)} == {"a", "c"}
    assert [c.chunk_id for c, _ in index.top("refunds", 3)] == ["b"]
    assert [c.chunk_id for c, _ in index.top("returns", 3)] == ["b"]  # the section path is indexed
    assert index.top("nothing matches here", 3) == []
    assert KeywordIndex([]).top("anything", 3) == []


def test_a_language_with_few_chunks_is_still_searched_in_its_own_word_forms():
    """One Portuguese FAQ, one Spanish chunk and one table beside a long English manual: each is a sliver of the
    index, yet a query in other word forms than the text's finds it (each language's stems are asked for), and the
    table's plain words are found as they are."""
    manual = [IndexedChunk(f"en{i}", f"Chapter {i}: the operator checks the valve and the pump before the shift.",
                           {"section": ""}) for i in range(60)]
    faq = [IndexedChunk("pt1", "As operações de limpeza são feitas aos sábados pela equipe.", {"section": ""}),
           IndexedChunk("pt2", "Os pagamentos podem ser parcelados em até seis vezes.", {"section": ""})]
    spanish = [IndexedChunk("es1", "El horario de la tienda es de lunes a viernes.", {"section": ""})]
    table = [IndexedChunk("t1", "Year | Winner | Runner-up\n1975 | Flyers | Sabres\n1967 | Maple Leafs | Canadiens",
                          {"section": ""})]
    index = KeywordIndex(manual + faq + spanish + table)
    assert index.languages == (None, "en", "es", "pt")
    assert [c.chunk_id for c, _ in index.top("operação de limpeza", 3)][:1] == ["pt1"]
    assert [c.chunk_id for c, _ in index.top("parcelar o pagamento", 3)][:1] == ["pt2"]
    assert [c.chunk_id for c, _ in index.top("horarios de las tiendas", 3)][:1] == ["es1"]
    assert [c.chunk_id for c, _ in index.top("Flyers Maple Leafs", 3)] == ["t1"]


def test_attainable_keyword_score():
    chunks = [
        IndexedChunk("a", "Septicemia is an infection of the blood.", {"section": ""}),
        IndexedChunk("b", "What the protests want is a fair wage.", {"section": ""}),
        IndexedChunk("c", "What is a strike? A strike is a stop of work.", {"section": ""}),
        IndexedChunk("d", "Blood tests are done in the morning.", {"section": ""}),
    ]
    index = KeywordIndex(chunks)
    for query in ("what is septicemia", "blood tests", "what is a strike", "unknownword"):
        assert 0 < index.scores(query).max(initial=0) < index.attainable(query) or not index.scores(query).any()
    # a word the index never saw counts as the rarest possible, so a match on the common words is a small share
    unseen = index.attainable("what is sepsis") - index.attainable("what is")
    assert unseen > index.attainable("septicemia") and unseen == pytest.approx(np.log(1 + 4.5 / 0.5))
    common = index.scores("what is sepsis").max()
    assert common / index.attainable("what is sepsis") < 0.3 < index.scores("septicemia").max() / index.attainable("septicemia")
    assert index.attainable("bloods") == index.attainable("blood")  # word forms are looked up stemmed
    assert KeywordIndex([]).attainable("anything") == 0.0


def test_fusion_weighs_the_keyword_side_by_how_much_of_the_query_its_best_hit_covers():
    similarity = {"asked": 0.90, "other": 0.86, "far": 0.80}
    # a paraphrase sharing a word with another entry: its best keyword hit scores a quarter of what the
    # query could, and does not overturn the dense lead
    paraphrase = _fuse(similarity, {"asked": 0.3, "other": 2.0, "far": 0.0}, "hybrid", attainable=8.0)
    assert max(paraphrase, key=paraphrase.get) == "asked"
    # the same query in the document's words (every word once: about 0.45 of the attainable score) keeps the boost
    same_words = _fuse(similarity, {"asked": 0.3, "other": 3.6, "far": 0.0}, "hybrid", attainable=8.0)
    assert max(same_words, key=same_words.get) == "other"
    assert _fuse(similarity, {"asked": 0.3, "other": 3.6, "far": 0.0}, "dense", 8.0) == similarity


SHOP_FAQ = {
    "refunds.txt": "Refunds\n\nRefunds reach the original card within fourteen days of the return arriving at our warehouse.",
    "payment.txt": "Payment\n\nWe accept cards, bank transfers and cash on delivery. Payment by card is charged when the order ships.",
    "gift-cards.txt": "Gift cards\n\nGift cards never expire. Money left on a gift card can be spent in any of our shops or online.",
    "hinge.txt": PARTS,
    "runner.txt": "Spare parts\n\nThe drawer runner for the kitchen cabinet has catalogue number ZR-9902-K. It is sold in pairs.",
}


def test_paraphrases_lean_on_dense_and_exact_codes_keep_the_keyword_boost(sqlite_services):
    services = sqlite_services
    a = new_assistant(services)
    for name, text in SHOP_FAQ.items():
        ingest(services, a, name, text.encode())
    with services.session() as s:
        kb = registry.get_assistant(s, a).knowledge_base

        def top(query: str, mode: str) -> str:
            return search(services, s, kb, query, 3, mode=mode)[0].filename

        # a customer's words: "card" twice in the payment entry, no word of the refunds entry but "card"
        question = "I sent the box back, when is the money on my card?"
        assert top(question, "keyword") == "payment.txt"
        assert top(question, "dense") == top(question, "hybrid") == "refunds.txt"
        # a catalogue number: dense prefers the door hinge, the code names the drawer runner
        question = "ZR-9902-K for the cabinet door"
        assert top(question, "dense") == "hinge.txt"
        assert top(question, "hybrid") == top(question, "keyword") == "runner.txt"


def test_search_api_modes_filters_and_bad_input(client):
    from tests.api.test_api import create_assistant
    from tests.api.test_api import ingest as api_ingest

    a = create_assistant(client)
    parts = api_ingest(client, a["id"], "parts.txt", PARTS.encode())
    api_ingest(client, a["id"], "returns.txt", RETURNS.encode())
    url = f"/api/assistants/{a['id']}/search"
    r = client.post(url, json={"query": "catalogue number QX-4471-B", "mode": "keyword"})
    assert r.status_code == 200 and [h["document_id"] for h in r.json()["results"]] == [parts["id"]]
    r = client.post(url, json={"query": "refunds", "filters": {"filename": ["parts.txt"]}, "top_k": 10})
    assert r.status_code == 200 and {h["filename"] for h in r.json()["results"]} == {"parts.txt"}
    r = client.post(url, json={"query": "refunds", "max_per_document": 1, "top_k": 10})
    assert len({h["document_id"] for h in r.json()["results"]}) == len(r.json()["results"]) == 2
    for body, fragment in (({"query": "x", "filters": {"colour": "red"}}, "unknown filter"),
                           ({"query": "x", "mode": "fuzzy"}, "mode"),
                           ({"query": "x", "max_per_document": 0}, "max_per_document")):
        r = client.post(url, json=body)
        assert r.status_code == 422 and fragment in r.text, r.text
