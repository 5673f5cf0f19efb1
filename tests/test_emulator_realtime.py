"""The StepFun emulator's realtime endpoint, spoken to as a raw protocol client (stepfun-api.md §1)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np
import pytest
import websockets

from voicebot.emulator import EMULATOR, Emulator, create_app, start_emulator
from voicebot.emulator import speech

MODEL = "stepaudio-2.5-realtime"
URL = f"/step_plan/v1/realtime?model={MODEL}"
AUTH = {"Authorization": "Bearer sk-test-key"}
SR = 24_000
FRAME = 480  # 20 ms at 24 kHz


# ---------------------------------------------------------------------------------------------- signals

def speech_like(seconds: float, *, f0: float = 140.0, seed: int = 1, level_dbfs: float = -20.0) -> np.ndarray:
    """Voiced, syllabic, telephone-band speech stand-in: built at 8 kHz, upsampled to 24 kHz, int16."""
    rng = np.random.default_rng(seed)
    n8 = int(seconds * 8000)
    t = np.arange(n8) / 8000
    pitch = f0 * (1.0 + 0.12 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))) * (1.05 - 0.1 * t / seconds)
    phase = 2 * np.pi * np.cumsum(pitch) / 8000
    formant_1 = 600 + 250 * np.sin(2 * np.pi * 2.1 * t)
    formant_2 = 1500 + 500 * np.sin(2 * np.pi * 1.7 * t + 1.0)
    x = np.zeros(n8)
    for k in range(1, int(3400 / f0)):
        freq = k * pitch
        gain = (1 / (1 + ((freq - formant_1) / 120) ** 2) + 0.5 / (1 + ((freq - formant_2) / 180) ** 2) + 0.05) / k
        x += gain * np.sin(k * phase + rng.uniform(0, 6))
    syllables = np.abs(np.sin(np.pi * 4.5 * t)) ** 0.5          # ~4.5 syllables per second
    edges = np.minimum(1.0, np.minimum(t, seconds - t) / 0.015)  # 15 ms on/off ramps
    x *= (0.25 + 0.75 * syllables) * edges
    x += 0.02 * rng.standard_normal(n8) * np.abs(x).max()
    t24 = np.arange(int(seconds * SR)) / SR
    y = np.interp(t24, t, x)
    y *= 32768 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(y ** 2))
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def line_noise(seconds: float, *, level_dbfs: float = -60.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 32768 * 10 ** (level_dbfs / 20)).astype(np.int16)


def b64(pcm: np.ndarray | bytes) -> str:
    raw = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else pcm
    return base64.b64encode(raw).decode()


def pcm_of(deltas: list[dict]) -> np.ndarray:
    return np.frombuffer(b"".join(base64.b64decode(d["delta"]) for d in deltas), dtype="<i2")


def dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) / 32768)


# ---------------------------------------------------------------------------------------------- client

class Client:
    """A raw realtime client over aiohttp's WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict] = []

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event))

    async def recv(self, timeout: float = 5.0) -> dict:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event = json.loads(msg.data)
        self.seen.append(event)
        return event

    async def expect(self, type: str, timeout: float = 5.0) -> dict:
        """Read until an event of ``type``; fail on an unexpected ``error``."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - time.monotonic()))
            if event["type"] == type:
                return event
            assert event["type"] != "error", event

    async def until(self, type: str, timeout: float = 5.0) -> list[dict]:
        """All events up to and including the first of ``type``."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - time.monotonic()))
            out.append(event)
            if event["type"] == type:
                return out

    async def update(self, **session) -> dict:
        await self.send({"type": "session.update", "session": session})
        return await self.expect("session.updated")

    async def stream(self, pcm: np.ndarray) -> None:
        for i in range(0, len(pcm), FRAME):
            await self.send({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + FRAME])})


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(speed=20.0)


@pytest.fixture
async def http(aiohttp_client, emulator):
    return await aiohttp_client(create_app(emulator))


@pytest.fixture
async def rt(http) -> Client:
    ws = await http.ws_connect(URL, headers=AUTH)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    yield client
    await ws.close()


