"""Slots and booking on SQLite and PostgreSQL: opening hours, time zones (with and without DST),
and the double-booking race decided by the database's unique index."""
from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from core.db import new_id
from kb import registry
from runtime import scheduling
from runtime.config import Scheduling
from runtime.models import Appointment, Conversation
from runtime.scheduling import (
    BeyondHorizon, BookingLimit, OutsideOpeningHours, SchedulingError, SlotInPast, SlotNotAligned, SlotTaken, available_slots, book,
)

SP = ZoneInfo("America/Sao_Paulo")
LISBON = ZoneInfo("Europe/Lisbon")
MONDAY = date(2025, 5, 19)
NOW = datetime(2025, 5, 16, 12, 0, tzinfo=UTC)  # the Friday before


def new_assistant(services, name: str = "clinic") -> str:
    with services.session() as s:
        a = registry.create_assistant(s, name=name, embedding_model="all-minilm-l6-v2", chunk_size=256, chunk_overlap=32)
        s.commit()
        return a.id


def new_conversation(services, assistant_id: str, customer: str | None = None) -> str:
    with services.session() as s:
        c = Conversation(id=new_id(), assistant_id=assistant_id, channel="test", sender="console", customer_id=customer or new_id())
        s.add(c)
        s.commit()
        return c.id


def slots(services, assistant_id, sched, day, now=NOW):
    with services.session() as s:
        return available_slots(s, assistant_id, sched, day, now)


def hhmm(dts) -> list[str]:
    return [d.strftime("%H:%M") for d in dts]


def booked_rows(services, assistant_id) -> int:
    with services.session() as s:
        return s.scalar(select(func.count()).select_from(Appointment).where(Appointment.assistant_id == assistant_id))


@pytest.fixture
def clinic(services):
    return services, new_assistant(services)


def test_slots_follow_opening_hours_in_local_time(clinic):
    services, aid = clinic
    found = slots(services, aid, Scheduling(), MONDAY)
    assert hhmm(found) == [
        "09:00", "09:30", "10:00", "10:30", "11:00", "11:30",
        "13:00", "13:30", "14:00", "14:30", "15:00", "15:30", "16:00", "16:30", "17:00", "17:30",
    ]
    assert all(d.tzinfo == SP for d in found)
    assert found[0].astimezone(UTC) == datetime(2025, 5, 19, 12, 0, tzinfo=UTC)
    assert slots(services, aid, Scheduling(), date(2025, 5, 17)) == []  # Saturday: closed
    custom = Scheduling(slot_minutes=45, availability={0: [("08:00", "10:00")]})
    assert hhmm(slots(services, aid, custom, MONDAY)) == ["08:00", "08:45"]  # 09:30 would end after 10:00


def test_past_slots_and_horizon(clinic):
    services, aid = clinic
    now = datetime(2025, 5, 19, 10, 10, tzinfo=SP)
    assert hhmm(slots(services, aid, Scheduling(), MONDAY, now))[:2] == ["10:30", "11:00"]
    assert slots(services, aid, Scheduling(), date(2025, 5, 16), now) == []
    sched = Scheduling(horizon_days=7)
    assert slots(services, aid, sched, MONDAY + timedelta(days=7), now)
    assert slots(services, aid, sched, MONDAY + timedelta(days=8), now) == []


def test_book_stores_utc_and_hides_the_slot(clinic):
    services, aid = clinic
    conv = new_conversation(services, aid)
    appt = book(services, aid, conv, Scheduling(), datetime(2025, 5, 19, 10, 0), "Ana", "appointment", "first visit", NOW)
    assert appt.starts_at == datetime(2025, 5, 19, 13, 0, tzinfo=UTC)
    assert appt.ends_at - appt.starts_at == timedelta(minutes=30)
    with services.session() as s:
        row = s.get(Appointment, appt.id)
        assert row.starts_at == datetime(2025, 5, 19, 13, 0, tzinfo=UTC) and row.starts_at.utcoffset() == timedelta(0)
        assert (row.name, row.kind, row.notes, row.status, row.conversation_id) == ("Ana", "appointment", "first visit", "booked", conv)
    assert "10:00" not in hhmm(slots(services, aid, Scheduling(), MONDAY))
    # an aware datetime in another zone naming the same instant is the same slot
    with pytest.raises(SlotTaken, match="already taken"):
        book(services, aid, new_conversation(services, aid), Scheduling(), datetime(2025, 5, 19, 13, 0, tzinfo=UTC), "Bia",
             now=NOW)
    assert booked_rows(services, aid) == 1


