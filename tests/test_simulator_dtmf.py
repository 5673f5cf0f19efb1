"""The simulated caller presses keys and can be hung up by its carrier: checked on the wire against a tiny
recording server written here (every carrier), then through the real server."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from datetime import datetime

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from voicebot.audio.g711 import ulaw_encode
from voicebot.server import SERVICES
from voicebot.simulator import Hangup, Press, Say, SimulatedCall
from voicebot.simulator.asterisk import AsteriskProtocol
from voicebot.simulator.audiosocket import AudioSocketProtocol
from voicebot.simulator.exotel import ExotelProtocol
from voicebot.simulator.freeswitch import FreeSwitchProtocol
from voicebot.simulator.jambonz import JambonzProtocol
from voicebot.simulator.plivo import PlivoProtocol
from voicebot.simulator.signalwire import SignalWireProtocol
from voicebot.simulator.telnyx import TelnyxProtocol
from voicebot.simulator.twilio import TwilioProtocol
from voicebot.simulator.vonage import VonageProtocol
from voicebot.telephony.audiosocket import AudioSocketListener
from voicebot.telephony.base import CarrierOptions

from carrier_checks import transcript_of
from conftest import CARRIER_SECRETS, EN

TO = "+15550001111"
TOLERANCE_S = 0.04      # a message's arrival against its scripted time: two 20 ms ticks


class Recorder:
    """Every carrier's media endpoint, recording what arrives (time, message) and answering nothing; the
    Twilio and SignalWire voice webhooks answer TwiML pointing at it. An AudioSocket TCP listener too."""

    def __init__(self) -> None:
        self.play: np.ndarray | None = None   # bot audio a Twilio stream gets right after its start
        self.received: list[tuple[float, str | bytes]] = []
        self.t0: float | None = None          # the first message: the stream started
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        self.message = asyncio.Event()        # set at every message
        self.base_url = ""
        self.tcp_port = 0

    def app(self) -> web.Application:
        app = web.Application()
        for carrier in ("twilio", "signalwire"):
            app.router.add_post(f"/{carrier}/voice", functools.partial(self.voice, carrier))
        for carrier in ("twilio", "signalwire", "telnyx", "plivo", "exotel", "vonage", "jambonz", "asterisk"):
            app.router.add_get(f"/{carrier}/media", self.media)
        return app

    async def voice(self, carrier: str, request: web.Request) -> web.Response:
        url = self.base_url.replace("http://", "ws://") + f"/{carrier}/media"
        return web.Response(text=f'<Response><Connect><Stream url="{url}"/></Connect></Response>',
                            content_type="text/xml")

    def _record(self, message: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        if self.t0 is None:
            self.t0 = now
        self.received.append((now - self.t0, message))
        self.message.set()
        self.message = asyncio.Event()

    async def media(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("audio.jambonz.org", "media"))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._record(msg.data)
            if self.play is not None and msg.type == WSMsgType.TEXT and '"event":"start"' in msg.data:
                payload = base64.b64encode(ulaw_encode(self.play)).decode()
                await ws.send_json({"event": "media", "streamSid": json.loads(msg.data)["streamSid"],
                                    "media": {"payload": payload}})
        self._closed()
        return ws

    async def audiosocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(3)
                self._record(header + await reader.readexactly(int.from_bytes(header[1:], "big")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self._closed()
        writer.close()

    def _closed(self) -> None:
        self.closed_at = asyncio.get_running_loop().time() - (self.t0 or 0.0)
        self.closed.set()

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not any(predicate(m) for _, m in self.received):
                await self.message.wait()
        await asyncio.wait_for(wait(), timeout)

    def texts(self) -> list[tuple[float, dict | str]]:
        out = []
        for t, m in self.received:
            if isinstance(m, str):
                try:
                    out.append((t, json.loads(m)))
                except ValueError:
                    out.append((t, m))
        return out


@pytest.fixture
async def recorder(aiohttp_server):
    rec = Recorder()
    server = await aiohttp_server(rec.app())
    rec.base_url = str(server.make_url("")).rstrip("/")
    tcp = await asyncio.start_server(rec.audiosocket, "127.0.0.1", 0)
    rec.tcp_port = tcp.sockets[0].getsockname()[1]
    yield rec
    tcp.close()
    await tcp.wait_closed()


# Each carrier: how to build its simulated side against the recorder, and its DTMF message for a digit
# (everything that varies per message -- sequence numbers, stream ids, clocks -- is checked apart).
CARRIERS = {
    "twilio": (lambda rec: TwilioProtocol(rec.base_url, to=TO),
               lambda p, m, d: m == {"event": "dtmf", "streamSid": p.stream_id, "sequenceNumber": m["sequenceNumber"],
                                     "dtmf": {"track": "inbound_track", "digit": d}}),
    "signalwire": (lambda rec: SignalWireProtocol(rec.base_url, to=TO, codec="L16@16000h"),
                   lambda p, m, d: m == {"event": "dtmf", "streamSid": p.stream_id,
                                         "sequenceNumber": m["sequenceNumber"],
                                         "dtmf": {"track": "inbound_track", "digit": d}}),
    "telnyx": (lambda rec: TelnyxProtocol(rec.base_url, to=TO, shuffle=0.3),
               lambda p, m, d: m == {"event": "dtmf", "sequence_number": m["sequence_number"], "stream_id": p.stream_id,
                                     "occurred_at": m["occurred_at"], "dtmf": {"digit": d}}
               and datetime.fromisoformat(m["occurred_at"].replace("Z", "+00:00")).tzinfo is not None),
    "plivo": (lambda rec: PlivoProtocol(rec.base_url, to=TO),
              lambda p, m, d: m == {"event": "dtmf", "sequenceNumber": m["sequenceNumber"], "streamId": p.stream_id,
                                    "dtmf": {"track": "inbound", "digit": d, "timestamp": m["dtmf"]["timestamp"]}}
              and isinstance(m["sequenceNumber"], int) and m["dtmf"]["timestamp"].isdigit()),
    "exotel": (lambda rec: ExotelProtocol(rec.base_url, to=TO, password=None),
               lambda p, m, d: m == {"event": "dtmf", "sequence_number": m["sequence_number"], "stream_sid": p.stream_id,
                                     "dtmf": {"digit": d, "duration": "120"}}),
    "vonage": (lambda rec: VonageProtocol(rec.base_url, to=TO, authorization=None),
               lambda p, m, d: m == {"event": "websocket:dtmf", "digit": d, "duration": 120}),
    "jambonz": (lambda rec: JambonzProtocol(rec.base_url, to=TO, password=None),
                lambda p, m, d: m == {"event": "dtmf", "dtmf": d, "duration": 120}),
    "asterisk": (lambda rec: AsteriskProtocol(rec.base_url, to=TO, password=None),
                 lambda p, m, d: m == {"event": "DTMF_END", "channel_id": p.call_id, "digit": d}),
    "asterisk-plain": (lambda rec: AsteriskProtocol(rec.base_url, to=TO, password=None, control="plain-text"),
                       lambda p, m, d: m == f"DTMF_END digit:{d}"),
    "audiosocket": (lambda rec: AudioSocketProtocol(f"tcp://127.0.0.1:{rec.tcp_port}"),
                    lambda p, m, d: m == b"\x03\x00\x01" + d.encode()),
}


def dtmf_messages(carrier: str, rec: Recorder) -> list[tuple[float, dict | str | bytes]]:
    if carrier == "audiosocket":
        return [(t, m) for t, m in rec.received if m[0] == 0x03]
    return [(t, m) for t, m in rec.texts()
            if (m.get("event") in ("dtmf", "websocket:dtmf", "DTMF_END") if isinstance(m, dict)
                else m.startswith("DTMF_END"))]


def sequence_key(carrier: str) -> str | None:
    return {"twilio": "sequenceNumber", "signalwire": "sequenceNumber", "telnyx": "sequence_number",
            "plivo": "sequenceNumber", "exotel": "sequence_number"}.get(carrier)


@pytest.mark.parametrize("carrier", list(CARRIERS))
async def test_keys_go_out_in_the_carriers_dtmf_message_in_order_at_their_times(recorder, carrier):
    make, is_dtmf = CARRIERS[carrier]
    protocol = make(recorder)
    script = [Press("12#", at_s=0.3, gap_s=0.2, duration_ms=120, label="menu"),
              Press("*0", pause_s=0.1, gap_s=0.06, duration_ms=120), Hangup(pause_s=0.2)]
    result = await SimulatedCall(protocol, script, max_duration_s=5).run()

    assert result.end_reason == "hangup" and result.protocol_errors == []
    expected = [("1", 0.30), ("2", 0.50), ("#", 0.70), ("*", 0.80), ("0", 0.86)]
    sent = result.events("dtmf_sent")
    assert [e.detail for e in sent] == ["1 (menu)", "2 (menu)", "# (menu)", "*", "0"]
    assert [e.t for e in sent] == pytest.approx([t for _, t in expected], abs=0.021)   # whole ticks
    assert result.duration_s == pytest.approx(sent[-1].t + 0.2, abs=0.021)

    arrived = dtmf_messages(carrier, recorder)
    assert len(arrived) == len(expected)
    for (t, message), (digit, due) in zip(arrived, expected):
        assert is_dtmf(protocol, message, digit), message
        assert abs(t - due) < TOLERANCE_S, (digit, t, due)
    key = sequence_key(carrier)
    if key is not None:                  # numbered in the carrier's one sequence with the media around them
        numbers = sorted(int(m[key]) for _, m in recorder.texts() if isinstance(m, dict) and key in m)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


async def test_press_triggers_follow_what_the_caller_heard(recorder):
    """A key pressed over the bot, one after the bot finished, then two after a pause (Twilio)."""
    recorder.play = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype(np.int16)   # 1 s
    script = [Press("1", barge_after_bot_ms=300), Press("2", after_bot_done=True, pause_s=0.2),
              Press("34", pause_s=0.1, gap_s=0.1), Hangup(pause_s=0.3)]
    result = await SimulatedCall(TwilioProtocol(recorder.base_url, to=TO), script, max_duration_s=5).run()

    times = {e.detail: e.t for e in result.events("dtmf_sent")}
    heard = result.segments[0]
    assert heard.played_ms == pytest.approx(1000, abs=20)
    assert times["1"] == pytest.approx(heard.start_s + 0.3, abs=0.021)
    assert times["2"] == pytest.approx(heard.end_s + 0.2, abs=0.021)
    assert (times["3"], times["4"]) == pytest.approx((times["2"] + 0.1, times["2"] + 0.2), abs=0.021)
    assert result.duration_s == pytest.approx(times["4"] + 0.3, abs=0.021)
    arrived = [(t, m["dtmf"]["digit"]) for t, m in dtmf_messages("twilio", recorder)]
    assert [d for _, d in arrived] == ["1", "2", "3", "4"]
    assert all(abs(t - times[d]) < TOLERANCE_S for t, d in arrived)


def test_press_is_checked_and_refused_where_the_stream_has_no_dtmf():
    for bad in ("", "12x", "1 2"):
        with pytest.raises(ValueError, match="Press"):
            Press(bad)
    with pytest.raises(ValueError, match="choose one trigger"):
        Press("1", at_s=1.0, after_bot_done=True)
    with pytest.raises(ValueError, match="gap_s"):
        Press("12", gap_s=-0.1)
    for module in ("fork", "stream"):
        protocol = FreeSwitchProtocol("http://127.0.0.1:1", to=TO, module=module, secret=None)
        with pytest.raises(ValueError, match="freeswitch media stream carries no DTMF"):
            SimulatedCall(protocol, [Press("5")])
        words = (np.sin(2 * np.pi * 200 * np.arange(800) / 8000) * 8000).astype(np.int16)
        SimulatedCall(protocol, [Say(words), Hangup()])                    # without keys it is fine


# ---------------------------------------------------------------------------------------------- carrier ends

@pytest.mark.parametrize("carrier,closing", [
    ("twilio", lambda p, m: m == {"event": "stop", "sequenceNumber": m["sequenceNumber"], "streamSid": p.stream_id,
                                  "stop": {"accountSid": p.account_sid, "callSid": p.call_id}}),
    ("telnyx", lambda p, m: m["event"] == "stop" and m["stop"]["call_control_id"] == p.call_id),
    ("vonage", None),                                                  # Vonage just closes the socket
    ("audiosocket", lambda p, m: m == b"\x00\x00\x00"),
])
async def test_end_by_carrier_sends_the_closing_messages_and_closes(recorder, carrier, closing):
    protocol = CARRIERS[carrier][0](recorder)
    call = SimulatedCall(protocol, [Press("5", at_s=0.2), Hangup(at_s=10)], max_duration_s=20)
    task = asyncio.create_task(call.run())
    await recorder.wait_for(lambda m: m[:1] == b"\x03" if isinstance(m, bytes) else "dtmf" in m)
    ended_at = asyncio.get_running_loop().time() - recorder.t0
    call.end_by_carrier("REST hang-up (Status=completed)")
    call.end_by_carrier("a second request")                            # no effect
    result = await asyncio.wait_for(task, 2)
    await asyncio.wait_for(recorder.closed.wait(), 2)

    assert result.end_reason == "carrier_ended" and result.protocol_errors == []
    (event,) = result.events("carrier_ended")
    assert event.detail == "REST hang-up (Status=completed)"
    assert event.t == pytest.approx(ended_at, abs=0.03)
    assert result.duration_s - event.t < 0.03                          # at the next tick
    assert recorder.closed_at - ended_at < 0.06
    assert max(t for t, _ in recorder.received) - ended_at < 0.05     # nothing after the next tick
    last = recorder.received[-1][1]
    if closing is None:
        assert isinstance(last, bytes)                                 # audio, then the close: no message
    else:
        assert closing(protocol, json.loads(last) if isinstance(last, str) else last), last


async def test_end_by_carrier_before_the_stream_starts_ends_it_at_once(recorder):
    call = SimulatedCall(VonageProtocol(recorder.base_url, to=TO, authorization=None), [Hangup(at_s=5)])
    call.end_by_carrier("transferred before answer")
    result = await call.run()
    assert result.end_reason == "carrier_ended" and result.duration_s == 0.0
    assert [(e.t, e.detail) for e in result.events("carrier_ended")] == [(0.0, "transferred before answer")]


# ---------------------------------------------------------------------------------------------- real server

REAL = {
    "twilio": ("voicebot.simulator.twilio", {"auth_token": "test-twilio-auth-token-4c1d"}),
    "signalwire": ("voicebot.simulator.signalwire", {"signing_key": "test-signalwire-key"}),
    "telnyx": ("voicebot.simulator.telnyx", {"token": "test-telnyx-token", "shuffle": 0.3}),
    "plivo": ("voicebot.simulator.plivo", {"secret": "testPlivoSecret7"}),
    "exotel": ("voicebot.simulator.exotel", {"password": "test-exotel-password"}),
    "vonage": ("voicebot.simulator.vonage", {}),
    "jambonz": ("voicebot.simulator.jambonz", {}),
    "asterisk": ("voicebot.simulator.asterisk", {}),
}
SECRETS = {"SIGNALWIRE_SIGNING_KEY": "test-signalwire-key", "TELNYX_STREAM_TOKEN": "test-telnyx-token",
           "PLIVO_STREAM_SECRET": "testPlivoSecret7", "EXOTEL_STREAM_PASSWORD": "test-exotel-password",
           **CARRIER_SECRETS}


@pytest.fixture
def every_secret(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def real(every_secret, stack):
    return stack


@pytest.mark.parametrize("carrier", [*REAL, "audiosocket"])
async def test_the_server_takes_each_carriers_keys(real, carrier):
    script = [Press("4#", at_s=0.4, gap_s=0.2), Press("9", pause_s=0.1), Hangup(pause_s=0.4)]
    if carrier == "audiosocket":
        listener = AudioSocketListener(real.app[SERVICES], "127.0.0.1", 0, CarrierOptions(persona="test-en"))
        await listener.start()
        try:
            result = await SimulatedCall(AudioSocketProtocol(real.url, port=listener.port), script,
                                         max_duration_s=5).run()
        finally:
            await listener.stop()
    else:
        module, options = REAL[carrier]
        simulate_call = __import__(module, fromlist=["simulate_call"]).simulate_call
        result = await simulate_call(real.url, to=EN, script=script, max_duration_s=5, **options)
    assert result.end_reason == "hangup" and result.protocol_errors == []
    records = await transcript_of(real)
    assert records[0]["carrier"] == carrier
    assert [r["digit"] for r in records if r["type"] == "dtmf"] == ["4", "#", "9"]


async def test_a_carrier_end_reaches_the_server_as_the_carriers_stop(real):
    from voicebot.simulator.telnyx import TelnyxProtocol as Telnyx

    call = SimulatedCall(Telnyx(real.url, to=EN, token="test-telnyx-token"), [Hangup(at_s=10)], max_duration_s=20)
    task = asyncio.create_task(call.run())
    session = await real.emulator.next_session()
    await session.wait_sent("response.audio.delta")                     # the greeting is on its way
    call.end_by_carrier("transfer")
    result = await asyncio.wait_for(task, 3)
    assert result.end_reason == "carrier_ended" and result.protocol_errors == []
    records = await transcript_of(real)
    assert records[-1]["type"] == "call_end" and records[-1]["end_reason"] == "carrier: stop message"
    assert result.duration_s < 2
