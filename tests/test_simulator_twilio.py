"""The simulated Twilio caller, checked against a tiny fake server written here (not the product server)."""

from __future__ import annotations

import asyncio
import base64
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.audio.wav import read_wav_8k
from voicebot.simulator import CallSetupError, Hangup, Say, StreamRefused, simulate_twilio_call
from voicebot.telephony.twilio_auth import compute_signature

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "test-auth-token"


def tone(seconds: float, freq: float = 440.0, dbfs: float = -20.0) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (np.sin(2 * np.pi * freq * t) * 32768 * 10 ** (dbfs / 20) * np.sqrt(2)).astype(np.int16)


def b64_ulaw(pcm: np.ndarray) -> str:
    return base64.b64encode(ulaw_encode(pcm)).decode()


def rms_dbfs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return 20 * np.log10(max(np.sqrt(np.mean(x * x)), 1e-9) / 32768)


class FakeServer:
    """Answers the voice webhook with TwiML and speaks the server side of Media Streams.

    ``behaviour(server, ws)`` runs once ``start`` has arrived; everything the simulator sends is recorded
    with its arrival time in ``received``."""

    def __init__(self, behaviour=None, *, twiml: str | None = None, webhook_status: int = 200,
                 require_ws_signature: bool = False) -> None:
        self.behaviour = behaviour
        self.twiml = twiml
        self.webhook_status = webhook_status
        self.require_ws_signature = require_ws_signature
        self.webhook_form: dict[str, str] = {}
        self.webhook_signature_ok: bool | None = None
        self.ws_signature_ok: bool | None = None
        self.received: list[tuple[float, dict]] = []
        self.stream_sid: str | None = None
        self.t_start: float | None = None
        self.base_url = ""
        self.behaviour_task: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)
        return app

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/twilio/media"

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.webhook_form = dict(form)
        self.webhook_signature_ok = request.headers.get("X-Twilio-Signature") == compute_signature(
            TOKEN, str(request.url), self.webhook_form)
        twiml = self.twiml if self.twiml is not None else (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{self.stream_url}"><Parameter name="token" value="per-call-secret"/>'
            '<Parameter name="lang" value="en"/></Stream></Connect></Response>')
        return web.Response(status=self.webhook_status, text=twiml, content_type="text/xml")

    async def media(self, request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature")
        self.ws_signature_ok = signature == compute_signature(TOKEN, self.stream_url, {})
        if self.require_ws_signature and not self.ws_signature_ok:
            return web.Response(status=403, text="bad signature")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            obj = json.loads(msg.data)
            now = loop.time()
            self.received.append((now, obj))
            if obj["event"] == "start":
                self.stream_sid, self.t_start = obj["streamSid"], now
                if self.behaviour is not None:
                    self.behaviour_task = asyncio.create_task(self.behaviour(self, ws))
        if self.behaviour_task is not None:
            self.behaviour_task.cancel()
        return ws

    # helpers for behaviours
    def of(self, event: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.received if m["event"] == event]

    async def send_media(self, ws, pcm: np.ndarray) -> None:
        await ws.send_json({"event": "media", "streamSid": self.stream_sid, "media": {"payload": b64_ulaw(pcm)}})

    async def send_mark(self, ws, name: str) -> float:
        await ws.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        return asyncio.get_running_loop().time()


@pytest.fixture
def serve(aiohttp_server):
    async def start(server: FakeServer) -> FakeServer:
        running = await aiohttp_server(server.app())
        server.base_url = str(running.make_url("")).rstrip("/")
        return server
    return start


async def test_messages_have_twilios_shapes_and_pace(serve):
    server = await serve(FakeServer())
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Hangup(at_s=1.0)])
    # the webhook
    form = server.webhook_form
    assert set(form) == {"CallSid", "AccountSid", "From", "To", "CallStatus", "Direction", "ApiVersion"}
    assert form["CallSid"].startswith("CA") and len(form["CallSid"]) == 34
    assert form["AccountSid"].startswith("AC") and len(form["AccountSid"]) == 34
    assert (form["To"], form["From"], form["CallStatus"], form["Direction"], form["ApiVersion"]) == (
        "+15550001111", "+15005550006", "ringing", "inbound", "2010-04-01")
    assert server.webhook_signature_ok and server.ws_signature_ok

    events = [m["event"] for _, m in server.received]
    assert events[0] == "connected" and events[1] == "start" and events[-1] == "stop"
    assert set(events[2:-1]) == {"media"}
    assert server.received[0][1] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    start = server.received[1][1]
    sid = start["streamSid"]
    assert sid.startswith("MZ") and len(sid) == 34
    assert start == {"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": form["AccountSid"], "streamSid": sid, "callSid": form["CallSid"], "tracks": ["inbound"],
        "customParameters": {"token": "per-call-secret", "lang": "en"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}

    media = server.of("media")
    assert 48 <= len(media) <= 51
    noise = []
    for i, (_, m) in enumerate(media):
        assert set(m) == {"event", "sequenceNumber", "streamSid", "media"}
        assert set(m["media"]) == {"track", "chunk", "timestamp", "payload"}
        assert m["streamSid"] == sid and m["media"]["track"] == "inbound"
        assert m["sequenceNumber"] == str(i + 2)
        assert m["media"]["chunk"] == str(i + 1)
        assert m["media"]["timestamp"] == str(20 * i)
        raw = base64.b64decode(m["media"]["payload"], validate=True)
        assert len(raw) == 160
        noise.append(ulaw_decode(raw))
    noise = np.concatenate(noise)
    assert np.count_nonzero(noise) > len(noise) // 2, "line noise, not digital silence"
    assert -70 < rms_dbfs(noise) < -50

    # real-time pace: 20 ms apart on average, no bursts (loosely: loaded CI machines jitter)
    times = np.array([t for t, _ in media])
    span = times[-1] - times[0]
    assert 0.9 * 0.02 * (len(media) - 1) <= span <= 1.3 * 0.02 * (len(media) - 1)
    assert np.median(np.diff(times)) == pytest.approx(0.02, abs=0.006)

    stop = server.received[-1][1]
    assert stop == {"event": "stop", "sequenceNumber": str(len(media) + 2), "streamSid": sid,
                    "stop": {"accountSid": form["AccountSid"], "callSid": form["CallSid"]}}
    assert result.end_reason == "hangup" and result.protocol_errors == []
    assert result.call_id == form["CallSid"] and result.stream_id == sid
    assert len(result.sent) == len(result.heard) == 160 * len(media)


async def test_mark_echoed_only_after_the_audio_before_it_has_played(serve):
    sent_at: dict[str, float] = {}

    async def behaviour(server: FakeServer, ws) -> None:
        sent_at["early"] = await server.send_mark(ws, "early")  # nothing buffered: echoed at once
        for _ in range(4):
            await server.send_media(ws, tone(0.25))
        sent_at["after-1s"] = await server.send_mark(ws, "after-1s")

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Hangup(at_s=1.6)])
    echoes = {m["mark"]["name"]: t for t, m in server.of("mark")}
    assert set(echoes) == {"early", "after-1s"}
    for t, m in server.of("mark"):
        assert set(m) == {"event", "sequenceNumber", "streamSid", "mark"} and m["streamSid"] == server.stream_sid
    assert echoes["early"] - sent_at["early"] < 0.1
    waited = echoes["after-1s"] - sent_at["after-1s"]
    assert 0.98 <= waited <= 1.25, waited
    assert result.protocol_errors == []
    assert result.marks_echoed == 2
    # one contiguous segment of 1 s, drained; what was heard is the tone, aligned to the timeline
    assert len(result.segments) == 1
    seg = result.segments[0]
    assert seg.ended_by == "drained" and seg.played_ms == pytest.approx(1000)
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 0.1
    start = int(round(seg.start_s * 8000))
    assert rms_dbfs(result.heard[start: start + 8000]) == pytest.approx(-20, abs=1)
    assert not result.heard[:start].any() and not result.heard[start + 8000:].any()
    kinds = [e.kind for e in result.timeline]
    assert kinds.count("bot_audio_start") == kinds.count("bot_audio_stop") == 1