def test_a_conversation_books_at_most_its_share(clinic):
    services, aid = clinic
    conv = new_conversation(services, aid)
    book(services, aid, conv, Scheduling(), datetime(2025, 5, 19, 9, 0), "Ana", now=NOW)
    for k in range(6):  # one conversation asking slot after slot gets none of them
        with pytest.raises(BookingLimit, match="already has 1 booked appointment"):
            book(services, aid, conv, Scheduling(), datetime(2025, 5, 19, 10, 0) + timedelta(minutes=30 * k), "Ana", now=NOW)
    assert booked_rows(services, aid) == 1
    two = Scheduling(max_bookings_per_conversation=2)
    book(services, aid, conv, two, datetime(2025, 5, 19, 10, 0), "Ana", now=NOW)
    with pytest.raises(BookingLimit, match="already has 2"):
        book(services, aid, conv, two, datetime(2025, 5, 19, 10, 30), "Ana", now=NOW)
    book(services, aid, None, two, datetime(2025, 5, 19, 10, 30), "Ana", now=NOW)  # staff bookings have no cap
    assert booked_rows(services, aid) == 3


def test_cancelled_appointments_free_the_slot(clinic):
    services, aid = clinic
    conv = new_conversation(services, aid)
    appt = book(services, aid, conv, Scheduling(), datetime(2025, 5, 19, 9, 0), "Ana", now=NOW)
    with services.session() as s:
        s.get(Appointment, appt.id).status = "cancelled"
        s.commit()
    assert "09:00" in hhmm(slots(services, aid, Scheduling(), MONDAY))
    book(services, aid, conv, Scheduling(), datetime(2025, 5, 19, 9, 0), "Bia", now=NOW)
    assert booked_rows(services, aid) == 2


def test_appointments_of_another_length_block_overlapping_slots(clinic):
    services, aid = clinic
    conv = new_conversation(services, aid)
    book(services, aid, conv, Scheduling(slot_minutes=60), datetime(2025, 5, 19, 9, 0), "Ana", now=NOW)
    assert hhmm(slots(services, aid, Scheduling(), MONDAY))[:2] == ["10:00", "10:30"]


@pytest.mark.parametrize("when, error, message", [
    (datetime(2025, 5, 15, 10, 0), SlotInPast, "in the past"),
    (datetime(2025, 5, 17, 10, 0), OutsideOpeningHours, "outside opening hours (Saturday: closed)"),
    (datetime(2025, 5, 19, 8, 30), OutsideOpeningHours, "09:00-12:00, 13:00-18:00"),
    (datetime(2025, 5, 19, 12, 0), OutsideOpeningHours, "outside opening hours"),
    (datetime(2025, 5, 19, 18, 0), OutsideOpeningHours, "outside opening hours"),
    (datetime(2025, 5, 19, 9, 15), SlotNotAligned, "30 minutes"),
    (datetime(2025, 5, 19, 17, 45), SlotNotAligned, "not a slot start"),
    (datetime(2025, 7, 14, 10, 0), BeyondHorizon, "30 days ahead"),
])
def test_booking_errors_explain_themselves(clinic, when, error, message):
    services, aid = clinic
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        book(services, aid, None, Scheduling(), when, "Ana", now=NOW)
    assert isinstance(info.value, SchedulingError)
    assert booked_rows(services, aid) == 0


def test_naive_now_is_refused(clinic):
    services, aid = clinic
    with pytest.raises(ValueError, match="aware"):
        slots(services, aid, Scheduling(), MONDAY, now=datetime(2025, 5, 16, 12, 0))


# --------------------------------------------------------------------------- the race


def _race(services, aid, sched, when, force_interleaving: bool, monkeypatch) -> list:
    convs = [new_conversation(services, aid) for _ in range(2)]
    start, checked = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    if force_interleaving:
        # hold both threads after their availability check, so both see the slot free and only
        # the unique index can stop the second insert
        original, seen = scheduling._booked, threading.local()

        def booked_then_wait(*args):
            result = original(*args)
            if not getattr(seen, "done", False):
                seen.done = True
                checked.wait()
            return result

        monkeypatch.setattr(scheduling, "_booked", booked_then_wait)
    results: list = [None, None]

    def worker(i: int) -> None:
        start.wait()
        try:
            results[i] = book(services, aid, convs[i], sched, when, f"customer {i}", now=NOW)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each thread got
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.undo()
    return results


