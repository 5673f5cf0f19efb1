"""The load generator at tiny scale: it runs end to end and its report carries every figure.

Timings are reported, never asserted: this machine is shared and the figures belong in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from voicebot import latency
from voicebot.loadgen import summarize_call
from voicebot.loadtest import Options, run_loadtest


def test_histogram_percentiles_are_within_its_resolution():
    h = latency.Histogram()
    for us in range(1, 1001):            # 1 µs … 1 ms, uniform
        h.add(us * 1e-6)
    summary = h.summary()
    assert summary["count"] == 1000
    assert summary["max_ms"] == pytest.approx(1.0)
    for q, key in ((0.50, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        assert summary[key] == pytest.approx(q, rel=0.06)
    assert latency.Histogram().summary()["p99_ms"] == 0.0


def test_underruns_and_their_missed_frames_are_counted():
    seg = lambda a, b, how="drained": SimpleNamespace(start_s=a, end_s=b, ended_by=how)   # noqa: E731
    result = SimpleNamespace(
        segments=[seg(0.5, 3.0), seg(5.0, 6.0, "clear"), seg(6.1, 7.0), seg(9.0, 9.5)],
        underruns=[SimpleNamespace(start_s=2.0, gap_ms=40.0, loop_lag_ms=0.0),
                   SimpleNamespace(start_s=6.5, gap_ms=5.0, loop_lag_ms=0.0)],
        duration_s=10.0, media_received=[], first_bot_audio_s=0.52, barge_in_reaction_s=[0.03],
        utterances=[], clears=[6.0], marks_echoed=3, protocol_errors=[], end_reason="max_duration",
        setup_s=0.01, max_tick_lag_ms=1.0, late_ticks=0)
    summary = summarize_call(result)
    # 40 ms dry is two frames missed; a shorter gap still costs the frame it fell in
    assert summary["underruns"] == 2 and summary["late_frames"] == 3
    assert summary["frames_sent"] == 500


@pytest.mark.parametrize("target", ["voicebot", "naive"])
async def test_tiny_load_run_reports_every_figure(tmp_path, target):
    report = await run_loadtest(Options(steps=(3,), target=target, ramp_s=1.0, hold_s=6.0, pin=False,
                                        quiet=True, workdir=str(tmp_path), stop_on_fail=False))
    assert len(report["steps"]) == 1
    step = report["steps"][0]
    assert step["n"] == 3 and step["calls_ok"] == 3, step["notes"]
    assert step["frames_sent"] > 3 * 6 / 0.02 * 0.9
    assert step["appends_model"] > 0 and step["bot_frames_received"] > 0
    assert not math.isnan(step["cpu_pct"]) and step["cpu_pct"] > 0
    assert step["rss_idle_mb"] > 0 and step["rss_peak_mb"] >= step["rss_idle_mb"] * 0.9
    for name in ("in", "out", "loop"):
        figures = step["latency"][name]
        assert figures["count"] > 0 and {"p50_ms", "p95_ms", "p99_ms"} <= set(figures), name
    assert step["first_bot_audio_ms"]["count"] == 3 and step["first_bot_audio_ms"]["p50"] > 0
    assert step["caller_ticks"] == step["frames_sent"]
    assert step["protocol_errors"] == 0
    if target == "voicebot":
        assert step["frames_server_in"] == step["frames_sent"]
        assert step["frames_fed"] is not None and step["lost_before_engine"] is not None
    assert f"{target}" in report["table"] and "verdict" in report["table"]
    assert (tmp_path / "report.json").exists()


async def test_tiny_chain_load_run_counts_frames_to_asr_and_times_both_ways(tmp_path):
    """The chain engine is measured like the realtime one: frames taken, frames reaching ASR, 'in' and 'out'."""
    report = await run_loadtest(Options(steps=(2,), engine="chain", ramp_s=1.0, hold_s=14.0, pin=False,
                                        quiet=True, workdir=str(tmp_path), stop_on_fail=False))
    step = report["steps"][0]
    assert step["calls_ok"] == 2, step["notes"]
    assert step["frames_server_in"] == step["frames_sent"]
    assert step["frames_fed"] == step["frames_server_in"] and step["lost_before_engine"] == 0
    # Each caller finished at least one turn: its frames went to ASR, and ASR took what was sent.
    assert step["speech_frames"] > 2 * 1.0 / 0.02
    assert 0 < step["asr_frames_model"] <= step["asr_frames_sent"] <= step["speech_frames"]
    assert step["not_speech_frames"] == step["frames_fed"] - step["speech_frames"] > 0
    assert step["lost_frames"] == step["speech_frames"] - step["asr_frames_model"]
    assert step["appends_model"] == 0 and step["bot_frames_received"] > 0
    for name in ("in", "out"):
        assert step["latency"][name]["count"] > 0, name
    assert step["latency"]["in"]["count"] <= step["frames_fed"]
    assert not any("not instrumented" in note for note in step["notes"])


def test_both_targets_are_measured_n_by_n_in_turn_and_each_stops_at_its_own_failure(monkeypatch, capsys):
    import argparse
    from dataclasses import asdict

    from voicebot import loadtest

    ran: list[tuple[str, int]] = []

    async def fake_run(opts):
        (n,) = opts.steps
        ran.append((opts.target, n))
        failed = opts.target == "voicebot" and n >= 50        # our server fails from 50 calls on
        step = loadtest.StepResult(n=n, target=opts.target, passed=not failed)
        return {"target": opts.target, "steps": [asdict(step)], "max_passing_n": None, "table": ""}

    monkeypatch.setattr(loadtest, "run_loadtest", fake_run)
    args = loadtest.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--target", "both", "--steps", "10,25,50,100"])
    assert loadtest.run_cli(args) == 0
    assert ran == [("voicebot", 10), ("naive", 10), ("voicebot", 25), ("naive", 25),
                   ("voicebot", 50), ("naive", 50), ("naive", 100)]
    out = capsys.readouterr().out
    assert "voicebot: highest N meeting every criterion: 25" in out
    assert "naive: highest N meeting every criterion: 100" in out
