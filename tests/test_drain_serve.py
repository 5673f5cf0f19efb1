"""``voicebot serve`` in a process of its own, under real signals: SIGTERM drains a live Twilio call (refusing new
ones the carrier's way, /readyz failing at once) and exits 0 with the call's record, transcript and recording
written; SIGHUP reloads the dialplans; with --workers the supervisor passes both on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import aiohttp

from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.store import Store

from drain_checks import (DRAIN_LINE, GOODBYE, GREETING, assert_goodbye_heard_then_closed, media_upgrade_status,
                          persona, post_voice_webhook, readyz)
from metrics_scrape import scrape

REPO = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "drain-test-auth-token"
NEW_LINE = DRAIN_LINE[:-1] + "9"          # same length: the file's size does not change when it is swapped in


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """``voicebot serve`` of a config in ``folder`` (its dialplans, transcripts, recordings, SQLite there too),
    with no StepFun key (the embedded emulator answers) and no Twilio REST account (hang-ups are in-band)."""

    def __init__(self, folder: Path, *, drain_seconds: float, plan: str, workers: int = 1) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.plans = folder / "dialplans"
        self.plans.mkdir()
        (self.plans / "line.yaml").write_text(plan)
        self.database_url = f"sqlite:///{folder / 'voicebot.db'}"
        config = folder / "config.yaml"
        config.write_text(f"""
server: {{host: 127.0.0.1, port: {self.port}, public_url: "{self.url}", drain_seconds: {drain_seconds},
          workers: {workers}}}