@pytest.mark.parametrize("force_interleaving", [False, True], ids=["barrier", "both-checked"])
def test_race_for_one_slot_has_one_winner(clinic, monkeypatch, force_interleaving):
    services, aid = clinic
    sched = Scheduling()
    for k in range(3):  # several rounds, each on a fresh slot
        when = datetime(2025, 5, 19, 9, 0) + timedelta(minutes=30 * k)
        results = _race(services, aid, sched, when, force_interleaving, monkeypatch)
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds == ["Appointment", "SlotTaken"], results
        with services.session() as s:
            rows = s.scalars(
                select(Appointment).where(Appointment.assistant_id == aid, Appointment.starts_at == when.replace(tzinfo=SP))
            ).all()
        winner = next(r for r in results if isinstance(r, Appointment))
        assert [r.id for r in rows] == [winner.id]
    assert booked_rows(services, aid) == 3


def test_same_time_at_two_assistants_is_no_conflict(services):
    a, b = new_assistant(services, "a"), new_assistant(services, "b")
    when = datetime(2025, 5, 19, 9, 0)
    book(services, a, None, Scheduling(), when, "Ana", now=NOW)
    book(services, b, None, Scheduling(), when, "Ana", now=NOW)


# --------------------------------------------------------------------------- time zones


def test_sao_paulo_has_no_dst(clinic):
    services, aid = clinic
    sched = Scheduling(timezone="America/Sao_Paulo", horizon_days=365)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    for day in (date(2025, 1, 13), date(2025, 7, 14), date(2025, 11, 3)):  # summer, winter, former DST start
        first = slots(services, aid, sched, day, now)[0]
        assert first.astimezone(UTC) == datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
        assert first.utcoffset() == timedelta(hours=-3)


def test_lisbon_business_hours_move_in_utc_across_the_change(clinic):
    services, aid = clinic
    sched = Scheduling(timezone="Europe/Lisbon", horizon_days=365)
    now = datetime(2025, 3, 1, tzinfo=UTC)
    friday, monday = slots(services, aid, sched, date(2025, 3, 28), now), slots(services, aid, sched, date(2025, 3, 31), now)
    assert hhmm(friday) == hhmm(monday)  # same wall-clock hours...
    assert friday[0].astimezone(UTC).hour == 9 and monday[0].astimezone(UTC).hour == 8  # ...an hour apart in UTC


def test_lisbon_spring_forward_skips_the_missing_hour(clinic):
    services, aid = clinic
    sched = Scheduling(timezone="Europe/Lisbon", slot_minutes=60, availability={6: [("00:00", "04:00")]}, horizon_days=365)
    now = datetime(2025, 3, 1, tzinfo=UTC)
    found = slots(services, aid, sched, date(2025, 3, 30), now)  # 01:00 -> 02:00 local
    assert hhmm(found) == ["00:00", "02:00", "03:00"]
    assert [d.astimezone(UTC).hour for d in found] == [0, 1, 2]
    with pytest.raises(OutsideOpeningHours, match="does not exist"):
        book(services, aid, None, sched, datetime(2025, 3, 30, 1, 0), "Ana", now=now)
    appt = book(services, aid, None, sched, datetime(2025, 3, 30, 2, 0), "Ana", now=now)
    assert appt.starts_at == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)


def test_lisbon_fall_back_counts_the_repeated_hour_once(clinic):
    services, aid = clinic
    sched = Scheduling(timezone="Europe/Lisbon", slot_minutes=60, availability={6: [("00:00", "04:00")]}, horizon_days=365)
    now = datetime(2025, 10, 1, tzinfo=UTC)
    found = slots(services, aid, sched, date(2025, 10, 26), now)  # 02:00 -> 01:00 local
    assert hhmm(found) == ["00:00", "01:00", "02:00", "03:00"]
    assert [d.astimezone(UTC) for d in found] == [
        datetime(2025, 10, 25, 23, tzinfo=UTC), datetime(2025, 10, 26, 0, tzinfo=UTC),
        datetime(2025, 10, 26, 2, tzinfo=UTC), datetime(2025, 10, 26, 3, tzinfo=UTC),
    ]
    appt = book(services, aid, None, sched, datetime(2025, 10, 26, 1, 0), "Ana", now=now)
    assert appt.starts_at == datetime(2025, 10, 26, 0, 0, tzinfo=UTC)  # the first 01:00 (summer time)
    assert appt.starts_at.astimezone(LISBON).strftime("%H:%M %Z") == "01:00 WEST"
    assert hhmm(slots(services, aid, sched, date(2025, 10, 26), now)) == ["00:00", "02:00", "03:00"]
