"""Validation and normalization of collected customer data: tables of valid and invalid values per type."""
from __future__ import annotations

import random

import pytest

from runtime.config import DataField
from runtime.validators import InvalidValue, validate_value


def field(type_: str, **kw) -> DataField:
    return DataField(name="f", type=type_, **kw)


# check digits computed here, independently of the module, from the published algorithm


def _dv(values: list[int], weights: list[int]) -> int:
    r = sum(v * w for v, w in zip(values, weights, strict=True)) % 11
    return 0 if r < 2 else 11 - r


def make_cpf(base9: str) -> str:
    d = [int(c) for c in base9]
    d.append(_dv(d, [10, 9, 8, 7, 6, 5, 4, 3, 2]))
    d.append(_dv(d, [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]))
    return "".join(map(str, d))


def make_cnpj(base12: str) -> str:
    v = [ord(c) - 48 for c in base12]
    w1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    v.append(_dv(v, w1))
    v.append(_dv(v, [6, *w1]))
    return base12 + f"{v[12]}{v[13]}"


def fmt_cpf(d: str) -> str:
    return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"


def fmt_cnpj(d: str) -> str:
    return f"{d[:2]}.{d[2:5]}.{d[5:8]}/{d[8:12]}-{d[12:]}"


def test_check_digit_helpers_match_published_examples():
    assert make_cpf("529982247") == "52998224725"  # example used by the Receita Federal
    assert make_cnpj("112223330001") == "11222333000181"
    assert make_cnpj("12ABC34501DE") == "12ABC34501DE35"  # the Receita's alphanumeric example


def accepted(type_: str, raw: str, **kw) -> str:
    return validate_value(field(type_, **kw), raw)


def refused(type_: str, raw: str, **kw) -> str:
    with pytest.raises(InvalidValue) as info:
        validate_value(field(type_, **kw), raw)
    assert info.value.reason
    return info.value.reason


@pytest.mark.parametrize("raw, expected", [
    ("ana@example.com", "ana@example.com"),
    ("  Ana.Silva@Example.COM.br ", "Ana.Silva@example.com.br"),
    ("first+tag@sub.domain.io", "first+tag@sub.domain.io"),
    ("o'neil@example.org", "o'neil@example.org"),
    ("joao@exemplo.xn--p1ai", "joao@exemplo.xn--p1ai"),
    ("maria@açaí.com.br", "maria@açaí.com.br"),
])
def test_email_valid(raw, expected):
    assert accepted("email", raw) == expected


@pytest.mark.parametrize("raw", [
    "ana", "ana@", "@example.com", "ana@example", "ana@@example.com", "ana@exa mple.com", "ana..b@example.com",
    ".ana@example.com", "ana.@example.com", "ana@-example.com", "ana@example.c", "ana@example.com.",
    "an a@example.com", "a" * 65 + "@example.com",
])
def test_email_invalid(raw):
    refused("email", raw)


@pytest.mark.parametrize("raw, expected", [
    ("(11) 98765-4321", "+5511987654321"),
    ("11987654321", "+5511987654321"),
    ("011 98765 4321", "+5511987654321"),
    ("+55 11 98765-4321", "+5511987654321"),
    ("55 11 98765-4321", "+5511987654321"),
    ("0055 (21) 3456-7890", "+552134567890"),
    ("(21) 3456-7890", "+552134567890"),
    ("(55) 99123-4567", "+5555991234567"),  # area code 55 (Rio Grande do Sul)
    ("015 11 98765-4321", "+5511987654321"),  # with the carrier selection code 15
    ("0800 123 4567", "+558001234567"),  # toll-free (refused before: no area code 80)
    ("+1 (212) 555-0100", "+12125550100"),
    ("+351 912 345 678", "+351912345678"),
    ("+44 20 7946 0958", "+442079460958"),
])
def test_phone_valid(raw, expected):
    assert accepted("phone", raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("001 (415) 555-2671", "+14155552671"),  # US
    ("+351 21 123 4567", "+351211234567"),  # PT, Lisbon
    ("00351 912 345 678", "+351912345678"),
    ("+34 612 34 56 78", "+34612345678"),  # ES
    ("+34 91 123 45 67", "+34911234567"),
    ("+54 9 11 2345-6789", "+5491123456789"),  # AR mobile: 9 after the country code
    ("+54 11 15 2345-6789", "+5491123456789"),  # AR mobile with its domestic 15 (was kept: +541115...)
    ("+54 11 2345-6789", "+541123456789"),  # AR fixed line
    ("+52 55 1234 5678", "+525512345678"),  # MX
    ("+44 (0)20 7946 0958", "+442079460958"),  # the UK trunk 0 in brackets (was kept: +4402...)
])
def test_phone_of_other_countries(raw, expected):
    assert accepted("phone", raw) == expected


