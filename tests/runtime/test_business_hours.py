"""Business hours: open or closed at a moment, the next opening, across DST changes, overnight intervals,
closed days and holidays; the opening told in the customer's language; the config's validation."""
from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from runtime.business_hours import describe_opening, is_open, next_opening
from runtime.config import AssistantConfig, BusinessHours

NY = ZoneInfo("America/New_York")
SP = ZoneInfo("America/Sao_Paulo")


def local(tz, *args) -> datetime:
    return datetime(*args, tzinfo=tz)


def hours(**kwargs) -> BusinessHours:
    return BusinessHours.model_validate(kwargs)


def test_without_business_hours_it_is_always_open():
    now = datetime(2026, 12, 25, 3, 0, tzinfo=UTC)
    assert is_open(None, now) and next_opening(None, now) == now


def test_weekdays_with_a_lunch_break_and_a_closed_weekend():
    h = hours(timezone="America/Sao_Paulo", weekly={"mon": [["09:00", "12:00"], ["13:00", "18:00"]],
                                                    "tue": [["09:00", "12:00"], ["13:00", "18:00"]]})
    assert is_open(h, local(SP, 2026, 11, 30, 9, 0))  # Monday, at the opening
    assert not is_open(h, local(SP, 2026, 11, 30, 12, 0))  # the end is closed
    assert next_opening(h, local(SP, 2026, 11, 30, 12, 30)) == local(SP, 2026, 11, 30, 13, 0)
    assert next_opening(h, local(SP, 2026, 11, 30, 18, 0)) == local(SP, 2026, 12, 1, 9, 0)
    # Tuesday evening: Wednesday to Sunday are closed, the next opening is Monday
    assert next_opening(h, local(SP, 2026, 12, 1, 20, 0)) == local(SP, 2026, 12, 7, 9, 0)
    assert next_opening(h, local(SP, 2026, 11, 30, 10, 0)) == local(SP, 2026, 11, 30, 10, 0)  # open: now


def test_an_overnight_interval_runs_past_midnight_into_the_next_day():
    h = hours(timezone="America/Sao_Paulo", weekly={"fri": [["22:00", "02:00"]], "sat": [["00:00", "24:00"]]})
    assert is_open(h, local(SP, 2026, 12, 4, 23, 0))  # Friday night
    assert is_open(h, local(SP, 2026, 12, 5, 1, 30))  # Saturday, on Friday's interval and its own
    assert is_open(h, local(SP, 2026, 12, 5, 23, 59))
    assert not is_open(h, local(SP, 2026, 12, 6, 0, 0))  # Sunday: Saturday's "24:00" ended at midnight
    assert next_opening(h, local(SP, 2026, 12, 6, 10, 0)) == local(SP, 2026, 12, 11, 22, 0)
    only_friday = hours(timezone="America/Sao_Paulo", weekly={"fri": [["22:00", "02:00"]]})
    assert is_open(only_friday, local(SP, 2026, 12, 5, 1, 59)) and not is_open(only_friday, local(SP, 2026, 12, 5, 2, 0))


def test_opening_times_stay_local_across_daylight_saving_changes():
    h = hours(timezone="America/New_York", weekly={d: [["09:00", "17:00"]] for d in range(7)})
    # clocks went forward on Sunday 2026-03-08: 09:00 is 14:00 UTC on Saturday, 13:00 UTC from Sunday
    assert next_opening(h, local(NY, 2026, 3, 7, 18, 0)) == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    assert is_open(h, datetime(2026, 3, 7, 14, 0, tzinfo=UTC)) and not is_open(h, datetime(2026, 3, 7, 13, 59, tzinfo=UTC))
    assert is_open(h, datetime(2026, 3, 8, 13, 0, tzinfo=UTC))
    # back on Sunday 2026-11-01: 09:00 is 14:00 UTC again
    assert next_opening(h, local(NY, 2026, 10, 31, 18, 0)) == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)
    assert not is_open(h, datetime(2026, 11, 1, 13, 30, tzinfo=UTC))
    # an interval across the skipped hour is an hour shorter; one across the repeated hour an hour longer
    night = hours(timezone="America/New_York", weekly={6: [["01:00", "04:00"]]})
    assert not is_open(night, datetime(2026, 3, 8, 8, 0, tzinfo=UTC))  # 04:00 EDT: closed
    assert is_open(night, datetime(2026, 3, 8, 7, 59, tzinfo=UTC))
    assert is_open(night, datetime(2026, 11, 1, 8, 59, tzinfo=UTC))  # 03:59 EST: the fourth hour
    assert not is_open(night, datetime(2026, 11, 1, 9, 0, tzinfo=UTC))