async def test_a_short_gap_is_an_underrun_inside_one_segment_a_long_one_a_pause(serve):
    async def behaviour(server: FakeServer, ws) -> None:
        loop = asyncio.get_running_loop()
        await server.send_media(ws, tone(0.5))
        await asyncio.sleep(0.6 - (loop.time() - server.t_start))       # 100 ms dry, then the rest
        await server.send_media(ws, tone(0.5))
        await asyncio.sleep(1.7 - (loop.time() - server.t_start))       # 600 ms dry: a pause
        await server.send_media(ws, tone(0.3))

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Hangup(at_s=2.4)])
    assert result.protocol_errors == []
    first, second = result.segments
    assert first.played_ms == pytest.approx(1000) and first.ended_by == "drained"
    assert first.end_s - first.start_s == pytest.approx(1.1, abs=0.045)
    assert second.played_ms == pytest.approx(300) and second.start_s - first.end_s > 0.5
    (underrun,) = result.underruns
    assert underrun.start_s == pytest.approx(first.start_s + 0.5, abs=0.001)
    assert underrun.gap_ms == pytest.approx(100, abs=45)
    assert underrun.loop_lag_ms < 50                                     # the server's gap, not a loop stall
    assert [e.kind for e in result.timeline].count("bot_audio_underrun") == 1


