"""Validation and normalization of customer data collected by the assistant (``collect_data``).

``validate_value`` returns the canonical form of a value or raises ``InvalidValue`` with a short
reason the model can relay to the customer ("a CPF has 11 digits").
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation

import phonenumbers
from phonenumbers import (CountryCodeSource, NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberFormat,
                          PhoneNumberType, ValidationResult)

from runtime.config import DataField

MAX_TEXT = 500


class InvalidValue(ValueError):
    """The value does not fit the field; ``reason`` explains why, in words for the customer."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def validate_value(field: DataField, value: str) -> str:
    """Return ``value`` normalized for ``field.type``, or raise ``InvalidValue``."""
    value = str(value).strip()
    if not value:
        raise InvalidValue("no value was given")
    if field.type == "regex" and field.pattern is None:
        return _text(value)
    if field.type == "enum":
        return _enum(value, field.options)
    if field.type == "regex":
        return _regex(value, field.pattern, field.description)
    return _VALIDATORS[field.type](value)


# --------------------------------------------------------------------------- e-mail

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})"


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise InvalidValue("an e-mail address looks like name@example.com")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")  # accept internationalized domains
    except UnicodeError:
        raise InvalidValue(f"'{domain}' is not a valid e-mail domain") from None
    if len(local) > 64 or not re.fullmatch(_LOCAL, local):
        raise InvalidValue("the part before @ has invalid characters or dots")
    if not re.fullmatch(_DOMAIN, ascii_domain):
        raise InvalidValue(f"'{domain}' is not a valid e-mail domain (e.g. example.com)")
    result = f"{local}@{domain.lower()}"
    if len(result) > 254:
        raise InvalidValue("the e-mail address is too long")
    return result


# --------------------------------------------------------------------------- phone

# Numbers written without a country code are Brazilian. phonenumbers knows every country's lengths,
# area codes, mobile ranges and trunk prefixes (011 ..., 015 11 ... with a carrier code, +44 (0)20 ...).
DEFAULT_REGION = "BR"
_WITH_AREA_CODE = "include the area code, e.g. (11) 98765-4321, or the country code, e.g. +1 212 555 0100"
_UNPARSABLE = {
    NumberParseException.INVALID_COUNTRY_CODE: "the digits after + must start with a country code, e.g. +55 or +1",
    NumberParseException.TOO_LONG: "the phone number is too long",
}


def _phone(value: str) -> str:
    compact = re.sub(r"[\s\-().]", "", value)
    if not re.fullmatch(r"\+?\d+", compact):  # phonenumbers would also read letters (1-800-FLOWERS) and extensions
        raise InvalidValue("a phone number may contain only digits, spaces, dashes, parentheses and a leading +")
    # 00 is the international call prefix of most countries (0044 ...); phonenumbers would read it as
    # Brazil's (00 + a carrier code) and take 0055 21 3456-7890 for a number of Algeria (+213)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    try:
        number = phonenumbers.parse(compact, DEFAULT_REGION, keep_raw_input=True)
    except NumberParseException as e:  # digits alone: a number too short or too long, or no country code after +
        raise InvalidValue(_UNPARSABLE.get(e.error_type, "the phone number is too short")) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue(_invalid_phone_reason(number))
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _invalid_phone_reason(number: PhoneNumber) -> str:
    """Why ``number`` is not valid, judged as a fixed-line or mobile number: what customers give as theirs
    (a valid 0800 or 4004 number is accepted, but a wrong one is most likely a mistyped personal number)."""
    fit = phonenumbers.is_possible_number_for_type_with_reason(number, PhoneNumberType.FIXED_LINE_OR_MOBILE)
    code = number.country_code
    if fit == ValidationResult.IS_POSSIBLE:  # the length fits, the digits do not
        if code == 55:
            return "check the area code and the number: a Brazilian mobile number has 9 digits starting with 9"
        return f"this is not a valid phone number of country code +{code}; please check the digits"
    if number.country_code_source == CountryCodeSource.FROM_DEFAULT_COUNTRY:
        return _WITH_AREA_CODE
    if code == 55:
        return "a Brazilian phone number has a 2-digit area code and 8 or 9 digits"
    return f"a phone number of country code +{code} has {_national_lengths(code)} digits after it"


def _national_lengths(code: int) -> str:
    """The lengths of the country's fixed-line and mobile numbers in words: "9", "10 or 11", "5 to 15"."""
    meta = PhoneMetadata.metadata_for_region_or_calling_code(code, phonenumbers.region_code_for_country_code(code))
    lengths = sorted({n for desc in (meta.fixed_line, meta.mobile) if desc for n in desc.possible_length if n > 0}
                     or meta.general_desc.possible_length)
    *most, last = lengths
    if len(most) > 1 and last - lengths[0] == len(most):
        return f"{lengths[0]} to {last}"
    return f"{', '.join(map(str, most))} or {last}" if most else str(last)


# --------------------------------------------------------------------------- date


def parse_date(value: str) -> date:
    """Parse ``YYYY-MM-DD`` or ``DD/MM/YYYY`` (also ``DD-MM-YYYY``, ``DD.MM.YYYY``)."""
    value = value.strip()
    if m := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", value):
        y, mo, d = m.groups()
    elif m := re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", value):
        d, mo, y = m.groups()
    else:
        raise InvalidValue("write the date as DD/MM/YYYY or YYYY-MM-DD")
    try:
        return date(int(y), int(mo), int(d))
    except ValueError:
        raise InvalidValue(f"{value} is not a real date") from None


def _date(value: str) -> str:
    return parse_date(value).isoformat()


