"""Calling windows in the contact's time zone (weekends, 24:00, daylight-saving changes), retries by outcome,
and a campaign's start and end."""

from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pytest

from voicebot.campaigns.definition import END_OF_DAY, Window, read_campaign
from voicebot.campaigns.schedule import due_at, in_window, next_window_start, retry_after

UTC = timezone.utc
WEEKDAYS = Window(days=frozenset(range(5)), start=time(9), end=time(20))
EVERY_DAY = Window(days=frozenset(range(7)), start=time(9), end=time(20))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def spec(**changes):
    data = {"name": "x", "persona": "p", "carrier": "twilio", "from": ["+15550002000"],
            "default_timezone": "America/New_York",
            "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "20:00"},
            "retry": {"busy": {"retries": 3, "after": "20m"}, "no-answer": {"retries": 1, "after": "2h"},
                      "voicemail": {"retries": 0, "after": "1d"}}, **changes}
    return read_campaign(data, "x.yaml", Path("."))


@pytest.mark.parametrize("tz, opens_utc, closes_utc", [
    # Friday 2026-12-04: the window is 09:00–20:00 in each zone (winter: New York −5, Berlin +1, Tokyo +9,
    # Sydney +11 in its summer).
    ("America/New_York", utc(2026, 12, 4, 14), utc(2026, 12, 5, 1)),
    ("Europe/Berlin", utc(2026, 12, 4, 8), utc(2026, 12, 4, 19)),
    ("Asia/Tokyo", utc(2026, 12, 4, 0), utc(2026, 12, 4, 11)),
    ("Australia/Sydney", utc(2026, 12, 3, 22), utc(2026, 12, 4, 9)),
])
def test_window_edges_in_each_zone(tz, opens_utc, closes_utc):
    second = timedelta(seconds=1)
    assert not in_window(WEEKDAYS, opens_utc - second, tz)
    assert in_window(WEEKDAYS, opens_utc, tz)                 # the start is inside
    assert in_window(WEEKDAYS, closes_utc - second, tz)
    assert not in_window(WEEKDAYS, closes_utc, tz)            # the end is not
    assert next_window_start(WEEKDAYS, opens_utc - timedelta(hours=1), tz) == opens_utc


def test_one_instant_is_inside_the_window_in_some_zones_and_not_in_others():
    at = utc(2026, 12, 4, 14, 30)     # Friday: 09:30 New York, 15:30 Berlin, 23:30 Tokyo, 01:30 Saturday Sydney
    inside = {tz: in_window(WEEKDAYS, at, tz)
              for tz in ("America/New_York", "Europe/Berlin", "Asia/Tokyo", "Australia/Sydney")}
    assert inside == {"America/New_York": True, "Europe/Berlin": True, "Asia/Tokyo": False,
                      "Australia/Sydney": False}


@pytest.mark.parametrize("tz, at, monday_opening", [
    ("America/New_York", utc(2026, 12, 5, 1), utc(2026, 12, 7, 14)),       # Friday 20:00 → Monday 09:00 EST
    ("Asia/Tokyo", utc(2026, 12, 4, 12), utc(2026, 12, 7, 0)),              # Friday 21:00 → Monday 09:00 JST
    ("Europe/Berlin", utc(2026, 12, 6, 12), utc(2026, 12, 7, 8)),           # Sunday 13:00 → Monday 09:00 CET
    ("Australia/Sydney", utc(2026, 12, 4, 9), utc(2026, 12, 6, 22)),        # Friday 20:00 → Monday 09:00 AEDT
])
def test_next_window_start_skips_the_weekend(tz, at, monday_opening):
    assert next_window_start(WEEKDAYS, at, tz) == monday_opening


def test_inside_the_window_the_next_start_is_now_in_utc():
    at = datetime(2026, 12, 4, 10, 15, tzinfo=timezone(timedelta(hours=-5)))
    start = next_window_start(WEEKDAYS, at, "America/New_York")
    assert start == at and start.tzinfo == UTC


@pytest.mark.parametrize("tz, evening_before, opening, why", [
    # New York springs forward on Sunday 2026-03-08 (02:00 → 03:00) and falls back on Sunday 2026-11-01.
    ("America/New_York", utc(2026, 3, 8, 2), utc(2026, 3, 8, 13), "09:00 EDT, −4"),
    ("America/New_York", utc(2026, 3, 7, 2), utc(2026, 3, 7, 14), "09:00 EST, −5, the day before"),
    ("America/New_York", utc(2026, 11, 1, 1), utc(2026, 11, 1, 14), "09:00 EST, −5"),
    ("America/New_York", utc(2026, 10, 31, 1), utc(2026, 10, 31, 13), "09:00 EDT, −4, the day before"),
    # Berlin on 2026-03-29 (02:00 → 03:00); Sydney leaves summer time on 2026-04-05 (03:00 → 02:00).
    ("Europe/Berlin", utc(2026, 3, 28, 20), utc(2026, 3, 29, 7), "09:00 CEST, +2"),
    ("Europe/Berlin", utc(2026, 3, 27, 20), utc(2026, 3, 28, 8), "09:00 CET, +1"),
    ("Australia/Sydney", utc(2026, 4, 4, 10), utc(2026, 4, 4, 23), "09:00 AEST, +10"),
    ("Australia/Sydney", utc(2026, 4, 3, 10), utc(2026, 4, 3, 22), "09:00 AEDT, +11"),
])
def test_opening_follows_daylight_saving_changes(tz, evening_before, opening, why):
    assert next_window_start(EVERY_DAY, evening_before, tz) == opening, why