VAD = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300, "energy_awakeness_threshold": 2500}


# ---------------------------------------------------------------------------------------------- handshake

async def test_handshake_created_then_updated_echo(http, emulator):
    ws = await http.ws_connect(URL, headers=AUTH)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    assert created["event_id"].startswith("evt_")
    session = created["session"]
    assert session["id"].startswith("sess_")
    assert session["object"] == "realtime.session"
    assert session["model"] == MODEL
    assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
    assert session["max_response_output_tokens"] == 4096
    for key in ("modalities", "instructions", "voice"):
        assert key in session

    updated = await client.update(modalities=["text", "audio"], instructions="You are a phone agent.",
                                  voice="wenrounansheng", input_audio_format="pcm16", output_audio_format="pcm16",
                                  turn_detection=VAD, input_audio_transcription={"model": "stepaudio-2.5-asr"})
    echoed = updated["session"]
    assert echoed["id"] == session["id"]
    assert echoed["voice"] == "wenrounansheng"
    assert echoed["instructions"] == "You are a phone agent."
    assert echoed["turn_detection"] == VAD
    assert "input_audio_transcription" not in echoed

    emu_session = await emulator.next_session()
    assert emu_session.id == session["id"] and emu_session.model == MODEL
    assert [e["type"] for _, e in emu_session.received] == ["session.update"]
    assert [e["type"] for e in emu_session.sent] == ["session.created", "session.updated"]
    await ws.close()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}])
async def test_missing_bearer_is_401_with_error_body(http, headers):
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(URL, headers=headers)
    assert exc.value.status == 401
    resp = await http.get(URL, headers=headers)
    assert resp.status == 401
    assert resp.headers["X-Trace-Id"]
    body = await resp.json()
    assert set(body["error"]) == {"message", "type"}


async def test_configured_key_must_match(http, emulator):
    emulator.api_key = "sk-right"
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(URL, headers={"Authorization": "Bearer sk-wrong"})
    assert exc.value.status == 401
    ws = await http.ws_connect(URL, headers={"Authorization": "Bearer sk-right"})
    assert (await Client(ws).recv())["type"] == "session.created"
    await ws.close()


@pytest.mark.parametrize("query", ["?model=step-audio-2", "?model=", ""])
async def test_unknown_model_refuses_upgrade(http, emulator, query):
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(f"/step_plan/v1/realtime{query}", headers=AUTH)
    assert exc.value.status == 400
    resp = await http.get(f"/step_plan/v1/realtime{query}", headers=AUTH)
    assert (await resp.json())["error"]["type"] == "request_params_invalid"
    assert emulator.sessions == []


async def test_every_response_has_trace_id_and_json_errors(http):
    resp = await http.get("/step_plan/v1/no-such-endpoint", headers=AUTH)
    assert resp.status == 404
    assert len(resp.headers["X-Trace-Id"]) >= 16
    assert "message" in (await resp.json())["error"]
    resp = await http.get(URL, headers=AUTH)  # right path, but not a WebSocket upgrade
    assert resp.status == 400 and resp.headers["X-Trace-Id"]


async def test_v1_prefix_and_real_port_with_websockets_client():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=50.0))
    try:
        assert emulator.port and emulator.ws_url.endswith("/step_plan/v1")
        for base in (emulator.ws_url, f"ws://127.0.0.1:{emulator.port}/v1"):
            async with websockets.connect(f"{base}/realtime?model={MODEL}", additional_headers=AUTH) as ws:
                assert ws.response.headers["X-Trace-Id"]
                created = json.loads(await ws.recv())
                assert created["type"] == "session.created"
                session = await emulator.next_session()
                assert session.id == created["session"]["id"]
                await ws.send(json.dumps({"type": "session.update", "event_id": "c1",
                                          "session": {"voice": "qingchunshaonv"}}))
                assert json.loads(await ws.recv())["type"] == "session.updated"
                got = await session.wait_event("session.update", timeout=1)
                assert got["event_id"] == "c1"
    finally:
        await runner.cleanup()


