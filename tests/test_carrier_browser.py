"""The browser softphone's socket end to end: simulated page (voicebot/simulator/browser.py) → real server → StepFun
emulator, through the same carrier checks as the phone carriers; and everything the socket refuses."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog
import websockets

from voicebot.simulator.browser import console_cookie, simulate_call
from voicebot.simulator.caller import Hangup, Say, StreamRefused
from voicebot.telephony.base import MarkPlayed, Stopped
from voicebot.telephony.browser import BrowserSession

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, secret_in_env, transcript_of
from conftest import PERSONAS
from metrics_scrape import delta, scrape

TOKEN = "test-console-token-5f0e"
admin_token = secret_in_env("VOICEBOT_ADMIN_TOKEN", TOKEN)


def stream_url(stack) -> str:
    return stack.url.replace("http://", "ws://") + "/console/phone/stream"


def page_headers(stack, token: str = TOKEN) -> dict[str, str]:
    return {"Cookie": console_cookie(token), "Origin": stack.url}


async def test_conversation_at_16k_with_the_call_shown_live(stack, caller_en):
    events: list[dict] = []
    result = await conversation(stack, simulate_call, caller_en, rate=16000, events=events)
    assert {size % 2 for _, size in result.media_received} == {0}
    assert max(size for _, size in result.media_received) > 640     # chunks of several frames, not 20 ms each
    # The page saw the call as it happened: both sides' turns in order, and the reply's latency.
    kinds = [e["type"] for e in events]
    assert kinds[0] == "call_start" and events[0]["carrier"] == "browser"
    assert [(e["role"]) for e in events if e["type"] == "turn"] == ["assistant", "user", "assistant"]
    latencies = [e["latency_ms"] for e in events if e["type"] == "turn_latency"]
    assert len(latencies) == 1 and 0 < latencies[0] < 3000


async def test_conversation_at_24k(stack, caller_en):
    result = await conversation(stack, simulate_call, caller_en, rate=24000)
    # 24 kHz both ways: the emulator got the caller's whole utterance (checked by conversation), and what the
    # page played came as 24 kHz 16-bit samples (48 bytes a millisecond).
    assert sum(size for _, size in result.media_received) >= 0.9 * result.bot_played_ms * 48


async def test_barge_in_truncates_at_what_the_page_played(stack, caller_en, caller_interrupt):
    events: list[dict] = []
    result = await barge_in(stack, simulate_call, caller_en, caller_interrupt, events=events)
    # Marks dropped by the clear were not echoed (that audio was never heard), and the page was told of it.
    assert any(m.cleared for m in result.marks)
    (barge,) = [e for e in events if e["type"] == "barge_in"]
    truncate = stack.emulator.sessions[0].received_of("conversation.item.truncate")[0]
    assert barge["heard"][0]["heard_ms"] == truncate["audio_end_ms"]


async def test_engine_chosen_by_the_page(stack, caller_en):
    await simulate_call(stack.url, engine="chain", max_duration_s=20,
                        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True,
                                                                                          pause_s=0.3)])
    records = await transcript_of(stack)
    assert records[0]["engine"] == "chain" and records[0]["persona"] == "test-en"
    assert stack.emulator.sessions == []          # no realtime session: the chain answered
    assert [r["role"] for r in records if r["type"] == "turn"] == ["assistant", "user", "assistant"]


async def test_persona_by_name(stack):
    events: list[dict] = []
    await simulate_call(stack.url, persona="test-zh", events=events, max_duration_s=3, script=[Hangup(at_s=1.5)])
    assert events[0]["persona"] == "test-zh"
    assert (await transcript_of(stack))[0]["persona"] == "test-zh"


async def refused_start(stack, **options):
    with structlog.testing.capture_logs() as logs:
        result = await simulate_call(stack.url, max_duration_s=3, script=[Hangup(at_s=2)], **options)
        await stack.idle()
    assert result.close_code == 1008 and result.media_received == []
    (refusal,) = [e for e in logs if e["event"] == "media_stream_refused"]
    return result.close_reason, refusal


async def test_unknown_persona_wrong_rate_and_unknown_engine_are_refused_saying_why(stack):
    before = await scrape(stack.url)
    told, refusal = await refused_start(stack, persona="nobody")
    assert told == "no persona for this call" and refusal["reason"] == "no persona named 'nobody'"
    told, refusal = await refused_start(stack, rate=8000)
    assert told == "sample rate 8000 not offered: use 16000 or 24000"
    assert "sample rate 8000 is not offered" in refusal["reason"]
    told, refusal = await refused_start(stack, engine="turbo")
    assert told == "engine must be one of realtime, chain, auto" and "'turbo'" in refusal["reason"]
    after = await scrape(stack.url)
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="browser", reason="protocol") == 2
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="browser", reason="no_persona") == 1
    assert stack.emulator.sessions == []


async def test_refused_without_the_console_cookie_or_from_another_site(stack):
    before = await scrape(stack.url)
    assert await refused_before_audio(stack, simulate_call, token=None) == "401"
    assert await refused_before_audio(stack, simulate_call, token="an-old-token") == "401"
    assert await refused_before_audio(stack, simulate_call, origin="https://evil.example") == "401"
    after = await scrape(stack.url)
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="browser", reason="auth") == 3
    assert stack.emulator.sessions == []


async def test_refused_while_the_console_is_off(stack, monkeypatch):
    monkeypatch.delenv("VOICEBOT_ADMIN_TOKEN")
    with structlog.testing.capture_logs() as logs, pytest.raises(StreamRefused) as refused:
        await simulate_call(stack.url, token=TOKEN, max_duration_s=3, script=[Hangup(at_s=2)])
    assert refused.value.status == 401
    (refusal,) = [e for e in logs if e["event"] == "media_stream_refused"]
    assert refusal["reason"] == "VOICEBOT_ADMIN_TOKEN is not set, so the console is off"


async def test_bad_input_hurts_only_its_own_call(stack, caller_en):
    start = json.dumps({"type": "start", "rate": 16000})
    await malformed_input(
        stack, simulate_call, caller_en, url=stream_url(stack), headers=page_headers(stack),
        connections=[[b"\x00" * 320, json.dumps({"type": "hello"}), start, b"\x01\x02\x03", "not json {",
                      json.dumps({"type": "mark"}), json.dumps({"type": "dance"}), *[b"\x00\x01" * 320] * 25]],
        expected=["binary audio of 320 bytes before the start message", "first message must be type 'start'",
                  "binary audio of 3 bytes is not a whole number", "frame is not JSON", "mark: field 'name' missing",
                  ])


async def test_oversized_message_closes_only_that_socket(stack, caller_en):
    good = asyncio.create_task(simulate_call(stack.url, max_duration_s=20, script=[
        Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
    with structlog.testing.capture_logs() as logs:
        async with websockets.connect(stream_url(stack), additional_headers=page_headers(stack),
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "rate": 16000}))
            await ws.send(b"\x00\x01" * 40_000)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1009
        result = await good
    assert [e for e in logs if e["event"] == "media_message_too_big"][0]["size"] >= 65536
    assert result.protocol_errors == [] and len([s for s in result.segments if s.played_ms > 500]) >= 2


def test_session_control_messages():
    sent: list[str] = []
    session = BrowserSession(sent.append, lambda data: None, query={"persona": "test-zh", "engine": "chain"})
    [started] = session.handle_text(json.dumps({"type": "start", "rate": 24000}))
    assert (started.meta.carrier, started.meta.persona, started.meta.engine) == ("browser", "test-zh", "chain")
    assert session.handle_text(json.dumps({"type": "mark", "name": "vb7"})) == [MarkPlayed("vb7")]
    assert isinstance(session.handle_text(json.dumps({"type": "hangup"}))[0], Stopped)
    session.send_mark("vb8"), session.send_clear(), session.send_hangup()
    assert [json.loads(s) for s in sent] == [{"type": "mark", "name": "vb8"}, {"type": "clear"}, {"type": "hangup"}]


def test_its_authentication_cannot_be_turned_off_and_the_socket_can(tmp_path):
    from voicebot.config import ConfigError, Settings
    from voicebot.dialplan import load_dialplan
    from voicebot.server import create_app

    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    base = dict(source=str(tmp_path / "config.yaml"), database_url=f"sqlite:///{tmp_path / 'v.db'}")
    with pytest.raises(ConfigError, match=r"carriers\.browser\.auth"):
        create_app(Settings(**base, carriers={"browser": {"auth": False}}), load_dialplan(plans))
    app = create_app(Settings(**base, carriers={"browser": {"enabled": False}}), load_dialplan(plans))
    assert "/console/phone/stream" not in {r.resource.canonical for r in app.router.routes() if r.resource}


HANGS_UP = """\
personas:
  - name: hangs-up
    default: true
    language: en
    voice: lively-girl
    instructions: |
      Test.
      On caller turn 1, say "Goodbye now." and call hang_up {}.
    greeting: Hello.
    tools: {hang_up: true}
"""


async def test_tool_calls_reach_the_page_and_the_bot_hangs_up_in_band(tmp_path, caller_en):
    from voicebot.emulator.app import Emulator, start_emulator

    from conftest import start_voice_server

    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "hangs-up.yaml").write_text(HANGS_UP, encoding="utf-8")
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator)
    events: list[dict] = []
    try:
        result = await simulate_call(settings.public_url, events=events, max_duration_s=20,
                                     script=[Say(caller_en, after_bot_done=True, pause_s=0.3)])
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()
    assert result.protocol_errors == [] and result.end_reason == "server_closed" and result.close_code == 1000
    (tool,) = [e for e in events if e["type"] == "tool"]
    assert tool["name"] == "hang_up" and tool["ok"] is True
    assert [e["type"] for e in events][-1] == "call_end" and events[-1]["outcome"] == "bot_hung_up"
    # The goodbye was heard in full before the socket closed.
    assert result.segments[-1].ended_by == "drained" and result.segments[-1].played_ms > 500