# --------------------------------------------------------------------------- number


def _number(value: str) -> str:
    """Accept 12, 1.234,56, 1,234.56, 2,5 and 2.5; one separator before exactly 3 digits groups
    thousands (1.500 and 1,500 are both 1500), as customers write prices."""
    s = re.sub(r"[\s\u00a0\u202f]", "", value)
    sign = ""
    if s[:1] in ("+", "-"):
        sign, s = s[0].replace("+", ""), s[1:]
    s = re.sub(r"^(?:R\$|US\$|[$€£])", "", s)  # a price as typed: R$ 1.500,00
    if not re.fullmatch(r"[\d.,]*\d[\d.,]*", s):
        raise InvalidValue("write a number using digits, e.g. 1234,56 or 1234.56")
    dots, commas = s.count("."), s.count(",")
    if dots and commas:
        decimal_sep = "," if s.rfind(",") > s.rfind(".") else "."
        int_part, frac = _split_decimal(s, decimal_sep)
        int_part = _ungroup(int_part, "." if decimal_sep == "," else ",")
    elif dots or commas:
        sep = "." if dots else ","
        if s.count(sep) > 1:
            int_part, frac = _ungroup(s, sep), ""
        else:
            int_part, frac = s.split(sep)
            if len(frac) == 3 and re.fullmatch(r"[1-9]\d{0,2}", int_part):
                int_part, frac = int_part + frac, ""
    else:
        int_part, frac = s, ""
    if not re.fullmatch(r"\d*", frac) or (frac == "" and s.endswith((".", ","))):
        raise InvalidValue(f"{value} is not a valid number")
    try:
        number = Decimal(f"{sign}{int_part or '0'}.{frac or '0'}")
    except InvalidOperation:
        raise InvalidValue(f"{value} is not a valid number") from None
    text = format(number.normalize(), "f")
    return "0" if text == "-0" else text


def _split_decimal(s: str, sep: str) -> tuple[str, str]:
    if s.count(sep) > 1:
        raise InvalidValue(f"{s} has more than one decimal separator")
    int_part, frac = s.split(sep)
    if not frac:
        raise InvalidValue(f"{s} is not a valid number")
    return int_part, frac


def _ungroup(int_part: str, sep: str) -> str:
    if not re.fullmatch(rf"\d{{1,3}}(?:\{sep}\d{{3}})*", int_part):
        raise InvalidValue("thousands must be grouped in threes, e.g. 1.234.567,89")
    return int_part.replace(sep, "")


# --------------------------------------------------------------------------- enum, regex, text


def _fold(s: str) -> str:
    decomposed = unicodedata.normalize("NFKD", s)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())


def _enum(value: str, options: list[str]) -> str:
    if not options:
        raise InvalidValue("this field has no options configured; ask an administrator")
    wanted = _fold(value)
    for option in options:
        if _fold(option) == wanted:
            return option
    raise InvalidValue(f"choose one of: {', '.join(options)}")


def _regex(value: str, pattern: str, description: str) -> str:
    if re.fullmatch(pattern, value):
        return value
    hint = f" ({description})" if description else ""
    raise InvalidValue(f"'{value}' is not in the expected format{hint}")


def _text(value: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidValue(f"the text is too long ({len(value)} characters; at most {MAX_TEXT})")
    return value


# --------------------------------------------------------------------------- CPF and CNPJ


def _mod11(values: list[int], weights: list[int]) -> int:
    remainder = sum(v * w for v, w in zip(values, weights, strict=True)) % 11
    return 0 if remainder < 2 else 11 - remainder


def _cpf(value: str) -> str:
    digits = re.sub(r"[\s.\-/]", "", value)
    if not re.fullmatch(r"\d{11}", digits):
        raise InvalidValue("a CPF has 11 digits, e.g. 123.456.789-09")
    if len(set(digits)) == 1:
        raise InvalidValue("a CPF cannot be a repeated digit sequence")
    nums = [int(c) for c in digits]
    first = _mod11(nums[:9], list(range(10, 1, -1)))
    second = _mod11(nums[:9] + [first], list(range(11, 1, -1)))
    if nums[9:] != [first, second]:
        raise InvalidValue("this CPF is not valid (check digits do not match); please check the number")
    return f"{digits[:3]}.{digits[3:6]}.{digits[6:9]}-{digits[9:]}"


_CNPJ_W1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
_CNPJ_W2 = [6, *_CNPJ_W1]


def _cnpj(value: str) -> str:
    # since July 2026 the first 12 characters may be letters: each counts as its ASCII code - 48
    chars = re.sub(r"[\s.\-/]", "", value).upper()
    if not re.fullmatch(r"[0-9A-Z]{12}\d{2}", chars):
        raise InvalidValue("a CNPJ has 14 characters, e.g. 12.345.678/0001-95")
    if len(set(chars)) == 1:
        raise InvalidValue("a CNPJ cannot be a repeated digit sequence")
    nums = [ord(c) - 48 for c in chars[:12]]
    first = _mod11(nums, _CNPJ_W1)
    second = _mod11(nums + [first], _CNPJ_W2)
    if chars[12:] != f"{first}{second}":
        raise InvalidValue("this CNPJ is not valid (check digits do not match); please check the number")
    return f"{chars[:2]}.{chars[2:5]}.{chars[5:8]}/{chars[8:12]}-{chars[12:]}"


_VALIDATORS = {
    "email": _email, "phone": _phone, "date": _date, "number": _number,
    "cpf": _cpf, "cnpj": _cnpj, "text": _text,
}