async def test_upgrade_with_an_unsupported_websocket_version_is_426_with_error_body(http, emulator):
    resp = await http.get(URL, headers={**AUTH, "Upgrade": "websocket", "Connection": "Upgrade",
                                        "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 426
    assert resp.headers["Sec-WebSocket-Version"] == "13" and resp.headers["X-Trace-Id"]
    error = (await resp.json())["error"]
    assert error["type"] == "request_params_invalid" and "Sec-WebSocket-Version" in error["message"]
    assert emulator.sessions == []


# ---------------------------------------------------------------------------------------------- the socket

async def test_websocket_violation_closes_with_its_code_and_ends_the_session(rt, emulator):
    await rt.ws.send_frame(b"\xff\xfe not utf-8", aiohttp.WSMsgType.TEXT)   # RFC 6455 §8.1: close 1007
    msg = await rt.ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert rt.ws.close_code == 1007
    session = emulator.sessions[0]
    await session.wait_closed(timeout=2)
    assert session.close_reason == "error: text message is not valid UTF-8"


async def test_message_over_the_size_limit_closes_1009(http, emulator, monkeypatch):
    from voicebot.emulator import realtime
    monkeypatch.setattr(realtime, "MAX_WS_MESSAGE", 4096)
    ws = await http.ws_connect(URL, headers=AUTH)
    client = Client(ws)
    await client.recv()
    await client.stream(np.zeros(FRAME, np.int16))   # small messages pass
    await client.send({"type": "input_audio_buffer.append", "audio": b64(np.zeros(4 * FRAME, np.int16))})
    msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert ws.close_code == 1009
    session = emulator.sessions[0]
    await session.wait_closed(timeout=2)
    assert session.appends == 1 and session.close_reason.startswith("error: message of ")


async def test_client_close_ends_the_session_with_its_code(rt, emulator):
    session = await emulator.next_session()
    await rt.ws.close(code=1000)
    await session.wait_closed(timeout=2)
    assert session.close_reason == "client closed (1000)"


async def test_unpaced_reply_streams_every_delta(rt, emulator):
    emulator.speed = 0.0
    await rt.send({"type": "response.create", "response": {"instructions": "Say exactly: " + "All good. " * 8}})
    events = await rt.until("response.done", timeout=10)
    assert events[-1]["response"]["status"] == "completed"
    expected = speech.synthesize_speech_bytes(("All good. " * 8).strip(), "linjiajiejie")
    assert pcm_of([e for e in events if e["type"] == "response.audio.delta"]).tobytes() == expected


async def test_long_call_without_recording_keeps_recent_audio_and_turns_intact():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=50.0, record=False))
    try:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"{emulator.ws_url}/realtime?model={MODEL}", headers=AUTH) as ws:
            client = Client(ws)
            await client.recv()
            await client.update(turn_detection=VAD)
            signal = np.concatenate([line_noise(12.0), speech_like(1.0), line_noise(0.8)])
            await client.stream(signal)
            events = await client.until("response.done", timeout=10)
            session = emulator.sessions[0]
            assert session.input_samples == len(signal)
            assert session.audio_in.held_samples < 11 * SR     # the first seconds are forgotten
            started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
            stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
            reply = pcm_of([e for e in events if e["type"] == "response.audio.delta"])
            first = (started["audio_start_ms"] - VAD["prefix_padding_ms"]) * 24
            assert np.array_equal(reply, signal[first:stopped["audio_end_ms"] * 24])
            assert sum(len(item.audio) for item in session.items) > 0
        await session.wait_closed(timeout=2)
        # closed: its counters stay, its audio goes at once (not when the cyclic collector reaches the session)
        assert session.input_samples == len(signal) and len(session.responses) == 1
        assert session.audio_in.held_samples == 0 and all(len(item.audio) == 0 for item in session.items)
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------- validation