dialplans: {self.plans}
transcripts_dir: {folder / "transcripts"}
recordings_dir: {folder / "recordings"}
database: {{url: "{self.database_url}"}}
logging: {{format: json, level: info}}
""")
        env = {k: v for k, v in os.environ.items()
               if k not in ("STEP_API_KEY", "STEPFUN_BASE_URL", "VOICEBOT_STREAM_SECRET", "VOICEBOT_DATABASE_URL",
                            "TWILIO_ACCOUNT_SID")}
        env["TWILIO_AUTH_TOKEN"] = AUTH_TOKEN
        self.log_path = folder / "server.log"
        with open(self.log_path, "a") as log:     # appended to: the workers' lines never overwrite each other
            self.proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config)],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if (await readyz(self.url))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"not ready within {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def logs(self, event: str | None = None) -> list[dict]:
        entries = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        return [e for e in entries if event is None or e.get("event") == event]

    async def calls_in_progress(self) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(self.url + "/healthz") as response:
                return (await response.json())["calls"]

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def swap_number_unnoticed(self) -> None:
        """Give the persona NEW_LINE instead of DRAIN_LINE with the file's size and modification time unchanged:
        the folder watch cannot see it, only SIGHUP reloads it."""
        path = self.plans / "line.yaml"
        before = path.stat()
        path.write_text(path.read_text().replace(DRAIN_LINE, NEW_LINE))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size


async def until_async(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sigterm_drains_a_live_call_then_the_process_exits_0_with_everything_written(tmp_path, caller_en):
    served = Served(tmp_path, drain_seconds=10, plan=persona(extra="record: true\n"))
    try:
        await served.wait_ready()
        call = asyncio.create_task(simulate_twilio_call(
            served.url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=60,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"), Hangup(at_s=55)]))
        await until_async(lambda: _is(served.calls_in_progress(), 1), 30, "the call in progress")
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        served.proc.send_signal(signal.SIGTERM)
        ready_status, ready_body = await readyz(served.url)
        webhook_status, twiml = await post_voice_webhook(served.url, AUTH_TOKEN)
        upgrade_status = await media_upgrade_status(served.url)
        during = await scrape(served.url)
        result = await call
        code = served.wait(60)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    log_text = served.log_path.read_text()[-4000:]
    assert code == 0, log_text
    # From the signal on: not ready, new calls refused the carrier's way and counted.
    assert ready_status == 503 and any(r.startswith("draining") for r in ready_body["reasons"])
    assert webhook_status == 200 and '<Reject reason="busy"/>' in twiml
    assert upgrade_status == 503
    assert during.value("voicebot_draining") == 1
    assert during.value("voicebot_stream_refusals_total", carrier="twilio", reason="draining") == 2
    assert [(e["carrier"], e["reason"]) for e in served.logs("call_refused")] == [("twilio", "draining")] * 2
    # The live call went on: the caller was answered after the signal, then heard the goodbye at drain_seconds.
    assert result.end_reason == "server_closed" and result.protocol_errors == [], result.timeline[-5:]
    signal_s, deadline_s = stopped - result.t0, stopped - result.t0 + 10
    question = result.utterances[0]
    assert signal_s < question.start_s
    reply = [s for s in result.segments if question.end_s < s.start_s < deadline_s]
    assert reply, f"no reply heard between the question and the deadline: {result.segments}"
    assert_goodbye_heard_then_closed(result, deadline_s)
    started, = served.logs("drain_started")
    finished, = served.logs("drain_finished")
    assert started["calls"] == 1 and started["drain_seconds"] == 10
    assert (finished["calls_ended_by_themselves"], finished["calls_ended_at_deadline"],
            finished["calls_ended_at_once"]) == (0, 1, 0)
    assert served.logs("voicebot_stopped") and not served.logs("record_after_writer_closed")
    # What it left behind: the record with its transcript, the transcript file, the recording.
    store = await Store.open(served.database_url)
    try:
        (summary,), _ = await store.list_calls()
        record = await store.get_call(summary.id)
    finally:
        await store.close()
    assert record.outcome == "drained" and record.carrier_call_id == result.call_id
    turns = [(t["role"], t["text"]) for t in record.transcript]
    assert turns[0] == ("assistant", GREETING) and turns[-1] == ("assistant", GOODBYE)
    assert ("user" in [role for role, _ in turns]) and len(turns) >= 4
    (transcript,) = (tmp_path / "transcripts").rglob(f"{record.id}.jsonl")
    assert json.loads(transcript.read_text().splitlines()[-1])["outcome"] == "drained"
    with wave.open(record.recording_path) as recording:
        assert recording.getnchannels() == 2
        assert recording.getnframes() / recording.getframerate() >= result.duration_s - 1


async def _is(value, expected) -> bool:
    return await value == expected


async def test_sighup_reloads_the_dialplans_and_a_bad_change_keeps_them(tmp_path):
    served = Served(tmp_path, drain_seconds=30, plan=persona(default=False))
    try:
        await served.wait_ready()
        assert '<Reject reason="rejected"/>' in (await post_voice_webhook(served.url, AUTH_TOKEN, to=NEW_LINE))[1]
        served.swap_number_unnoticed()
        await asyncio.sleep(2.5)           # the folder is looked at every second: it saw nothing
        assert '<Reject reason="rejected"/>' in (await post_voice_webhook(served.url, AUTH_TOKEN, to=NEW_LINE))[1]
        served.proc.send_signal(signal.SIGHUP)
        await until_async(lambda: _answers(served.url, NEW_LINE), 10, "the new number answered")
        # A bad change, on SIGHUP too: refused, naming file and field; the dialplans in use stay.
        staged = served.plans / "line.yaml.new"        # replaced in one step: never seen half written
        staged.write_text(persona(default=False, number=NEW_LINE, extra="barge_in: {enabled: maybe}\n"))
        os.replace(staged, served.plans / "line.yaml")
        served.proc.send_signal(signal.SIGHUP)
        await until_async(lambda: _logged(served, "dialplan_reload_rejected"), 10, "the change refused")
        assert await _answers(served.url, NEW_LINE)
        served.proc.send_signal(signal.SIGTERM)
        code = served.wait(60)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert code == 0
    reloads = served.logs("dialplans_reloaded")
    assert [(e["trigger"], e["changed"]) for e in reloads] == [("SIGHUP", ["drain-en"])]
    # Refused on SIGHUP, and maybe by the folder watch too (the file's time changed): every time the same way.
    rejected = served.logs("dialplan_reload_rejected")
    assert rejected and all(e["file"] == str(served.plans / "line.yaml") and e["field"] == "barge_in.enabled"
                            and "expected true/false" in e["problem"] and e["level"] == "error" for e in rejected)


async def _answers(url: str, number: str) -> bool:
    return "<Stream " in (await post_voice_webhook(url, AUTH_TOKEN, to=number))[1]


async def _logged(served: Served, event: str) -> bool:
    return bool(served.logs(event))


async def test_workers_reload_on_the_supervisors_sighup_and_drain_on_its_sigterm(tmp_path):
    served = Served(tmp_path, drain_seconds=3, plan=persona(default=False), workers=2)
    try:
        await served.wait_ready()
        await until_async(lambda: _logged_n(served, "voicebot_listening", 2), 30, "both workers listening")
        served.swap_number_unnoticed()
        served.proc.send_signal(signal.SIGHUP)
        await until_async(lambda: _logged_n(served, "dialplans_reloaded", 2), 10, "both workers reloaded")
        # Any worker may take a webhook: every one of them has the new number.
        assert all([await _answers(served.url, NEW_LINE) for _ in range(10)])
        call = asyncio.create_task(simulate_twilio_call(served.url, to=NEW_LINE, auth_token=AUTH_TOKEN,
                                                        max_duration_s=40, script=[Hangup(at_s=35)]))
        await until_async(lambda: _calls_anywhere(served), 30, "the call in progress")
        stopped = asyncio.get_running_loop().time()
        served.proc.send_signal(signal.SIGTERM)
        result = await call
        code = served.wait(60)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert code == 0
    assert len({e["worker"] for e in served.logs("dialplans_reloaded")}) == 2
    assert result.end_reason == "server_closed"
    assert all(s.end_s < stopped - result.t0 + 3 for s in result.segments[:1])     # the greeting, before
    assert_goodbye_heard_then_closed(result, stopped - result.t0 + 3)
    finished = served.logs("drain_finished")
    assert len(finished) == 2 and sum(e["calls_ended_at_deadline"] for e in finished) == 1
    assert served.logs("workers_stopped") and not served.logs("worker_killed")


async def _logged_n(served: Served, event: str, count: int) -> bool:
    return len(served.logs(event)) >= count


async def _calls_anywhere(served: Served) -> bool:
    return any([await served.calls_in_progress() for _ in range(6)])
