"""The caller-audio budget (voicebot/telephony/flood.py) on a clock the test moves: real time plus one burst."""

from __future__ import annotations

import pytest

from voicebot.telephony.flood import CallerAudioBudget

FRAME = 160     # 20 ms at 8 kHz


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_real_time_audio_always_passes_and_bursts_up_to_the_allowance_pass_too():
    clock = Clock()
    budget = CallerAudioBudget(burst_ms=2000, clock=clock)
    for _ in range(3000):                       # a minute of frames, one every 20 ms
        clock.t += 0.02
        assert budget.admit(FRAME)
    clock.t += 1.5                              # a stall, then its 1.5 s arrive at once
    assert all(budget.admit(FRAME) for _ in range(75))
    assert budget.dropped_messages == 0 and budget.first_drop_t is None


def test_a_steady_flood_passes_exactly_real_time_after_the_burst():
    clock = Clock()
    budget = CallerAudioBudget(burst_ms=2000, clock=clock)
    admitted = 0
    for _ in range(500):                        # 10 s at 10 frames per 20 ms
        clock.t += 0.02
        admitted += sum(budget.admit(FRAME) for _ in range(10))
    # The 2 s burst (refilling while it is spent: all 10 frames pass for 11 ticks), then one frame per tick.
    assert admitted == 11 * 10 + 489 == 100 + 499
    assert budget.dropped_messages == 5000 - admitted and budget.dropped_samples == budget.dropped_messages * FRAME
    assert budget.first_drop_t == pytest.approx(100.0 + 12 * 0.02)


def test_a_message_longer_than_the_burst_passes_once_and_is_paid_back_in_real_time():
    clock = Clock()
    budget = CallerAudioBudget(burst_ms=2000, clock=clock)
    assert budget.admit(8000 * 5)               # 5 s in one message: 3 s in debt
    clock.t += 2.9
    assert not budget.admit(FRAME)
    clock.t += 0.11
    assert budget.admit(FRAME)