BAD_EVENTS = [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ({"event_id": "e1"}, "missing_required_parameter", "type"),
    ({"type": "session.create"}, "unknown_event_type", "type"),
    ({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}, "invalid_value", "audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()},
     "invalid_value", "audio"),
    ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
    ({"type": "input_audio_buffer.append", "audio": 42}, "invalid_type", "audio"),
    ({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}},
     "invalid_value", "session.input_audio_format"),
    ({"type": "session.update", "session": {"output_audio_format": "pcm24"}},
     "invalid_value", "session.output_audio_format"),
    ({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad"}}},
     "invalid_value", "session.turn_detection.type"),
    ({"type": "session.update", "session": {"turn_detection": {"type": "server_vad",
                                                               "energy_awakeness_threshold": 6000}}},
     "invalid_value", "session.turn_detection.energy_awakeness_threshold"),
    ({"type": "session.update", "session": {"turn_detection": {"type": "server_vad",
                                                               "silence_duration_ms": "500"}}},
     "invalid_type", "session.turn_detection.silence_duration_ms"),
    ({"type": "session.update", "session": {"voice": "no-such-voice"}}, "invalid_value", "session.voice"),
    ({"type": "session.update", "session": {"speed": 1.2}}, "unknown_parameter", "session.speed"),
    ({"type": "session.update", "session": {"tool_choice": {"type": "function", "name": "x"}}},
     "invalid_event", "session.tool_choice"),
    ({"type": "session.update", "session": "voice=x"}, "invalid_type", "session"),
    ({"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 100},
     "missing_required_parameter", "item_id"),
    ({"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": -5},
     "invalid_value", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": 12.5},
     "invalid_type", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": 10},
     "item_not_found", "item_id"),
    ({"type": "conversation.item.delete", "item_id": "item_nope"}, "item_not_found", "item_id"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
                                                    "content": [{"type": "input_audio", "audio": ""}]}},
     "invalid_value", "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
                                                    "content": [{"type": "input_text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                    "content": [{"type": "text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}},
     "invalid_value", "item.content"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "robot",
                                                    "content": [{"type": "input_text", "text": "hi"}]}},
     "invalid_value", "item.role"),
    ({"type": "conversation.item.create", "previous_item_id": "item_nope",
      "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
     "item_not_found", "previous_item_id"),
    ({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "{}"}},
     "missing_required_parameter", "item.call_id"),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_server_vad", None),
    ({"type": "response.cancel"}, "response_cancel_not_active", None),
    ({"type": "response.create", "response": {"interrupt_current_response": True}},
     "unknown_parameter", "response.interrupt_current_response"),
]


async def test_bad_events_get_errors_and_the_session_stays_usable(rt, emulator):
    for n, (event, code, param) in enumerate(BAD_EVENTS):
        if isinstance(event, dict):
            event = dict(event, event_id=event.get("event_id", f"client_{n}"))
            await rt.send(event)
        else:
            await rt.ws.send_str(event)
        error = await rt.recv()
        assert error["type"] == "error", (event, error)
        assert error["event_id"].startswith("evt_")
        details = error["error"]
        assert details["type"] == "invalid_request_error"
        assert details["code"] == code, (event, details)
        assert details["message"]
        assert details.get("param") == param, (event, details)
        expected_id = event.get("event_id") if isinstance(event, dict) else None
        assert details["event_id"] == expected_id

    messages = {e["error"]["code"]: e["error"]["message"] for e in rt.seen if e["type"] == "error"}
    assert messages["input_audio_buffer_commit_server_vad"] == "commit when server vad"
    assert messages["response_cancel_not_active"] == "no ongoing response to cancel"

    await rt.ws.send_bytes(b"\x00\x01")
    assert (await rt.recv())["error"]["code"] == "invalid_event"

    # Nothing was applied by the rejected events; the session still works.
    updated = await rt.update(voice="jingdiannvsheng")
    assert updated["session"]["voice"] == "jingdiannvsheng"
    assert updated["session"]["input_audio_format"] == "pcm16"
    session = emulator.sessions[0]
    assert len(session.received) == len(BAD_EVENTS) + 2
    assert session.input_audio == b""


