"""Appointment slots from an assistant's opening hours, and race-free booking.

Opening hours are wall-clock windows in the assistant's time zone; slots step through them in
wall-clock time (a local time skipped by a DST change is no slot; one repeated by it counts once,
at its first occurrence). Appointments are stored in UTC and presented in local time. The
database's partial unique index on (assistant, start) of booked appointments is what prevents
double booking: two customers racing for a slot both pass the availability check, one insert wins.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from runtime.config import Scheduling
from runtime.events import emit
from runtime.models import Appointment, Conversation
from runtime.services import Services


class SchedulingError(Exception):
    """A booking request that cannot be honoured; the message says why."""


class OutsideOpeningHours(SchedulingError):
    pass


class SlotInPast(SchedulingError):
    pass


class SlotNotAligned(SchedulingError):
    pass


class BeyondHorizon(SchedulingError):
    pass


class SlotTaken(SchedulingError):
    pass


class BookingLimit(SchedulingError):
    """The conversation has booked as many appointments as ``max_bookings_per_conversation`` allows."""


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M")


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def opening_hours(scheduling: Scheduling, day: date) -> str:
    """The day's windows as text, e.g. '09:00-12:00, 13:00-18:00' (or 'closed')."""
    windows = scheduling.availability.get(day.weekday(), [])
    return ", ".join(f"{a}-{b}" for a, b in windows) or "closed"


def day_slots(scheduling: Scheduling, day: date) -> list[datetime]:
    """Every slot start of ``day`` from the opening hours, booked or not, as aware local datetimes."""
    tz = ZoneInfo(scheduling.timezone)
    step = timedelta(minutes=scheduling.slot_minutes)
    slots = []
    for start, end in scheduling.availability.get(day.weekday(), []):
        wall = datetime.combine(day, time.fromisoformat(start))
        wall_end = datetime.combine(day, time.fromisoformat(end))
        while wall + step <= wall_end:
            local = wall.replace(tzinfo=tz)
            # a wall time inside a DST gap does not exist: it comes back from UTC as another time
            if local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
                slots.append(local)
            wall += step
    return slots


def _booked(session: Session, assistant_id: str, start_utc: datetime, end_utc: datetime) -> list[tuple[datetime, datetime]]:
    rows = session.execute(
        select(Appointment.starts_at, Appointment.ends_at).where(
            Appointment.assistant_id == assistant_id,
            Appointment.status == "booked",
            Appointment.starts_at < end_utc,
            Appointment.ends_at > start_utc,
        )
    )
    return [(s, e) for s, e in rows]


def _last_bookable_day(scheduling: Scheduling, now: datetime) -> date:
    return now.astimezone(ZoneInfo(scheduling.timezone)).date() + timedelta(days=scheduling.horizon_days)


def available_slots(session: Session, assistant_id: str, scheduling: Scheduling, day: date, now: datetime) -> list[datetime]:
    """Free future slot starts of ``day`` (local date), as aware datetimes in the assistant's zone."""
    now = _aware(now)
    if day > _last_bookable_day(scheduling, now):
        return []
    step = timedelta(minutes=scheduling.slot_minutes)
    slots = [s for s in day_slots(scheduling, day) if s > now]
    if not slots:
        return []
    booked = _booked(session, assistant_id, slots[0].astimezone(UTC), slots[-1].astimezone(UTC) + step)
    # overlap rather than equality, so appointments made under another slot length still block
    return [s for s in slots if not any(b_start < s + step and s < b_end for b_start, b_end in booked)]


def check_slot(scheduling: Scheduling, starts_at: datetime, now: datetime) -> datetime:
    """Check that ``starts_at`` is a slot start in the opening hours, in the future and within the
    horizon; returns it as an aware local datetime. Naive input is read as local time."""
    tz = ZoneInfo(scheduling.timezone)
    local = starts_at.replace(tzinfo=tz) if starts_at.tzinfo is None else starts_at.astimezone(tz)
    now = _aware(now)
    if starts_at.tzinfo is None and local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != starts_at:
        raise OutsideOpeningHours(f"{_fmt(starts_at)} does not exist in {scheduling.timezone} (the clocks change that day)")
    if local <= now:
        raise SlotInPast(f"{_fmt(local)} is in the past; choose a future time")
    last = _last_bookable_day(scheduling, now)
    if local.date() > last:
        raise BeyondHorizon(
            f"appointments can be booked at most {scheduling.horizon_days} days ahead (until {last.isoformat()})"
        )
    slots = day_slots(scheduling, local.date())
    if local in slots:
        return next(s for s in slots if s == local)
    hours = opening_hours(scheduling, local.date())
    wall = local.time().strftime("%H:%M")
    if any(a <= wall < b for a, b in scheduling.availability.get(local.date().weekday(), [])):
        raise SlotNotAligned(
            f"{_fmt(local)} is not a slot start; slots are {scheduling.slot_minutes} minutes long "
            f"(opening hours that day: {hours})"
        )
    raise OutsideOpeningHours(f"{_fmt(local)} is outside opening hours ({local.strftime('%A')}: {hours})")


def ensure_bookable(
    session: Session, assistant_id: str, conversation_id: str | None, scheduling: Scheduling,
    starts_at_local: datetime, now: datetime,
) -> datetime:
    """Check that a slot can be booked now: for a conversation, one more booking within
    ``max_bookings_per_conversation``; then a free slot start (``check_slot``). Returns the aware local
    start, else raises a ``SchedulingError``."""
    if conversation_id is not None:
        booked = session.scalar(select(func.count()).select_from(Appointment).where(
            Appointment.conversation_id == conversation_id, Appointment.status == "booked"))
        if booked >= scheduling.max_bookings_per_conversation:
            raise BookingLimit(
                f"this conversation already has {booked} booked appointment(s), the most one conversation may book; "
                "offer to transfer the customer to a human agent to change or add a booking")
    local = check_slot(scheduling, starts_at_local, now)
    start = local.astimezone(UTC)
    if _booked(session, assistant_id, start, start + timedelta(minutes=scheduling.slot_minutes)):
        raise _taken(local)
    return local


def _taken(local: datetime) -> SlotTaken:
    return SlotTaken(f"{_fmt(local)} is already taken; choose another time")


def book(
    services: Services, assistant_id: str, conversation_id: str | None, scheduling: Scheduling,
    starts_at_local: datetime, name: str, kind: str = "appointment", notes: str = "", now: datetime | None = None,
) -> Appointment:
    """Book a slot in its own short transaction; raises a ``SchedulingError`` (``SlotTaken`` when
    someone else has it, even if they won a race by milliseconds; ``BookingLimit`` when the conversation
    has booked its share). Turns of one conversation never overlap, so its count cannot race."""
    with services.session() as session:
        local = ensure_bookable(session, assistant_id, conversation_id, scheduling, starts_at_local, now or utcnow())
        start = local.astimezone(UTC)
        end = start + timedelta(minutes=scheduling.slot_minutes)
        appointment = Appointment(
            id=new_id(), assistant_id=assistant_id, conversation_id=conversation_id, kind=kind,
            starts_at=start, ends_at=end, name=name, notes=notes, status="booked",
        )
        conversation = session.get(Conversation, conversation_id) if conversation_id else None
        session.add(appointment)
        if conversation is not None:
            emit(session, conversation, "appointment.booked", {
                "appointment_id": appointment.id, "kind": kind, "starts_at": start.isoformat(),
                "ends_at": end.isoformat(), "local_start": local.isoformat(), "name": name, "notes": notes})
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            if _booked(session, assistant_id, start, end):
                raise _taken(local) from None
            raise
    return appointment
