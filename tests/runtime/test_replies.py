"""What may reach a customer: small talk, rejected replies and replies that say there is no answer."""
from __future__ import annotations

import pytest

from runtime.replies import (CUSTOMER_ECHO, RESTATEMENT, data_reply, rejection, restatement, says_not_found,
                             small_talk, split_no_answer, still_sendable, supported, without_echo)


@pytest.mark.parametrize("text, expected", [
    ("Oi, bom dia!", ("greeting", "pt")), ("Hello World", ("greeting", "en")), ("hi there, how are you?", ("greeting", "en")),
    ("Buenas tardes", ("greeting", "es")), ("valeu, obrigado!", ("thanks", "pt")), ("Thank you so much", ("thanks", "en")),
    ("muchas gracias", ("thanks", "es")), ("Oi, obrigada", ("thanks", "pt")), ("tchau", ("goodbye", "pt")),
])
def test_small_talk_is_told_with_its_language(text, expected):
    assert small_talk(text) == expected


@pytest.mark.parametrize("text", ["Oi, quanto custa a limpeza?", "bom dia, vocês abrem sábado?", "ok", "hello, my card was blocked",
                                  "obrigado, e o preço?", "", "👍"])
def test_questions_and_acknowledgements_are_not_small_talk(text):
    assert small_talk(text) is None


@pytest.mark.parametrize("reply", ["Não encontrei essa informação na nossa base.", "Infelizmente não tenho essa informação.",
                                   "I couldn't find that in the documents.", "Sorry, I don't have that information.",
                                   "No tengo esa información, lo siento."])
def test_replies_that_say_there_is_no_answer(reply):
    assert says_not_found(reply)


@pytest.mark.parametrize("reply", ["Não abrimos aos domingos.", "We don't have parking, but there is a garage next door.",
                                   "No abrimos los domingos.", "A limpeza custa R$ 180,00."])
def test_answers_with_a_negative_are_not_fallbacks(reply):
    assert not says_not_found(reply)


@pytest.mark.parametrize("reply, reason", [
    ("<tools></tools>", "model markup"), ("</tool_call>", "model markup"), ("<|im_end|>", "model markup"),
    ('{"name": "transfer_to_human", "arguments": {}}', "model markup"), ("```\nok\n```", "model markup"),
    ("[1, 2]", "a JSON value"), ("?!", "no text"), ("   ", "no text"), ("Sources:\n[1] x", "an echo of the prompt"),
    ("A limpeza dura 40 minutos.\n\n[2] (precos.csv)\n| Limpeza | 180,00 |", "an echo of the prompt"),
])
def test_what_only_the_machinery_writes_is_rejected(reply, reason):
    assert rejection(reply).startswith(reason)


def test_echoes_of_the_instructions_or_the_customer_are_rejected():
    instructions = "Answer questions in the customer's language with facts from the numbered sources below, even if"
    assert rejection("Answer questions in the customer's language with facts from the numbered sources.",
                     instructions=instructions) == "an echo of the instructions"
    assert rejection("Quanto custa a limpeza?", customer_text="quanto custa a limpeza") == "an echo of the customer's message"
    assert rejection("A limpeza custa R$ 180,00 e dura 40 minutos.", instructions=instructions,
                     customer_text="Quanto custa a limpeza?", language="pt") is None


def test_the_language_is_checked_only_when_both_are_clear():
    assert rejection("We are open on Saturdays from 8 to 12.", language="pt").startswith("written in English")
    assert rejection("Sim, R$ 180.", language="en") is None  # too short to tell
    assert rejection("Abrimos aos sábados das 8h às 12h.", language=None) is None


@pytest.mark.parametrize("reply", ["NO_ANSWER", "Não_ansWER", "no answer", "NO-ANSWER."])
def test_the_no_answer_signal_is_found_however_it_is_spelled(reply):
    text, found = split_no_answer(reply)
    assert found and not any(ch.isalnum() for ch in text)


def test_a_reply_that_only_mentions_answers_keeps_its_text():
    assert split_no_answer("Sim, respondemos em até 2 dias.") == ("Sim, respondemos em até 2 dias.", False)