async def test_response_create_while_one_runs_is_rejected(rt):
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say exactly: " + "la " * 40}]}})
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    await rt.expect("response.created")
    await rt.send({"type": "response.create", "event_id": "again"})
    error = (await rt.until("error"))[-1]
    assert error["error"]["message"] == "ongoing response already exists"
    assert error["error"]["event_id"] == "again"
    done = await rt.expect("response.done", timeout=10)
    assert done["response"]["status"] == "completed"


# ---------------------------------------------------------------------------------------------- responses

async def test_greeting_text_item_streams_speech_and_transcript(rt, emulator):
    greeting = "Thanks for calling Acme Dental, how can I help?"
    await rt.update(voice="linjiajiejie", turn_detection=VAD)
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Say exactly: {greeting}"}]}})
    created = await rt.expect("conversation.item.created")
    assert created["item"]["role"] == "user" and created["item"]["object"] == "realtime.item"
    await rt.send({"type": "response.create"})
    events = await rt.until("response.done", timeout=10)

    kinds = [e["type"] for e in events]
    head = ["response.created", "response.output_item.added", "conversation.item.created",
            "response.content_part.added"]
    tail = ["response.audio.done", "response.audio_transcript.done", "response.content_part.done",
            "response.output_item.done", "response.done"]
    assert kinds[:4] == head and kinds[-5:] == tail
    assert set(kinds[4:-5]) == {"response.audio.delta", "response.audio_transcript.delta"}
    assert kinds[4] == "response.audio_transcript.delta"

    response_id = events[0]["response"]["id"]
    item_id = events[1]["item"]["id"]
    assert response_id.startswith("resp_") and item_id.startswith("item_")
    assert events[2]["item"]["role"] == "assistant" and events[2]["previous_item_id"] == created["item"]["id"]
    deltas = [e for e in events if e["type"] == "response.audio.delta"]
    assert all(d["response_id"] == response_id and d["item_id"] == item_id for d in deltas)
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
    assert transcript == greeting
    assert events[-4]["transcript"] == greeting

    audio = pcm_of(deltas)
    assert len(audio) == round(speech.speech_duration_s(greeting) * SR)
    assert abs(len(audio) / SR - 0.065 * len(greeting)) < 0.01
    assert -21.0 < dbfs(audio) < -19.0
    spectrum = np.abs(np.fft.rfft(audio.astype(float)))
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    assert spectrum[(freqs > 800) & (freqs < 3500)].sum() > 0.1 * spectrum[freqs < 800].sum()  # not a pure tone

    done = events[-1]["response"]
    assert done["status"] == "completed" and done["id"] == response_id
    assert done["output"][0]["content"][0] == {"type": "audio", "transcript": greeting}

    # Same text, same voice: same audio.
    session = emulator.sessions[0]
    assert session.items[-1].audio == audio.tobytes()


async def test_response_cancel_stops_deltas(rt, emulator):
    emulator.speed = 2.0
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "verbatim: " + "ha " * 60}]}})
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    first = await rt.expect("response.audio.delta")
    await rt.send({"type": "response.cancel"})
    events = await rt.until("response.done", timeout=5)
    kinds = [e["type"] for e in events]
    after_done = kinds[kinds.index("response.audio.done"):]
    assert "response.audio.delta" not in after_done
    assert after_done == ["response.audio.done", "response.audio_transcript.done", "response.content_part.done",
                          "response.output_item.done", "response.done"]
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["id"] == first["response_id"]
    assert done["output"][0]["status"] == "incomplete"
    with pytest.raises(asyncio.TimeoutError):
        await rt.recv(timeout=0.3)  # nothing more arrives
    sent_audio_ms = sum(len(base64.b64decode(e["delta"])) for e in [first] + events
                        if e["type"] == "response.audio.delta") / 48
    assert sent_audio_ms < 1000 < speech.speech_duration_s("ha " * 60) * 1000

    await rt.send({"type": "response.cancel"})
    assert (await rt.recv())["error"]["message"] == "no ongoing response to cancel"