async def test_clear_empties_the_buffer_and_echoes_pending_marks_at_once(serve):
    cleared_at: list[float] = []

    async def behaviour(server: FakeServer, ws) -> None:
        await server.send_media(ws, tone(1.0))
        await server.send_mark(ws, "a")
        await server.send_media(ws, tone(2.0))
        await server.send_mark(ws, "b")
        await asyncio.sleep(0.5)
        await ws.send_json({"event": "clear", "streamSid": server.stream_sid})
        cleared_at.append(asyncio.get_running_loop().time())

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Hangup(at_s=1.5)])
    echoes = [(t, m["mark"]["name"]) for t, m in server.of("mark")]
    assert [name for _, name in echoes] == ["a", "b"]
    assert all(t - cleared_at[0] < 0.05 for t, _ in echoes)
    assert [m.cleared for m in result.marks] == [True, True]
    assert len(result.clears) == 1
    assert len(result.segments) == 1
    seg = result.segments[0]
    assert seg.ended_by == "clear"
    assert 400 <= seg.played_ms <= 620
    assert not result.heard[int(seg.end_s * 8000) + 1:].any()
    assert result.protocol_errors == []


async def test_invalid_server_messages_are_protocol_errors(serve):
    async def behaviour(server: FakeServer, ws) -> None:
        payload = b64_ulaw(tone(0.1))
        sid = server.stream_sid
        await ws.send_json({"event": "media", "streamSid": sid, "media": {"payload": payload, "track": "outbound"}})
        await ws.send_json({"event": "media", "streamSid": sid, "sequenceNumber": "1", "media": {"payload": payload}})
        await ws.send_json({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": payload}})
        await ws.send_json({"event": "media", "streamSid": sid, "media": {"payload": "not base64!"}})
        await ws.send_json({"event": "mark", "streamSid": sid})
        await ws.send_json({"event": "dance", "streamSid": sid})
        await ws.send_bytes(ulaw_encode(tone(0.1)))
        await ws.send_str("{not json")

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Hangup(at_s=0.5)])
    errors = result.protocol_errors
    assert len(errors) == 8, errors
    assert "extra ['track']" in errors[0] and "extra ['sequenceNumber']" in errors[1]
    assert "streamSid" in errors[2] and "base64" in errors[3] and "missing ['mark']" in errors[4]
    assert "unknown event 'dance'" in errors[5] and errors[6].startswith("31950") and "not JSON" in errors[7]
    assert all(e.startswith(("31950", "31951")) for e in errors)
    assert result.segments == [] and not result.heard.any()  # none of it was played
    assert len(result.events("protocol_error")) == 8