@pytest.mark.parametrize("raw, reason", [  # all accepted before: any 8 to 15 digits passed outside Brazil
    ("+1 (555) 123-4567", "not a valid phone number of country code +1"),  # 555 is no US area code
    ("+1 212 555 010", "+1 has 10 digits"),
    ("+351 912 345 67", "+351 has 9 digits"),
    ("+34 612 345 67", "+34 has 9 digits"),
    ("+34 012 345 678", "not a valid phone number of country code +34"),  # no Spanish number starts with 0
    ("+54 11 2345", "+54 has 10 or 11 digits"),
    ("+52 1 55 1234 5678", "+52 has 10 digits"),  # the mobile 1 Mexico dropped in 2019
])
def test_phone_of_other_countries_refused_with_reason(raw, reason):
    assert reason in refused("phone", raw)


@pytest.mark.parametrize("raw", [
    "98765-4321",  # no area code
    "123",
    "+55 11 8765-432",  # too short
    "+55 11 98765-43210",  # too long
    "(11) 88765-4321",  # 9-digit number not starting with 9
    "(01) 98765-4321",  # no such area code
    "+1234567",  # 7 digits
    "+1234567890123456",  # 16 digits: beyond E.164
    "+0 555 123 4567",
    "11 9876x-4321",
    "1234567890123",  # 13 digits, no country code
])
def test_phone_invalid(raw):
    refused("phone", raw)


@pytest.mark.parametrize("raw, expected", [
    ("2025-05-20", "2025-05-20"),
    ("20/05/2025", "2025-05-20"),
    ("5/1/2025", "2025-01-05"),
    ("05-01-2025", "2025-01-05"),
    ("05.01.2025", "2025-01-05"),
    ("29/02/2024", "2024-02-29"),
    (" 2024-12-31 ", "2024-12-31"),
])
def test_date_valid(raw, expected):
    assert accepted("date", raw) == expected


@pytest.mark.parametrize("raw", [
    "2025-02-29", "31/04/2025", "32/01/2025", "00/01/2025", "2025-13-01", "tomorrow", "2025/05/20", "20/05/25", "20250520",
])
def test_date_invalid(raw):
    refused("date", raw)


@pytest.mark.parametrize("raw, expected", [
    ("12", "12"),
    ("1.234,56", "1234.56"),
    ("1,234.56", "1234.56"),
    ("1.234.567,89", "1234567.89"),
    ("1,234,567.89", "1234567.89"),
    ("2,5", "2.5"),
    ("2.5", "2.5"),
    ("1.500", "1500"),  # one separator before exactly three digits groups thousands
    ("1,500", "1500"),
    ("0,125", "0.125"),
    ("1.234.567", "1234567"),
    ("-3,75", "-3.75"),
    ("+7", "7"),
    ("1,50", "1.5"),
    ("1 234,56", "1234.56"),
    (",5", "0.5"),
    ("007", "7"),
    ("-0", "0"),
    ("1000", "1000"),
    ("R$ 1.500,00", "1500"),
    ("-R$5", "-5"),
    ("US$ 2.5", "2.5"),
])
def test_number_valid(raw, expected):
    assert accepted("number", raw) == expected


@pytest.mark.parametrize("raw", ["abc", "1,2,3", "1.2.3", "12,", "1.234,5.6", "1,23.456,7", "1e5", "NaN", "--1",
                                 "12.34.567", "R$", "1_000"])
def test_number_invalid(raw):
    refused("number", raw)


