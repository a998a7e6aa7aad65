"""Typed values found in customer messages (runtime.capture): the formats customers write, the numbers
that only look like them, and which configured field a value goes to."""
from __future__ import annotations

import pytest

from runtime.capture import capture_calls, find_values
from runtime.config import AssistantConfig

VALID_CPF, INVALID_CPF = "529.982.247-25", "123.456.789-00"


@pytest.mark.parametrize("text, expected", [
    ("Meu CPF é 123.456.789-09, pode anotar?", [("cpf", "123.456.789-09")]),
    ("12345678909", [("cpf", "12345678909")]),
    ("CPF: 123 456 789 09", [("cpf", "123 456 789 09")]),
    ("cpf 123456789-09.", [("cpf", "123456789-09")]),
    (f"Desculpe, digitei errado. Meu CPF é {VALID_CPF}.", [("cpf", VALID_CPF)]),
    (f"meu cpf é {INVALID_CPF}", [("cpf", INVALID_CPF)]),  # written as a CPF: found, for the validator to refuse
    ("CNPJ da empresa: 11.222.333/0001-81", [("cnpj", "11.222.333/0001-81")]),
    ("cnpj 11222333000181", [("cnpj", "11222333000181")]),
    ("o novo CNPJ é 12.ABC.345/01DE-35", [("cnpj", "12.ABC.345/01DE-35")]),
    ("meu e-mail: Maria.Souza+loja@Empresa.com.br.", [("email", "Maria.Souza+loja@Empresa.com.br")]),
    ("manda pra joao_silva@gmail.com ou liga", [("email", "joao_silva@gmail.com")]),
    ("meu whats é +55 11 98765-4321 ok", [("phone", "+55 11 98765-4321")]),
    ("+5511987654321", [("phone", "+5511987654321")]),
    ("Tel. (11) 98765-4321", [("phone", "(11) 98765-4321")]),
    ("(21)3333-4444", [("phone", "(21)3333-4444")]),
    ("liga no 11 9 8765 4321", [("phone", "11 9 8765 4321")]),
    ("call me at +1 (555) 123-4567", [("phone", "+1 (555) 123-4567")]),
    ("+44 20 7946 0958", [("phone", "+44 20 7946 0958")]),
    ("CPF 123.456.789-09 e celular (11) 98765-4321",
     [("cpf", "123.456.789-09"), ("phone", "(11) 98765-4321")]),
])
def test_values_are_found_in_the_formats_customers_write(text, expected):
    assert find_values(text) == expected


@pytest.mark.parametrize("text", [
    "O pedido 1234567890 não chegou",  # bare digits with no check digit: an order number as much as a phone
    "protocolo 20240512123",  # 11 bare digits failing the CPF check
    "Custa R$ 123.456.789,00?",  # a price grouped like a CPF
    "entrega em 12/05/2025 às 14:30",
    "CEP 01310-100",
    "ramal 3333-4444",  # no area code
    "cartão 4111 1111 1111 1111",
    "o código é 123.456.789-090",  # longer than a CPF
    "a conta 9123.456.789-09",
    "@loja no instagram, site loja.com.br",
    "email: maria@localhost",
])
def test_numbers_and_words_that_only_look_like_values_are_not_found(text):
    assert find_values(text) == []


def test_a_value_two_types_could_be_is_the_one_type_that_accepts_it():
    # 11 bare digits: a CPF or a Brazilian mobile number (area code, then 9 and 8 digits)
    assert find_values("12345678909") == [("cpf", "12345678909")]  # 3rd digit 3: no mobile number
    assert find_values("11987654374") == []  # a valid CPF and a valid mobile number: either
    assert find_values("52998224725") == [("cpf", "52998224725")]  # 52 is no Brazilian area code
    assert find_values("11987654321") == []  # a mobile number (bare digits are never taken as a phone)


def test_the_longest_value_wins_where_shapes_overlap():
    assert find_values("+55 (11) 98765-4321") == [("phone", "+55 (11) 98765-4321")]
    assert find_values("55 11 3333-4444") == [("phone", "55 11 3333-4444")]


def config(*fields: tuple[str, str]) -> AssistantConfig:
    return AssistantConfig(data_fields=[{"name": name, "type": kind} for name, kind in fields])


def calls(cfg: AssistantConfig, text: str) -> list[tuple[str, str]]:
    found = capture_calls(cfg, text)
    assert all(c.name == "collect_data" for c in found) and len({c.id for c in found}) == len(found)
    return [(c.arguments["field"], c.arguments["value"]) for c in found]


def test_values_go_to_the_one_configured_field_of_their_type():
    cfg = config(("documento", "cpf"), ("email", "email"), ("nome", "text"), ("nascimento", "date"))
    text = f"Sou a Ana, CPF {VALID_CPF}, ana@exemplo.com, nasci em 01/02/1990, celular (11) 98765-4321"
    # free text and dates are left to the model; no phone field: the phone is not captured
    assert calls(cfg, text) == [("documento", VALID_CPF), ("email", "ana@exemplo.com")]


def test_nothing_is_captured_for_a_type_without_a_field():
    assert calls(config(), f"CPF {VALID_CPF}") == []
    assert calls(config(("cnpj", "cnpj")), f"CPF {VALID_CPF}") == []  # a CPF is not a CNPJ
    assert calls(config(("telefone", "phone")), "cnpj 11.222.333/0001-81") == []  # nor a CNPJ a phone


def test_an_ambiguous_value_is_left_to_the_model():
    # two fields of the type: which one is it?
    assert calls(config(("telefone", "phone"), ("recado", "phone")), "(11) 98765-4321") == []
    # two different values of the type (a correction, or someone else's): the model reads which
    assert calls(config(("cpf", "cpf")), f"não é {INVALID_CPF}, é {VALID_CPF}") == []
    # the same value written twice is one value
    assert calls(config(("cpf", "cpf")), "123.456.789-09 (12345678909)") == [("cpf", "123.456.789-09")]


def test_a_phone_in_a_question_is_captured_when_the_assistant_collects_phones():
    # the runtime cannot tell whose number it is (documented in runtime.capture)
    assert calls(config(("telefone", "phone")), "O número (11) 3333-4444 é da loja de vocês?") == [
        ("telefone", "(11) 3333-4444")]