async def test_script_waits_for_the_bot_then_barges_in(serve):
    caller = tone(0.5, freq=300, dbfs=-20)

    async def behaviour(server: FakeServer, ws) -> None:
        loop = asyncio.get_running_loop()
        await server.send_media(ws, tone(1.0))  # greeting
        await asyncio.sleep(2.0 - (loop.time() - server.t_start))
        # a long answer, to be interrupted; its leading 0.3 s of silence does not count towards the barge
        await server.send_media(ws, np.concatenate([np.zeros(2400, np.int16), tone(3.0)]))
        seen = 0
        while True:  # crude VAD: clear once the caller talks over the answer
            await asyncio.sleep(0.01)
            loud = [m for t, m in server.of("media")[seen:] if t - server.t_start > 2.0
                    and rms_dbfs(ulaw_decode(base64.b64decode(m["media"]["payload"]))) > -35]
            seen = len(server.of("media"))
            if loud:
                await ws.send_json({"event": "clear", "streamSid": server.stream_sid})
                return

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(
        server.base_url, to="+15550001111", auth_token=TOKEN, max_duration_s=10,
        script=[Say(caller, after_bot_done=True, pause_s=0.3, label="question"),
                Say(caller, barge_after_bot_ms=400, label="interrupt"),
                Hangup(pause_s=0.4)])
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    question, interrupt = result.utterances
    greeting, answer = result.segments
    assert greeting.ended_by == "drained" and answer.ended_by == "clear"
    assert question.start_s == pytest.approx(greeting.end_s + 0.3, abs=0.021) and not question.barge
    assert question.end_s - question.start_s == pytest.approx(0.5, abs=0.021)
    assert interrupt.barge and interrupt.start_s == pytest.approx(answer.start_s + 0.3 + 0.4, abs=0.021)
    (reaction,) = result.barge_in_reaction_s
    assert reaction is not None and 0 < reaction < 0.2
    assert result.duration_s == pytest.approx(interrupt.end_s + 0.4, abs=0.021)
    # the caller's speech is in what it sent, where the timeline says
    s, e = int(question.start_s * 8000), int(question.end_s * 8000)
    assert rms_dbfs(result.sent[s:e]) == pytest.approx(-20, abs=1)
    text = result.format_timeline()
    for kind in ("stream_started", "bot_audio_first_heard", "caller_speech_start", "clear_received", "stopped"):
        assert kind in text


async def test_stereo_recording(serve, tmp_path):
    speech = read_wav_8k(FIXTURES / "caller_interrupt.wav")

    async def behaviour(server: FakeServer, ws) -> None:
        await server.send_media(ws, tone(0.6))

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+15550001111", auth_token=TOKEN,
                                        script=[Say(speech, after_bot_done=True, pause_s=0.2), Hangup()])
    path = tmp_path / "call.wav"
    result.write_wav(path)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == len(result.sent) == len(result.heard)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = frames[:, 0], frames[:, 1]
    (utt,) = result.utterances
    s = int(utt.start_s * 8000)
    assert np.array_equal(left, result.sent) and np.array_equal(right, result.heard)
    assert rms_dbfs(left[s: s + len(speech)]) > -25 and rms_dbfs(right[s: s + len(speech)]) < -90
    assert rms_dbfs(right[:4800]) > -25


