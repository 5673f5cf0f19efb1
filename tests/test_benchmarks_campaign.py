"""The campaign dialer benchmark at small scale: it runs end to end on SQLite and what it reports agrees with what
the fake carrier recorded (dials, outcomes, live calls) and with the campaign's limits.

The rate is checked with a wide tolerance only: this machine is shared; the figures belong in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from campaign_dialer import Options, callees, run_campaign, table  # noqa: E402
from voicebot.simulator.carrier_api import Busy, NoAnswer, ShortCall  # noqa: E402


async def test_small_campaign_benchmark_agrees_with_the_fake_carriers_record(tmp_path):
    options = Options(contacts=60, rate=20.0, concurrency=40, ring_s=(0.2, 0.6), talk_s=(0.5, 1.5),
                      ring_timeout_s=5, retry_after_s=1, window_s=1.0)
    report = await run_campaign(options, f"sqlite:///{tmp_path / 'voicebot.db'}", tmp_path)

    kinds = Counter(type(callee) for callee in callees(options).values())
    retried = kinds[Busy] + kinds[NoAnswer]
    assert retried > 0 and kinds[Busy] and kinds[NoAnswer]
    # Every contact settled, with exactly the attempts the policy allows (one retry of busy and no-answer),
    # each one a dial the fake received and ended the way the database says.
    assert report.contact_states == {"done": 60}
    assert report.attempts == len(report.dial_times) == 60 + retried
    assert report.outcomes == {"answered": kinds[ShortCall], "busy": 2 * kinds[Busy],
                               "no-answer": 2 * kinds[NoAnswer]}
    assert report.fake_statuses == {"completed": report.outcomes["answered"], "busy": report.outcomes["busy"],
                                    "no-answer": report.outcomes["no-answer"]}
    assert report.callbacks_refused[-1] == 0 and report.callbacks >= 3 * report.attempts   # initiated, ringing, [answered,] final
    assert report.live_at_end == 0
    # The limits, as measured at the carrier.
    assert 0 < report.max_live_seen <= options.concurrency
    assert len(report.window_rates) >= 2
    mean = sum(report.window_rates) / len(report.window_rates)
    assert abs(mean - options.rate) / options.rate < 0.15, report.window_rates
    assert max(report.window_rates) <= options.rate * 1.2, report.window_rates
    # The database time covers each attempt's store calls; the CPU figures are there.
    assert report.store_calls["mark_dialing"] == report.attempts
    # Each attempt ends exactly once: by its final status (one transaction) or, for an attempt this process
    # did not dial, by finish_attempt.
    assert report.store_calls.get("final_progress", 0) + report.store_calls.get("finish_attempt", 0) \
        == report.attempts
    assert report.store_calls.get("final_progress", 0) > 0
    assert report.per_attempt_ms(report.store_s) > 0 and report.cpu_s > report.loop_cpu_s > 0
    text = table([report])
    assert "max live calls at the fake" in text and f"{report.max_live_seen} (≤ 40)" in text
