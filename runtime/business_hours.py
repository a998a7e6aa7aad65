"""Business hours (``runtime.config.BusinessHours``): whether people answer at a moment, when they next do, and
that moment told to a customer in their language.

Hours are local times in the assistant's IANA time zone, so an opening at 09:00 stays at 09:00 across a change
of daylight saving time (its UTC moment moves). A local time that does not exist (skipped when clocks go forward)
is read with the offset before the change, i.e. as that much later; one that happens twice, as the first.

An interval belongs to the weekday it starts on; one whose end is not after its start runs past midnight. A
holiday closes its whole local date, including the part of an overnight interval that falls on it. Intervals are
half-open: open at the start, closed at the end.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from runtime.config import BusinessHours

SEARCH_DAYS = 370  # a year of holidays (and a bit) is searched for the next opening before giving up

WEEKDAY_NAMES = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "pt": ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado", "domingo"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
MONTH_NAMES = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
    "pt": ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro", "outubro",
           "novembro", "dezembro"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
           "noviembre", "diciembre"),
}


def is_open(hours: BusinessHours | None, at: datetime) -> bool:
    """Whether people answer at ``at`` (an aware datetime); always, without business hours."""
    if hours is None:
        return True
    day = at.astimezone(ZoneInfo(hours.timezone)).date()
    return any(start <= at < end for d in (day - timedelta(days=1), day) for start, end in _pieces(hours, d))


def next_opening(hours: BusinessHours | None, after: datetime) -> datetime | None:
    """The first moment at or after ``after`` when people answer (``after`` itself when open then), in UTC;
    None when there is none within ``SEARCH_DAYS`` days."""
    if is_open(hours, after):
        return after.astimezone(UTC)
    assert hours is not None  # always open without hours
    first = after.astimezone(ZoneInfo(hours.timezone)).date() - timedelta(days=1)
    for offset in range(SEARCH_DAYS + 1):
        for start, _ in _pieces(hours, first + timedelta(days=offset)):
            if start > after:
                return start
    return None


def _pieces(hours: BusinessHours, day: date) -> Iterator[tuple[datetime, datetime]]:
    """The open stretches (UTC) of the intervals starting on local ``day``, earliest first, split at local
    midnight with the holidays' parts left out."""
    tz, holidays = ZoneInfo(hours.timezone), set(hours.holidays)
    for start_hhmm, end_hhmm in sorted(hours.weekly.get(day.weekday(), [])):
        start = _utc(day, start_hhmm, tz)
        end_day = day + timedelta(days=1) if end_hhmm == "24:00" or end_hhmm <= start_hhmm else day
        end = _utc(end_day, "00:00" if end_hhmm == "24:00" else end_hhmm, tz)
        while start < end:
            local_day = start.astimezone(tz).date()
            midnight = _utc(local_day + timedelta(days=1), "00:00", tz)
            if local_day not in holidays:
                yield start, min(end, midnight)
            start = midnight


def _utc(day: date, hhmm: str, tz: ZoneInfo) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def describe_opening(hours: BusinessHours | None, opening: datetime | None, language: str | None,
                     now: datetime) -> str:
    """When a person will answer, as said to the customer in ``language`` (en, pt, es; else English) and the
    assistant's time zone: "today at 09:00 (Sao Paulo time)", "na segunda-feira, 7 de dezembro, às 09:00 (horário
    de Sao Paulo)"; "as soon as possible" without an opening."""
    lang = language if language in WEEKDAY_NAMES else "en"
    if opening is None or hours is None:
        return {"en": "as soon as possible", "pt": "assim que possível", "es": "lo antes posible"}[lang]
    tz = ZoneInfo(hours.timezone)
    local, today = opening.astimezone(tz), now.astimezone(tz).date()
    clock, days = local.strftime("%H:%M"), (local.date() - today).days
    city = hours.timezone.rsplit("/", 1)[-1].replace("_", " ")
    zone = {"en": f"({city} time)", "pt": f"(horário de {city})", "es": f"(hora de {city})"}[lang]
    if days in (0, 1):
        word = {"en": ("today", "tomorrow"), "pt": ("hoje", "amanhã"), "es": ("hoy", "mañana")}[lang][days]
        at = {"en": "at", "pt": "às", "es": "a las"}[lang]
        return f"{word} {at} {clock} {zone}"
    weekday, month = WEEKDAY_NAMES[lang][local.weekday()], MONTH_NAMES[lang][local.month - 1]
    if lang == "pt":
        article = "no" if local.weekday() >= 5 else "na"  # o sábado, o domingo; a segunda-feira ...
        return f"{article} {weekday}, {local.day} de {month}, às {clock} {zone}"
    if lang == "es":
        return f"el {weekday} {local.day} de {month} a las {clock} {zone}"
    return f"on {weekday}, {month} {local.day} at {clock} {zone}"