async def test_setup_failures_are_named(serve):
    server = await serve(FakeServer(webhook_status=403))
    with pytest.raises(CallSetupError, match="HTTP 403"):
        await simulate_twilio_call(server.base_url, to="+1", auth_token=TOKEN, script=[Hangup()])

    server = await serve(FakeServer(twiml="<Response><Say>Sorry</Say><Hangup/></Response>"))
    with pytest.raises(CallSetupError, match=r"no <Connect><Stream>.*<Say>, <Hangup>"):
        await simulate_twilio_call(server.base_url, to="+1", auth_token=TOKEN, script=[Hangup()])

    server = await serve(FakeServer(require_ws_signature=True))
    with pytest.raises(StreamRefused) as refused:
        await simulate_twilio_call(server.base_url, to="+1", auth_token=TOKEN, script=[Hangup()],
                                   stream_signature=None)
    assert refused.value.status == 403


async def test_overridden_parameters_and_server_close(serve):
    async def behaviour(server: FakeServer, ws) -> None:
        await asyncio.sleep(0.2)
        await ws.close(code=1008, message=b"bad token")

    server = await serve(FakeServer(behaviour))
    result = await simulate_twilio_call(server.base_url, to="+1", auth_token=None, script=[Hangup(at_s=5)],
                                        custom_parameters={})
    assert server.received[1][1]["start"]["customParameters"] == {}
    assert server.webhook_signature_ok is False and server.ws_signature_ok is False  # no token: unsigned
    assert result.end_reason == "server_closed" and result.close_code == 1008
    assert result.duration_s < 1.0
    assert "stop" not in [m["event"] for _, m in server.received]


def test_wav_helpers(tmp_path):
    from voicebot.audio.wav import WavFormatError, read_wav, write_wav

    speech, rate = read_wav(FIXTURES / "caller_en.wav")
    assert rate == 8000 and speech.dtype == np.int16 and speech.ndim == 1
    write_wav(tmp_path / "stereo.wav", np.stack([speech, speech], axis=1), 8000)
    with pytest.raises(WavFormatError, match="stereo.wav: 2 channels"):
        read_wav(tmp_path / "stereo.wav")
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(8000), w.writeframes(b"\x80" * 80)
    with pytest.raises(WavFormatError, match="8-bit"):
        read_wav(tmp_path / "8bit.wav")
    # other rates come back at 8 kHz, same length, time-aligned (the resampler's delay is removed)
    t = np.arange(16000) / 16000
    write_wav(tmp_path / "16k.wav", (np.sin(2 * np.pi * 500 * t) * 8000).astype(np.int16), 16000)
    at_8k = read_wav_8k(tmp_path / "16k.wav")
    expected = np.sin(2 * np.pi * 500 * np.arange(8000) / 8000) * 8000
    assert len(at_8k) == 8000
    assert np.max(np.abs(at_8k[200:-200] - expected[200:-200])) < 80


async def test_marks_keep_their_order_when_the_buffer_just_drained():
    """Playback model without a network: a mark arriving while the last frame is still playing (buffer
    empty, an earlier mark pending) is queued behind the earlier one, not echoed ahead of it."""
    from voicebot.simulator import PlayAudio, QueueMark, SimulatedCall, TwilioProtocol

    class StubSocket:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send_nowait(self, message: str) -> None:
            self.sent.append(message)

    protocol = TwilioProtocol("http://unused", to="+1")
    call = SimulatedCall(protocol, [])
    call._loop, call._ws = asyncio.get_running_loop(), StubSocket()
    echoed = lambda: [json.loads(m)["mark"]["name"] for m in call._ws.sent]  # noqa: E731
    call._apply(PlayAudio(tone(0.02), 160), 0.0)
    call._apply(QueueMark("a"), 0.0)
    call._play_tick(0.0)  # the last 20 ms leave the buffer and play until t = 0.02
    call._apply(QueueMark("b"), 0.005)
    assert echoed() == []
    call._echo_marks(call._buffer.reached_marks(), 0.02, cleared=False)
    assert echoed() == ["a", "b"]
    call._apply(QueueMark("c"), 0.03)  # nothing queued at all: echoed at once
    assert echoed() == ["a", "b", "c"]