def test_a_start_in_the_spring_forward_gap_opens_when_the_clocks_have_moved():
    early = Window(days=frozenset(range(7)), start=time(2, 30), end=time(5))
    # 02:30 does not exist in New York on 2026-03-08: the window opens at 03:00 EDT, 07:00 UTC.
    assert next_window_start(early, utc(2026, 3, 8, 4), "America/New_York") == utc(2026, 3, 8, 7)
    assert next_window_start(early, utc(2026, 3, 9, 0), "America/New_York") == utc(2026, 3, 9, 6, 30)
    # Nor does 02:30 in Berlin on 2026-03-29: 03:00 CEST, 01:00 UTC.
    assert next_window_start(early, utc(2026, 3, 28, 22), "Europe/Berlin") == utc(2026, 3, 29, 1)
    # 01:30 happens twice in New York on 2026-11-01: the window opens at the first (EDT, 05:30 UTC).
    late = Window(days=frozenset(range(7)), start=time(1, 30), end=time(5))
    assert next_window_start(late, utc(2026, 11, 1, 4), "America/New_York") == utc(2026, 11, 1, 5, 30)


def test_a_window_ending_at_24_00_includes_the_last_instant_of_the_day():
    weekend_evenings = Window(days=frozenset({5, 6}), start=time(18), end=END_OF_DAY)
    sunday_last = datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=UTC)
    assert in_window(weekend_evenings, sunday_last, "UTC")
    assert not in_window(weekend_evenings, utc(2026, 12, 7), "UTC")        # Monday 00:00
    assert in_window(weekend_evenings, utc(2026, 12, 6), "UTC") is False     # Sunday 00:00, before 18:00
    assert next_window_start(weekend_evenings, utc(2026, 12, 7), "UTC") == utc(2026, 12, 12, 18)


@pytest.mark.parametrize("tz, first", [("America/New_York", utc(2026, 3, 2)), ("America/New_York", utc(2026, 10, 26)),
                                       ("Europe/Berlin", utc(2026, 3, 23)), ("Australia/Sydney", utc(2026, 3, 30)),
                                       ("Asia/Tokyo", utc(2026, 12, 1))])
def test_next_window_start_is_the_first_instant_inside_across_a_week(tz, first):
    """Every 37 minutes over a week with a clock change: the next start is inside, and nothing between the asked
    instant and it (checked every 10 minutes and one second before) is."""
    at = first
    while at < first + timedelta(days=7):
        start = next_window_start(WEEKDAYS, at, tz)
        assert start >= at and in_window(WEEKDAYS, start, tz)
        if start > at:
            assert not in_window(WEEKDAYS, start - timedelta(seconds=1), tz)
            probe = at
            while probe < start:
                assert not in_window(WEEKDAYS, probe, tz), (at, probe, start)
                probe += timedelta(minutes=10)
        at += timedelta(minutes=37)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        in_window(WEEKDAYS, datetime(2026, 12, 4, 10), "UTC")


def test_retries_follow_the_policy_by_outcome():
    campaign = spec()
    # busy: 3 retries after the first busy dial, 20 minutes apart; the 4th busy ends it.
    assert [retry_after(campaign, "busy", earlier) for earlier in range(5)] == [timedelta(minutes=20)] * 3 + [None] * 2
    assert retry_after(campaign, "no-answer", 0) == timedelta(hours=2)
    assert retry_after(campaign, "no-answer", 1) is None
    assert retry_after(campaign, "voicemail", 0) is None            # retries: 0
    assert retry_after(campaign, "failed", 0) is None                # no rule
    assert retry_after(campaign, "answered", 0) is None
    assert retry_after(campaign, "dnc", 0) is None


def test_due_at_respects_window_start_and_end():
    friday_evening = utc(2026, 12, 5, 2)                       # Friday 21:00 in New York
    campaign = spec()
    assert due_at(campaign, "America/New_York", friday_evening) == utc(2026, 12, 7, 14)
    assert due_at(campaign, "Asia/Tokyo", friday_evening) == utc(2026, 12, 7, 0)
    inside = utc(2026, 12, 4, 15)
    assert due_at(campaign, "America/New_York", inside) == inside

    later_start = spec(starts_at="2026-12-08T18:00:00Z")           # Tuesday 13:00 in New York, 03:00 Wednesday Tokyo
    assert due_at(later_start, "America/New_York", inside) == utc(2026, 12, 8, 18)
    assert due_at(later_start, "Asia/Tokyo", inside) == utc(2026, 12, 9, 0)

    ending = spec(ends_at="2026-12-07T12:00:00Z")                   # Monday 07:00 in New York, 21:00 in Tokyo
    assert due_at(ending, "America/New_York", friday_evening) is None     # the window reopens after the end
    assert due_at(ending, "Asia/Tokyo", friday_evening) == utc(2026, 12, 7, 0)
    assert due_at(ending, "Asia/Tokyo", utc(2026, 12, 7, 12)) is None     # the end itself: no new dial
