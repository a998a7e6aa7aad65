"""Personal data masked in free text (runtime.masking): CPF/CNPJ, e-mail addresses and phone numbers of several
countries, whatever the surrounding language; numbers that are none of them left alone; logs masked by the filter."""
from __future__ import annotations

import logging

import pytest

from runtime.masking import MaskingFilter, mask_id, mask_json, mask_text


@pytest.mark.parametrize(("text", "masked"), [
    ("Meu CPF é 123.456.789-09.", "Meu CPF é ***.***.***-09."),
    ("cpf 12345678909 ok", "cpf *********09 ok"),  # bare, valid check digits
    ("CNPJ 12.345.678/0001-95", "CNPJ **.***.***/****-95"),
    ("e-mail: joana.prado+clinica@gmail.com!", "e-mail: j***@gmail.com!"),
    ("Ligue (11) 98765-4321 amanhã", "Ligue (**) *****-4321 amanhã"),
    ("call me at +1 415-555-2671 please", "call me at +* ***-***-2671 please"),
    ("llámame al +34 612 34 56 78", "llámame al +** *** ** 56 78"),
    ("whatsapp 5511987654321", "whatsapp *********4321"),
])
def test_personal_data_is_masked_where_it_is_written(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", [
    "Pedido 2024-05-01 às 10h, R$ 180,00, protocolo 123456",
    "order 12345678901 shipped",  # 11 digits that are no valid CPF (nor a phone number)
    "versão 3.2.1-beta, sala 204",
    "",
])
def test_what_is_not_personal_data_stays(text):
    assert mask_text(text) == text


def test_ids_and_json_values():
    assert mask_id("5511987654321") == "*********4321" and mask_id("v_8f3a2c") == "v_8f3a2c"
    assert mask_id("ana@example.com") == "a***@example.com"
    assert mask_json({"args": {"cpf": "123.456.789-09", "n": 3}, "calls": ["tel 11 98765-4321"]}) == \
        {"args": {"cpf": "***.***.***-09", "n": 3}, "calls": ["tel ** *****-4321"]}


def test_the_log_filter_masks_messages_and_their_arguments():
    record = logging.LogRecord("atende", logging.INFO, __file__, 1, "send to %s failed (%s)",
                               ("+55 11 98765-4321", "ana@example.com"), None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "send to +** ** *****-4321 failed (a***@example.com)"
