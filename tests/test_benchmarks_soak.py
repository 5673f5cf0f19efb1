"""The soak benchmark in its quick mode (~30 s of calls, plus the server's start and its two measurements at
rest): it runs a real server with faults of every kind, and what it reports holds together — calls completed,
every fault kind injected and seen by the server, nothing left behind, no call stuck. The long run's figures
belong in benchmarks/RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from soak import FAULT_KINDS, ONE_SHOT, Options, run_soak  # noqa: E402


async def test_quick_soak_reports_faults_and_leaves_nothing_behind(tmp_path):
    lines: list[str] = []
    report = await run_soak(Options.quick(workdir=str(tmp_path / "soak"), quiet=True), log=lines.append)

    assert report["phase_s"] >= 30
    calls = report["calls"]
    # Calls were replaced as they ended (8 at a time, 8-16 s each, over 30 s) and ran to their end.
    assert calls["started"] >= 2 * 8 and calls["completed"] >= 8, calls
    assert calls["setup_failed"] == 0 and calls["ended_by_server"] == 0 and calls["stuck_callers"] == 0, report
    assert calls["protocol_errors"] == 0 and calls["turns"] > 0
    assert report["max_calls_in_progress"] == 8

    faults = report["faults"]
    # A fault every 2 s, round-robin: every kind at least once in 30 s.
    assert set(faults["injected"]) == set(FAULT_KINDS), faults
    assert faults["total"] == sum(faults["injected"].values()) >= 12
    assert sum(faults["taken"].get(kind, 0) for kind in ONE_SHOT) >= 3, faults
    # The faults reached the server: realtime sessions lost (then the chain took over), a full disk logged.
    assert report["metrics"]["voicebot_engine_failovers"].get("realtime→chain", 0) >= 1, report["metrics"]
    assert report["server_log"]["events"].get("transcript_write_failed", 0) >= 1, report["server_log"]
    assert calls["dropped"] == faults["injected"]["carrier_drop"]     # counted when applied to a speaking bot

    # Samples every 2 s, with the process's figures.
    samples = report["samples"]
    assert len(samples) >= 12
    assert {"t_s", "rss_mb", "tasks", "fds", "sockets", "threads", "calls"} <= set(samples[0])
    rss = report["rss_mb"]
    assert rss["idle_before"] > 0 and rss["end"] > 0 and isinstance(rss["slope_mb_per_hour"], float)

    # Nothing left behind, nothing stuck.
    assert report["settled"], (report["at_rest_before"], report["at_rest_after"])
    assert report["leaked"]["left_behind"] == [], report["leaked"]
    assert report["server_unanswered_requests"] == 0
    assert report["leaked"]["fds"] <= 0 and report["leaked"]["sockets"] <= 0 and report["leaked"]["tasks"] <= 0
    assert report["stuck_calls"] == 0, report["stuck_call_ids"]
    assert (tmp_path / "soak" / "report.json").exists()
