"""When a contact may be dialled: calling windows in the contact's own time zone, retry delays by outcome, the
campaign's start and end. Pure functions of aware datetimes; results are in UTC."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from .definition import END_OF_DAY, CampaignSpec, Window


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got {at.isoformat()}")
    return at


def in_window(window: Window, at: datetime, tz: str) -> bool:
    """Whether ``at`` falls inside the window in time zone ``tz``."""
    local = _aware(at).astimezone(_zone(tz))
    clock = local.time().replace(tzinfo=None)
    return (local.weekday() in window.days and window.start <= clock
            and (clock < window.end or window.end == END_OF_DAY))


def next_window_start(window: Window, at: datetime, tz: str) -> datetime:
    """``at`` (in UTC) when it is inside the window, else the window's next opening in UTC."""
    if in_window(window, at, tz):
        return at.astimezone(timezone.utc)
    if not window.days:
        raise ValueError("a window without days never opens")
    zone = _zone(tz)
    today = at.astimezone(zone).date()
    for ahead in range(8):
        day = today + timedelta(days=ahead)
        if day.weekday() in window.days:
            opening = _opening(day, window, zone)
            if opening > at:
                return opening
    raise AssertionError("a window with days opens within a week")   # pragma: no cover


def _opening(day: date, window: Window, zone: ZoneInfo) -> datetime:
    """The UTC instant the window opens on ``day``; a start inside a spring-forward gap (a wall time that does
    not exist that day) opens at the first instant after the gap."""
    wall = datetime.combine(day, window.start, tzinfo=zone)
    utc = wall.astimezone(timezone.utc)
    if utc.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return utc         # an existing wall time (the earlier one when the clocks go back)
    # In a gap, fold=0 and fold=1 read the wall time with the offsets before and after the change: the
    # change lies between the two readings. Find it to the second (zone changes fall on whole seconds).
    low, high = sorted(int(wall.replace(fold=fold).timestamp()) for fold in (0, 1))
    offset_before = _offset(low, zone)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, zone) == offset_before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, timezone.utc)


def _offset(epoch: int, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(epoch, zone).utcoffset()


def retry_after(spec: CampaignSpec, outcome: str, earlier_with_outcome: int) -> timedelta | None:
    """The delay before the next dial of a contact whose attempt just ended with ``outcome``, given how many
    earlier attempts of that contact ended the same way; None: no more dials."""
    rule = spec.retry.get(outcome)
    if rule is None or earlier_with_outcome >= rule.retries:
        return None
    return rule.after


def due_at(spec: CampaignSpec, contact_tz: str, not_before: datetime) -> datetime | None:
    """The first moment at or after ``not_before`` (and ``starts_at``) inside the contact's window; None when
    the campaign has ended by then (``ends_at`` is the first moment no dial starts)."""
    earliest = _aware(not_before)
    if spec.starts_at is not None and spec.starts_at > earliest:
        earliest = spec.starts_at
    due = next_window_start(spec.window, earliest, contact_tz)
    if spec.ends_at is not None and due >= spec.ends_at:
        return None
    return due
