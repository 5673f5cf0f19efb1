"""``voicebot serve --workers N``: processes sharing one port, tokens valid across them, clean stop, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from voicebot.config import ConfigError, check_serving, load_settings
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.telephony import twilio_auth

from conftest import until
from metrics_scrape import scrape

REPO = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "workers-test-auth-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
dialplans: {REPO / "dialplans"}
transcripts_dir: {tmp_path / "transcripts"}
logging: {{format: json, level: info}}
""")
    return config


def _serve(config: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("STEP_API_KEY", "VOICEBOT_STREAM_SECRET")}
    env["TWILIO_AUTH_TOKEN"] = AUTH_TOKEN
    # The log goes to a file (a pipe nobody reads until the end could fill up and stall the workers), opened
    # for appending so that the workers' lines never overwrite each other.
    log_file = open(config.parent / "server.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config), *args],
                            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    proc.log_path = config.parent / "server.log"
    log_file.close()
    return proc


async def _pids_answering(url: str, attempts: int) -> set[int]:
    pids = set()
    for _ in range(attempts):   # a new connection each time: SO_REUSEPORT spreads them over the workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(url + "/healthz") as response:
                pids.add((await response.json())["pid"])
    return pids


async def _wait_up(url: str, proc: subprocess.Popen, workers: int, timeout_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.log_path.read_text()[-3000:]
        try:
            pids = await _pids_answering(url, 20)
        except aiohttp.ClientError:
            pids = set()
        if len(pids) >= workers:
            return pids
        await asyncio.sleep(0.3)
    raise AssertionError(f"{workers} workers did not all answer within {timeout_s} s")


def _stop(proc: subprocess.Popen) -> tuple[int, list[dict]]:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = []
    for line in proc.log_path.read_text().splitlines():
        if line.startswith("{"):    # structlog's JSON lines (stdlib warnings, if any, are plain text)
            logs.append(json.loads(line))   # whole lines: the workers' lines never interleave
    return code, logs


async def test_calls_spread_over_workers_and_a_token_from_one_opens_the_stream_on_another(tmp_path, caller_en):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(_config(tmp_path, port), "--workers", "2")
    try:
        pids = await _wait_up(url, proc, workers=2)
        assert proc.pid not in pids and len(pids) == 2
        # The webhook and the media socket are separate connections, each on whichever worker the kernel
        # picks: with 12 calls, some tokens are checked by a worker that did not issue them (all 12 landing on
        # the worker that issued their token has a chance of 1 in 4096).
        results = await asyncio.gather(*(
            simulate_twilio_call(url, to="+15557650199", auth_token=AUTH_TOKEN, max_duration_s=20,
                                 stream_signature=None,     # the stream token alone must authorize it
                                 script=[Say(caller_en, after_bot_done=True, pause_s=0.3),
                                         Hangup(after_bot_done=True, pause_s=0.3)])
            for _ in range(12)))
    finally:
        code, logs = _stop(proc)
    for result in results:
        assert result.protocol_errors == []
        assert result.first_bot_audio_s is not None            # the stream was accepted and answered
        assert len(result.utterances) == 1 and result.end_reason == "hangup"
    assert code == 0
    summaries = [e for e in logs if e.get("event") == "call_summary"]
    assert len(summaries) == 12
    webhook_worker = {e["call_sid"]: e["worker"] for e in logs if e.get("event") == "twilio_call_incoming"}
    stream_worker = {e["call_sid"]: e["worker"] for e in summaries}
    assert len(webhook_worker) == 12 and webhook_worker.keys() == stream_worker.keys()
    crossed = [sid for sid in stream_worker if stream_worker[sid] != webhook_worker[sid]]
    assert crossed, "no call had its webhook and its stream on different workers"
    assert not [e for e in logs if e.get("event") in ("media_stream_refused", "worker_exited")]
    assert len(list((tmp_path / "transcripts").rglob("*.jsonl"))) == 12
    assert any(e.get("event") == "workers_stopped" for e in logs)


async def test_a_worker_that_dies_is_replaced_and_the_port_keeps_answering(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(_config(tmp_path, port), "--workers", "2")
    try:
        before = await _wait_up(url, proc, workers=2)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        after: set[int] = set()
        while time.monotonic() < deadline and not (len(after) == 2 and victim not in after):
            await asyncio.sleep(0.3)
            after = await _pids_answering(url, 20)
        assert victim not in after and len(after) == 2
    finally:
        code, logs = _stop(proc)
    assert code == 0
    exited = [e for e in logs if e.get("event") == "worker_exited"]
    assert len(exited) == 1 and exited[0]["pid"] == victim and exited[0]["exitcode"] == -signal.SIGKILL
    assert any(e.get("event") == "worker_restarted" for e in logs)


def test_workers_need_a_fixed_port(tmp_path):
    config = _config(tmp_path, 0)
    settings = load_settings(config, environ={"TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    check_serving(settings)                                  # one process may take any free port
    import dataclasses
    with pytest.raises(ConfigError, match="server.port"):
        check_serving(dataclasses.replace(settings, workers=2))
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config), "--workers", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workers" in proc.stderr and "1 or more" in proc.stderr


def test_a_configured_stream_secret_is_used_and_a_short_one_refused(monkeypatch):
    monkeypatch.setenv(twilio_auth.STREAM_SECRET_ENV, "s" * 32)
    issued = twilio_auth.StreamTokens(twilio_auth.stream_token_secret()).issue("CA1", "+1", "+2")
    assert twilio_auth.StreamTokens(("s" * 32).encode()).check(issued, "CA1", "+1", "+2") is None
    monkeypatch.setenv(twilio_auth.STREAM_SECRET_ENV, "short")
    with pytest.raises(ValueError, match="VOICEBOT_STREAM_SECRET is too short"):
        twilio_auth.stream_token_secret()
    monkeypatch.delenv(twilio_auth.STREAM_SECRET_ENV)
    assert twilio_auth.stream_token_secret() == twilio_auth.stream_token_secret()   # one key per server


async def _calls_by_worker(url: str, attempts: int = 30) -> dict[int, int]:
    """Each worker's running calls, as its /healthz says (new connections land on any worker)."""
    found: dict[int, int] = {}
    for _ in range(attempts):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(url + "/healthz") as response:
                body = await response.json()
                found[body["pid"]] = body["calls"]
    return found


async def test_one_scrape_sees_every_worker_and_a_dead_worker_stops_counting_as_active(tmp_path, caller_en):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(_config(tmp_path, port), "--workers", "2")
    held: list[asyncio.Task] = []
    try:
        pids = await _wait_up(url, proc, workers=2)
        # Ten calls at once: each lands on whichever worker the kernel picks (all on one: 1 chance in 512).
        calls = [asyncio.create_task(simulate_twilio_call(
            url, to="+15557650199", auth_token=AUTH_TOKEN, max_duration_s=30,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
            for _ in range(10)]
        await until(lambda: _active(url, 10), timeout=20, what="one scrape showing the 10 calls active")
        by_worker = await _calls_by_worker(url)
        assert by_worker.keys() == pids and sum(by_worker.values()) == 10
        assert all(by_worker.values()), f"every call landed on one worker: {by_worker}"
        results = await asyncio.gather(*calls)
        assert all(r.protocol_errors == [] and r.end_reason == "hangup" for r in results)
        await until(lambda: _active(url, 0), timeout=10, what="no call active")
        done = await scrape(url)       # one worker answers it, for both
        assert done.value("voicebot_calls_total") == 10
        assert done.value("voicebot_calls_total", carrier="twilio", outcome="completed") == 10
        assert done.value("voicebot_first_audio_seconds_count") == 10
        assert done.value("voicebot_turn_latency_seconds_count") >= 10

        # A worker killed with calls on it: its calls stop counting as active, its counters stay in the totals.
        held = [asyncio.create_task(simulate_twilio_call(url, to="+15557650199", auth_token=AUTH_TOKEN,
                                                         max_duration_s=40, script=[Hangup(at_s=30)]))
                for _ in range(4)]
        await until(lambda: _active(url, 4), timeout=20, what="the 4 held calls active")
        by_worker = await _calls_by_worker(url)
        victim = max(by_worker, key=by_worker.get)
        survivors = 4 - by_worker[victim]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: _active(url, survivors), timeout=15,
                    what=f"active calls down to the surviving worker's {survivors}")
        after = await scrape(url)
        assert after.value("voicebot_calls_total") == 10
        assert after.value("voicebot_first_audio_seconds_count") == 10
    finally:
        code, logs = _stop(proc)
        await asyncio.gather(*held, return_exceptions=True)
    assert code == 0
    summaries = [e for e in logs if e.get("event") == "call_summary"]
    assert len({e["worker"] for e in summaries}) == 2
    assert any(e.get("event") == "worker_exited" and e["pid"] == victim for e in logs)
    metrics_dir = next(e["path"] for e in logs if e.get("event") == "metrics_multiprocess_dir")
    assert not Path(metrics_dir).exists()       # removed when the server stopped


async def _active(url: str, expected: int) -> bool:
    return (await scrape(url)).value("voicebot_active_calls") == expected