async def test_truncate_checks_generated_audio(rt, emulator):
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say exactly: Hello there, friend."}]}})
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    events = await rt.until("response.done")
    item_id = events[1]["item"]["id"]
    generated_ms = len(pcm_of([e for e in events if e["type"] == "response.audio.delta"])) / 24

    await rt.send({"type": "conversation.item.truncate", "event_id": "t1", "item_id": item_id, "content_index": 0,
                   "audio_end_ms": int(generated_ms) + 500})
    error = await rt.recv()
    assert error["type"] == "error" and error["error"]["event_id"] == "t1"
    assert "longer than the audio" in error["error"]["message"]
    assert error["error"]["param"] == "audio_end_ms"

    await rt.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 1, "audio_end_ms": 10})
    assert (await rt.recv())["error"]["param"] == "content_index"

    user_item = emulator.sessions[0].items[0]
    await rt.send({"type": "conversation.item.truncate", "item_id": user_item.id, "content_index": 0,
                   "audio_end_ms": 0})
    assert (await rt.recv())["type"] == "error"  # only assistant audio can be truncated

    await rt.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 600})
    truncated = await rt.recv()
    assert truncated == {"type": "conversation.item.truncated", "event_id": truncated["event_id"],
                         "item_id": item_id, "content_index": 0, "audio_end_ms": 600}
    item = emulator.sessions[0].items[-1]
    assert item.truncated_ms == 600 and len(item.audio) == 600 * 48
    assert "Hello there, friend.".startswith(item.content[0]["transcript"])
    assert len(item.content[0]["transcript"]) < len("Hello there, friend.")


async def test_items_create_delete_and_text_only_reply(rt, emulator):
    await rt.update(modalities=["text"], turn_detection=None)
    await rt.send({"type": "conversation.item.create", "item": {
        "id": "msg_001", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}})
    assert (await rt.expect("conversation.item.created"))["item"]["id"] == "msg_001"
    await rt.send({"type": "conversation.item.create", "item": {
        "id": "msg_001", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}})
    assert (await rt.recv())["error"]["code"] == "duplicate_item_id"
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "text", "text": "好的，我记住了。"}]}})
    assert (await rt.expect("conversation.item.created"))["previous_item_id"] == "msg_001"
    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "你好！"}]}})
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    events = await rt.until("response.done")
    assert "response.audio.delta" not in [e["type"] for e in events]
    assert "".join(e["delta"] for e in events if e["type"] == "response.text.delta") == "你好！"
    await rt.send({"type": "conversation.item.delete", "item_id": "msg_001"})
    assert await rt.recv() == {"type": "conversation.item.deleted", "item_id": "msg_001",
                               "event_id": rt.seen[-1]["event_id"]}
    assert "msg_001" not in [i.id for i in emulator.sessions[0].items]


# ---------------------------------------------------------------------------------------------- audio in