def test_a_restated_question_is_cut_from_the_reply():
    reply = "Quanto tempo demora o clareamento?\n\nUma sessão de 90 minutos."
    assert without_echo(reply, "Quanto tempo demora o clareamento") == "Uma sessão de 90 minutos."
    assert without_echo("Quanto tempo demora o clareamento?", "Quanto tempo demora o clareamento?") == \
        "Quanto tempo demora o clareamento?"  # nothing else: left to the echo check
    assert without_echo("Sim.\nAbrimos às 8h.", "Vocês abrem cedo?") == "Sim.\nAbrimos às 8h."
    assert without_echo("Sim, estou com muita dor de dente. Ligue para (19) 3232-4545.",
                        "Estou com muita dor de dente, o que faço?") == "Ligue para (19) 3232-4545."
    assert without_echo("Sim, você pode parcelar o pagamento. Em até 6x.", "Posso parcelar o pagamento?") == \
        "Sim, você pode parcelar o pagamento. Em até 6x."  # a bare answer, not an echo: kept


def test_the_data_reply_tells_each_value_saved_or_refused_in_the_customers_language():
    checked = [("cpf", "529.982.247-25", True), ("email_comercial", "ana@", False)]
    assert data_reply(checked, "es") == ("Anotado (cpf: 529.982.247-25).\nEl email comercial que enviaste (ana@) no es "
                                         "válido. ¿Puedes revisarlo y enviarlo de nuevo?")
    assert data_reply(checked[:1], None) == data_reply(checked[:1], "fr") == "Noted (cpf: 529.982.247-25)."
    assert data_reply([], "pt") is None


@pytest.mark.parametrize(("reply", "ok"), [
    ("Aos sábados abrimos das 9h às 13h.", True),
    ("A limpeza custa R$ 180,00.", True),
    ("Aos sábados abrimos das 10h às 16h.", False),  # numbers the passage does not hold
    ("Não, não fazemos implante dentário.", False),  # only restates the question
    ("Sim, fazemos implantes com garantia vitalícia e anestesia geral.", False),  # words of its own
    ("A limpeza custa 180,00 reais.", True),  # a currency's name is the passages' "R$" or the price column
    ("Ligue para (19) 3232-4545 para obter ajuda.", True),  # the passages' figures, in words of its own
    ("Ligue para (19) 3232-4545 e peça um desconto de urgência gratuito.", False),  # too many words of its own
    ("Ligue para (19) 3232-9999 para obter ajuda.", False),  # a figure of its own
])
def test_a_reply_is_supported_only_by_what_its_passages_say(reply, ok):
    passages = ["Horário: aos sábados abrimos das 9h às 13h.", "Limpeza (profilaxia) | 180,00 | 40 min",
                "Em caso de dor forte, ligue para (19) 3232-4545."]
    assert supported(reply, passages, "Vocês fazem implante dentário? Quanto custa a limpeza?") is ok


@pytest.mark.parametrize(("reply", "customer", "expected"), [
    ("Sim, você pode parcelar o pagamento.", "Posso parcelar o pagamento?", RESTATEMENT),
    ("Não, não fazemos implante.", "Vocês fazem implante?", RESTATEMENT),
    ("Yes, you can pay in instalments.", "Can I pay in instalments?", RESTATEMENT),
    ("Sim, estou com muita dor de dente.", "Estou com muita dor de dente, o que faço?", CUSTOMER_ECHO),
    ("Sim, em até 6x sem juros.", "Posso parcelar o pagamento?", None),  # a number of its own
    ("Ligue para a clínica, o plantão atende.", "Estou com muita dor de dente, o que faço?", None),
    ("Sí, aceptamos tarjeta de crédito.", "¿Puedo pagar con tarjeta?", None),
])
def test_a_reply_that_tells_nothing_beyond_the_customers_message_is_a_restatement(reply, customer, expected):
    assert restatement(reply, customer) == expected


def test_only_bare_answers_and_answers_in_another_language_may_still_be_sent():
    assert still_sendable(RESTATEMENT) and still_sendable("written in English, not in the customer's Portuguese")
    assert not still_sendable(CUSTOMER_ECHO) and not still_sendable("model markup ('<tools>')")