@pytest.mark.parametrize("raw, expected", [
    ("Básico", "Básico"), ("basico", "Básico"), ("  BÁSICO ", "Básico"), ("pro anual", "Pro Anual"), ("PRO  ANUAL", "Pro Anual"),
])
def test_enum_valid(raw, expected):
    assert accepted("enum", raw, options=["Básico", "Pro Anual"]) == expected


def test_enum_invalid_lists_options():
    reason = refused("enum", "premium", options=["Básico", "Pro Anual"])
    assert "Básico" in reason and "Pro Anual" in reason
    assert "options" in refused("enum", "x")


def test_regex():
    kw = {"pattern": r"[A-Z]{2}-\d{4}", "description": "like AB-1234"}
    assert accepted("regex", " AB-1234 ", **kw) == "AB-1234"
    for bad in ("AB-12345", "xAB-1234", "ab-1234"):
        assert "AB-1234" in refused("regex", bad, **kw)


def test_regex_without_pattern_is_plain_text():
    assert accepted("regex", "anything") == "anything"


def test_text():
    assert accepted("text", "  hello world \n") == "hello world"
    assert accepted("text", "x" * 500) == "x" * 500
    assert "500" in refused("text", "x" * 501)
    for empty in ("", "   ", "\n\t"):
        refused("text", empty)


def _random_cpfs(n: int) -> list[str]:
    rng = random.Random(7)
    return [make_cpf(f"{rng.randrange(10**9):09d}") for _ in range(n)]


@pytest.mark.parametrize("digits", ["52998224725", *_random_cpfs(8)])
def test_cpf_valid_in_any_punctuation(digits):
    expected = fmt_cpf(digits)
    for raw in (digits, expected, f" {digits[:3]} {digits[3:6]} {digits[6:9]} {digits[9:]} ", f"{digits[:9]}/{digits[9:]}"):
        assert accepted("cpf", raw) == expected


@pytest.mark.parametrize("raw", [
    "529.982.247-24", "529.982.247-15", "52998224726",  # wrong check digits
    "111.111.111-11", "000.000.000-00", "99999999999",  # repeated digits (their check digits are "valid")
    "5299822472", "529982247250", "529.982.247-2a", "abc",
])
def test_cpf_invalid(raw):
    refused("cpf", raw)


def _random_cnpjs(n: int) -> list[str]:
    rng = random.Random(11)
    return [make_cnpj(f"{rng.randrange(10**8):08d}0001") for _ in range(n)]


@pytest.mark.parametrize("digits", ["11222333000181", *_random_cnpjs(6)])
def test_cnpj_valid(digits):
    expected = fmt_cnpj(digits)
    for raw in (digits, expected, f"{digits[:8]} {digits[8:12]}-{digits[12:]}"):
        assert accepted("cnpj", raw) == expected


def test_cnpj_alphanumeric():
    assert accepted("cnpj", "12.abc.345/01de-35") == "12.ABC.345/01DE-35"
    refused("cnpj", "12.ABC.345/01DE-36")


@pytest.mark.parametrize("raw", [
    "11.222.333/0001-80", "11222333000182", "11.222.333/0001-18",  # wrong check digits
    "11.111.111/1111-11", "00000000000000",  # repeated digits
    "1122233300018", "112223330001811", "11.222.333/0001-8A", "52998224725",
])
def test_cnpj_invalid(raw):
    refused("cnpj", raw)


@pytest.mark.parametrize("type_", ["email", "phone", "date", "number", "cpf", "cnpj", "text"])
def test_empty_is_refused_for_every_type(type_):
    assert refused(type_, "  ") == "no value was given"


def test_reasons_are_for_people():
    assert "11 digits" in refused("cpf", "123")
    assert "check digits" in refused("cpf", "529.982.247-24")
    assert "repeated" in refused("cpf", "111.111.111-11")
    assert "real date" in refused("date", "31/02/2025")
    assert "include the area code" in refused("phone", "98765-4321")
    assert "2-digit area code and 8 or 9 digits" in refused("phone", "+55 11 8765-432")
    assert "9 digits starting with 9" in refused("phone", "(11) 88765-4321")
    assert "country code" in refused("phone", "+0 555 123 4567")
    assert "only digits" in refused("phone", "11 9876x-4321")