async def test_server_vad_turn_timing_and_echo_reply(rt, emulator):
    await rt.update(turn_detection=VAD)
    voice = speech_like(1.5)
    signal = np.concatenate([line_noise(1.0), voice, line_noise(1.2)])
    await rt.stream(signal)
    events = await rt.until("response.done", timeout=10)
    kinds = [e["type"] for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.created",
             "conversation.item.input_audio_transcription.completed", "response.created"]
    firsts = [kinds.index(k) for k in order]
    assert firsts == sorted(firsts), kinds

    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    assert abs(started["audio_start_ms"] - 1000) <= 60, started
    assert abs(stopped["audio_end_ms"] - 2500) <= 60, stopped
    item_id = started["item_id"]
    assert stopped["item_id"] == item_id
    assert events[kinds.index("input_audio_buffer.committed")]["item_id"] == item_id
    user_item = events[kinds.index("conversation.item.created")]["item"]
    assert user_item["id"] == item_id and user_item["role"] == "user"
    assert user_item["content"][0]["type"] == "input_audio"
    asr = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    speech_s = (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000
    assert asr["transcript"] == f"(caller speech {speech_s:.2f} s)" and asr["content_index"] == 0

    # The reply plays the caller's own utterance back: prefix padding + speech.
    reply = pcm_of([e for e in events if e["type"] == "response.audio.delta"])
    first = started["audio_start_ms"] * 24 - 300 * 24
    assert np.array_equal(reply, signal[first:stopped["audio_end_ms"] * 24])
    assert abs(len(reply) / 24 - (1500 + 300)) <= 60
    transcript = events[kinds.index("response.audio_transcript.done")]["transcript"]
    assert transcript == f"You said something for {speech_s:.1f} seconds."
    assert events[-1]["response"]["status"] == "completed"

    session = emulator.sessions[0]
    assert bytes(session.input_audio) == signal.astype("<i2").tobytes()
    assert [e["type"] for _, e in session.received].count("input_audio_buffer.append") == -(-len(signal) // FRAME)


async def test_default_threshold_hears_phone_speech_but_not_line_noise(rt):
    # Defaults: server VAD, threshold 2500, silence 100 ms.
    await rt.stream(np.concatenate([line_noise(1.0, level_dbfs=-50), speech_like(0.8, f0=200, seed=3),
                                    line_noise(0.5, level_dbfs=-50)]))
    events = await rt.until("input_audio_buffer.speech_stopped")
    assert [e["type"] for e in events].count("input_audio_buffer.speech_started") == 1
    assert abs(events[0]["audio_start_ms"] - 1000) <= 60
    assert abs(events[-1]["audio_end_ms"] - 1800) <= 60


async def test_new_turn_cancels_a_reply_still_running(rt, emulator):
    emulator.speed = 1.0
    await rt.update(turn_detection=dict(VAD, silence_duration_ms=200))
    await rt.stream(np.concatenate([line_noise(0.3), speech_like(1.0), line_noise(0.3)]))
    first = await rt.expect("response.created")
    await rt.stream(np.concatenate([speech_like(0.5, seed=9), line_noise(0.3)]))
    done = await rt.expect("response.done")
    assert done["response"]["id"] == first["response"]["id"]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert (await rt.expect("response.created"))["response"]["id"] != first["response"]["id"]


async def test_manual_mode_commit_clear_and_audio_items(rt):
    await rt.update(turn_detection=None)
    await rt.send({"type": "input_audio_buffer.commit"})
    assert (await rt.recv())["error"]["code"] == "input_audio_buffer_commit_empty"
    await rt.stream(speech_like(0.4))
    await rt.send({"type": "input_audio_buffer.clear"})
    await rt.expect("input_audio_buffer.cleared")
    voice = speech_like(0.7, seed=5)
    await rt.stream(voice)
    await rt.send({"type": "input_audio_buffer.commit"})
    committed = await rt.expect("input_audio_buffer.committed")
    asr = await rt.expect("conversation.item.input_audio_transcription.completed")
    assert asr["item_id"] == committed["item_id"] and asr["transcript"] == "(caller speech 0.70 s)"
    await rt.send({"type": "response.create", "response": {"modalities": ["text", "audio"]}})
    events = await rt.until("response.done")
    assert np.array_equal(pcm_of([e for e in events if e["type"] == "response.audio.delta"]), voice)

    await rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(voice[:2400])}]}})
    created = await rt.expect("conversation.item.created")
    assert created["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert (await rt.recv())["transcript"] == "(caller speech 0.10 s)"


# ---------------------------------------------------------------------------------------------- faults

async def test_fault_refuse_upgrade(http, emulator):
    emulator.faults.refuse_realtime_status = 503
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(URL, headers=AUTH)
    assert exc.value.status == 503
    resp = await http.get(URL, headers=AUTH)
    assert resp.status == 503 and resp.headers["X-Trace-Id"]
    assert (await resp.json())["error"]["type"] == "server_error"
    emulator.faults.refuse_realtime_status = None
    ws = await http.ws_connect(URL, headers=AUTH)
    await ws.close()


async def test_fault_drop_after(http, emulator):
    emulator.faults.drop_realtime_after_s = 0.2
    ws = await http.ws_connect(URL, headers=AUTH)
    start = time.monotonic()
    assert json.loads((await ws.receive(timeout=1)).data)["type"] == "session.created"
    msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    assert 0.15 < time.monotonic() - start < 1.5
    session = emulator.sessions[0]
    await session.wait_closed(timeout=2)
    assert session.close_reason == "fault: dropped"


async def test_fault_error_event_then_session_continues(rt, emulator):
    emulator.faults.error_event_after_s = 0.1
    error = await rt.recv(timeout=2)
    assert error["type"] == "error"
    assert error["error"]["type"] == "server_error" and error["error"]["event_id"] is None
    assert (await rt.update(voice="qingchunshaonv"))["session"]["voice"] == "qingchunshaonv"
    with pytest.raises(asyncio.TimeoutError):
        await rt.recv(timeout=0.2)  # sent once


async def test_fault_response_delay(rt, emulator):
    emulator.faults.response_delay_s = 0.4
    await rt.send({"type": "response.create"})
    await rt.expect("response.created")
    start = time.monotonic()
    await rt.expect("response.content_part.added")
    assert time.monotonic() - start < 0.2
    await rt.expect("response.audio.delta")
    assert time.monotonic() - start >= 0.38


async def test_session_limit_sends_error_and_closes(http, emulator):
    emulator.session_limit_s = 0.3
    ws = await http.ws_connect(URL, headers=AUTH)
    client = Client(ws)
    await client.recv()
    error = await client.recv(timeout=2)
    assert error["type"] == "error" and error["error"]["code"] == "session_expired"
    msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1000


async def test_voice_is_frozen_after_audio(rt):
    await rt.send({"type": "response.create"})
    await rt.expect("response.done")
    await rt.send({"type": "session.update", "session": {"voice": "cixingnansheng"}})
    assert (await rt.recv())["error"]["code"] == "voice_locked"
    assert (await rt.update(voice="linjiajiejie"))["session"]["voice"] == "linjiajiejie"


def test_app_key_and_threshold_mapping():
    app = create_app()
    assert isinstance(app[EMULATOR], Emulator)
    assert speech.threshold_to_dbfs(2500) == -40.0
    assert speech.threshold_to_rms(0) < speech.threshold_to_rms(2500) < speech.threshold_to_rms(5000)


@pytest.mark.parametrize("chunk", [1, 239, 480, 2400, None])
def test_vad_events_do_not_depend_on_how_the_audio_is_cut(chunk):
    # turns with pauses, a short blip that is no onset, and a gap inside an onset
    signal = np.concatenate([line_noise(0.5), speech_like(0.8), line_noise(0.3), speech_like(0.02, seed=4),
                             line_noise(0.4), speech_like(0.02, seed=5), np.zeros(240, np.int16),
                             speech_like(1.0, seed=6), line_noise(0.6)])
    whole = speech.EnergyVAD(2500, 200).feed(signal)
    assert [e.kind for e in whole] == ["start", "stop", "start", "stop"]
    vad = speech.EnergyVAD(2500, 200)
    step = chunk or len(signal)
    pieces = [vad.feed(signal[i:i + step]) for i in range(0, len(signal), step)]
    assert [e for events in pieces for e in events] == whole
    assert vad.position == len(signal) // speech.BLOCK_SAMPLES * speech.BLOCK_SAMPLES


def test_input_audio_is_addressed_by_stream_position():
    from voicebot.emulator.realtime_events import InputAudio
    audio = InputAudio()
    assert audio.samples == 0 and audio.slice(0) == b""
    for i in range(5):
        audio.append(bytes([i, i]) * 3)          # 3 samples each
    assert audio.samples == 15 and audio.slice(4, 7) == b"\x01\x01" * 2 + b"\x02\x02"
    audio.keep_from(6)
    assert audio.base == 6 and audio.held_samples == 9 and audio.samples == 15
    assert audio.slice(0, 7) == b"\x02\x02" and audio.slice(12) == b"\x04\x04" * 3
    audio.append(b"\x05\x05")
    assert audio.held() == b"\x02\x02" * 3 + b"\x03\x03" * 3 + b"\x04\x04" * 3 + b"\x05\x05"