def test_holidays_close_the_whole_local_day_even_mid_interval():
    h = hours(timezone="America/Sao_Paulo", weekly={d: [["09:00", "18:00"]] for d in range(5)} | {4: [["20:00", "03:00"]]},
              holidays=["2026-12-25", "2026-12-26"])
    assert not is_open(h, local(SP, 2026, 12, 25, 10, 0))  # Christmas, a Friday
    assert is_open(h, local(SP, 2026, 12, 18, 23, 0)) and is_open(h, local(SP, 2026, 12, 19, 2, 0))
    # the Friday before a holiday Saturday: open until midnight only
    assert is_open(h, local(SP, 2026, 12, 4, 23, 59))
    h2 = hours(timezone="America/Sao_Paulo", weekly={4: [["20:00", "03:00"]]}, holidays=["2026-12-05"])
    assert is_open(h2, local(SP, 2026, 12, 4, 23, 59)) and not is_open(h2, local(SP, 2026, 12, 5, 0, 30))
    assert next_opening(h, local(SP, 2026, 12, 24, 19, 0)) == local(SP, 2026, 12, 28, 9, 0)


def test_a_week_of_holidays_moves_the_opening_past_it():
    week = [f"2026-12-{d}" for d in range(28, 32)] + ["2027-01-01"]
    h = hours(timezone="America/Sao_Paulo", weekly={d: [["09:00", "18:00"]] for d in range(5)}, holidays=week)
    assert next_opening(h, local(SP, 2026, 12, 25, 19, 0)) == local(SP, 2027, 1, 4, 9, 0)
    assert all(not is_open(h, local(SP, 2026, 12, d, 10, 0)) for d in range(28, 32))


def test_no_opening_within_the_search_is_none():
    h = hours(timezone="UTC", weekly={0: [["09:00", "10:00"]]},
              holidays=[date.fromordinal(date(2026, 1, 5).toordinal() + 7 * i).isoformat() for i in range(60)])
    assert next_opening(h, datetime(2026, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize("language, at, expected", [
    ("en", local(SP, 2026, 12, 1, 9, 0), "tomorrow at 09:00 (Sao Paulo time)"),
    ("pt", local(SP, 2026, 11, 30, 23, 0), "hoje às 23:00 (horário de Sao Paulo)"),
    ("es", local(SP, 2026, 12, 7, 9, 30), "el lunes 7 de diciembre a las 09:30 (hora de Sao Paulo)"),
    ("pt", local(SP, 2026, 12, 7, 9, 0), "na segunda-feira, 7 de dezembro, às 09:00 (horário de Sao Paulo)"),
    ("pt", local(SP, 2026, 12, 5, 9, 0), "no sábado, 5 de dezembro, às 09:00 (horário de Sao Paulo)"),
    ("en", local(SP, 2026, 12, 3, 9, 0), "on Thursday, December 3 at 09:00 (Sao Paulo time)"),
    ("pt", None, "assim que possível"),
])
def test_the_opening_is_told_in_the_customers_language_and_the_assistants_time_zone(language, at, expected):
    h = hours(timezone="America/Sao_Paulo")
    now = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # Monday 30 November, 22:00 in Sao Paulo
    assert describe_opening(h, at, language, now) == expected


def test_config_accepts_weekday_names_and_refuses_bad_hours():
    config = AssistantConfig.model_validate({"handoff": {"business_hours": {
        "timezone": "Europe/Lisbon", "weekly": {"mon": [["09:00", "13:00"]], "6": [["10:00", "24:00"]]}}}})
    assert config.handoff.business_hours.weekly == {0: [("09:00", "13:00")], 6: [("10:00", "24:00")]}
    assert AssistantConfig.model_validate(config.model_dump(mode="json")) == config  # stored as JSON, read back
    assert AssistantConfig().handoff.business_hours is None
    for bad in ({"timezone": "Mars/Olympus"}, {"weekly": {"mon": [["09:00", "09:00"]]}},
                {"weekly": {"mon": [["9:00", "18:00"]]}}, {"weekly": {}}, {"weekly": {"7": [["09:00", "10:00"]]}},
                {"messages": {"hello": "x"}}, {"holidays": ["2026-13-01"]}):
        with pytest.raises(ValidationError):
            AssistantConfig.model_validate({"handoff": {"business_hours": bad}})
