"""Fuzzed frames over real connections into a running server, while a real call goes on beside them.

The parser-level fuzz tests (test_fuzz_carriers.py) feed sessions directly; this one goes through everything a
carrier's bytes meet: the HTTP upgrade and its authentication, the WebSocket frame reader, the stream runner
(voicebot/answer.py), the call and the StepFun emulator -- and for AudioSocket the TCP message reader. The server
and the emulator run on an event loop of their own thread, so hypothesis (which runs its examples one after
another, synchronously) can open one connection per example into the live server.

Each example is one connection of one carrier (Twilio through its signed webhook and stream token, Telnyx,
Plivo, Exotel, Vonage, jambonz, FreeSWITCH, Asterisk, AudioSocket, the console's softphone with its cookie): a
valid opening or none, then messages from the same strategies as the parser tests (real messages with fields
broken, broken JSON, random text and bytes).

Properties: every connection is accepted and ends either by our close or by the server's with a code the RFC
gives for what was wrong (1000 after a stop, 1002/1007/1009 for frames, 1008 for a refused stream) -- never
1011 (an internal error); nothing reaches the event loop's exception handler and nothing is logged at error
level; the call beside them, a Twilio call speaking real speech, hears its greeting and its reply without one
protocol error; afterwards every call has ended and the server still answers /healthz and /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import structlog
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.emulator import realtime_events, tool_calls
from voicebot.server import SERVICES
from voicebot.simulator.audiosocket import tlv
from voicebot.simulator.browser import console_cookie
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.l16 import basic_auth
from voicebot.simulator.twilio import parse_twiml_stream, simulate_twilio_call
from voicebot.telephony.audiosocket import AudioSocketListener
from voicebot.telephony.base import CarrierOptions
from voicebot.telephony.twilio_auth import compute_signature

from conftest import AUTH_TOKEN, CARRIER_SECRETS, EN, PERSONAS, start_voice_server
from fuzzing import dumps
from test_fuzz_carriers import KITS, audiosocket_messages, messages_for

TELNYX_TOKEN = "telnyx-fuzz-token-31c7"
PLIVO_SECRET = "plivoFuzzSecret4e1"
EXOTEL_PASSWORD = "exotel-fuzz-password-9a0b"
CONSOLE_TOKEN = "console-fuzz-token-62d4"
SERVER_CLOSE_CODES = {1000, 1002, 1007, 1008, 1009}     # what the server may close a fuzzed stream with
CALLER = "+15005550006"


@dataclass
class Live:
    """How to open one carrier's stream on the live server: path, credentials, and its opening."""

    kit: str                                   # its Kit in test_fuzz_carriers (the messages to break)
    path: str
    opening: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    subprotocols: list[str] | None = None


def _start(kit_name: str) -> dict:
    kit = next(kit for kit in KITS if kit.name == kit_name)
    return json.loads(kit.opening[-1])


def _telnyx_opening() -> list[str]:
    start = _start("telnyx")
    del start["start"]["client_state"]           # that would name a campaign attempt: refused on this server
    return [dumps({"event": "connected", "version": "1.0.0"}), dumps(start)]


def _exotel_opening() -> list[str]:
    start = _start("exotel")
    del start["start"]["client_state"]
    return [dumps({"event": "connected", "version": "1.0.0"}), dumps(start)]


LIVE = {
    "telnyx": Live("telnyx", "/telnyx/media", _telnyx_opening(), {"x-telnyx-streaming-auth-token": TELNYX_TOKEN}),
    "plivo": Live("plivo", f"/plivo/media/{PLIVO_SECRET}", [dumps(_start("plivo"))]),
    "exotel": Live("exotel", "/exotel/media", _exotel_opening(),
                   {"Authorization": basic_auth("exotel", EXOTEL_PASSWORD)}),
    "vonage": Live("vonage", "/vonage/media", [dumps(_start("vonage"))],
                   {"Authorization": f"Bearer {CARRIER_SECRETS['VONAGE_WS_TOKEN']}"}),
    "jambonz": Live("jambonz", "/jambonz/media", [dumps(_start("jambonz"))],
                    {"Authorization": basic_auth("voicebot", CARRIER_SECRETS["JAMBONZ_WS_PASSWORD"])},
                    ["audio.jambonz.org"]),
    "freeswitch": Live("freeswitch-fork", "/freeswitch/media", [dumps(_start("freeswitch-fork"))],
                       {"Authorization": basic_auth("voicebot", CARRIER_SECRETS["FREESWITCH_WS_SECRET"])},
                       ["audio.drachtio.org"]),
    "asterisk": Live("asterisk", f"/asterisk/media?to={EN.replace('+', '%2B')}", [dumps(_start("asterisk"))],
                     {"Authorization": basic_auth("asterisk", CARRIER_SECRETS["ASTERISK_WS_PASSWORD"])}, ["media"]),
    "browser": Live("browser", "/console/phone/stream", [dumps(_start("browser"))],
                    {"Cookie": console_cookie(CONSOLE_TOKEN)}),
}


class LiveServer:
    """The real server, the StepFun emulator and an AudioSocket listener on a loop in a thread of their own.
    Whatever reaches the loop's exception handler, and every log line at error level, is kept."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.unhandled: list[dict] = []
        self.loop.set_exception_handler(lambda loop, context: self.unhandled.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _start(self) -> None:
        from voicebot.emulator.app import Emulator, start_emulator

        self.emu_runner, self.emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
        plans = self.tmp_path / "dialplans"
        plans.mkdir()
        (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
        self.runner, self.settings, self.app = await start_voice_server(self.tmp_path, plans, self.emulator)
        self.url = self.settings.public_url
        self.audiosocket = AudioSocketListener(self.app[SERVICES], "127.0.0.1", 0, CarrierOptions(persona="test-en"))
        await self.audiosocket.start()

    async def _stop(self) -> None:
        await self.audiosocket.stop()
        await self.runner.cleanup()
        await self.emu_runner.cleanup()

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def calls(self):
        return self.app[SERVICES].calls


class ErrorRecords(logging.Handler):
    """Every stdlib log record at ERROR or above (aiohttp's "Error handling request", asyncio's tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- one fuzzed connection ------------------------------------------------------------------------------

async def twilio_opening(server: LiveServer, call_sid: str) -> tuple[str, list[str]]:
    """A Twilio stream as Twilio opens one: the voice webhook (signed) gives the stream URL and its token."""
    url = server.url + "/twilio/voice"
    form = {"CallSid": call_sid, "From": CALLER, "To": EN}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form,
                             headers={"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}) as resp:
            assert resp.status == 200, await resp.text()
            stream_url, params, _ = parse_twiml_stream(await resp.text())
    start = _start("twilio")
    start["start"].update(callSid=call_sid, customParameters=params)
    return stream_url, [dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), dumps(start)]


async def websocket_stream(server: LiveServer, carrier: str, opened: bool, messages: list[str | bytes]) -> int | None:
    """One connection: the opening (if ``opened``), the messages, then our close. The server's close code, None
    when ours ended it, 1006 when it ended without a close frame."""
    if carrier == "twilio":
        url, opening = await twilio_opening(server, "CA" + uuid.uuid4().hex)
        headers, subprotocols = {}, None
    else:
        live = LIVE[carrier]
        url, opening = server.url.replace("http://", "ws://") + live.path, live.opening
        headers, subprotocols = live.headers, live.subprotocols
    async with websockets.connect(url, additional_headers=headers, subprotocols=subprotocols, max_size=None,
                                  open_timeout=10, close_timeout=5) as ws:
        try:
            for message in (opening if opened else []) + messages:
                await ws.send(message)
            # The server answers a ping after acting on every message before it; a close it decided on is a task
            # that runs right after, so its close frame comes before the pong of a second ping.
            for _ in range(2):
                await asyncio.wait_for(await ws.ping(), 10)
        except websockets.ConnectionClosed:
            pass                      # the server ended it: its code is checked below
    rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if rcvd is None:
        return 1006                   # no close frame from the server: the connection was dropped
    return rcvd.code if sent is None or ws.protocol.close_rcvd_then_sent else None


async def audiosocket_stream(server: LiveServer, opened: bool, messages: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.audiosocket.port)
    try:
        if opened:
            writer.write(tlv(0x01, uuid.uuid4().bytes))
        for message in messages:
            writer.write(message)
        await writer.drain()
        await asyncio.sleep(0.01)
    except ConnectionError:
        pass                          # the server ended it (a hangup or a fatal message)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


KITS_BY_NAME = {kit.name: kit for kit in KITS}
CARRIERS = ["twilio", *LIVE, "audiosocket"]


def streams(carrier: str) -> st.SearchStrategy[tuple[bool, list]]:
    """One connection of ``carrier``: a valid opening first or not, then what a broken peer may send."""
    if carrier == "audiosocket":
        raw = st.binary(max_size=40)      # not cut where a message ends: the TCP reader must find its way
        return st.tuples(st.booleans(), st.lists(st.one_of(audiosocket_messages(), raw), max_size=6))
    kit = KITS_BY_NAME[LIVE[carrier].kit if carrier in LIVE else carrier]
    return st.tuples(st.booleans(), st.lists(messages_for(kit), max_size=6))


async def stream(server: LiveServer, carrier: str, opened: bool, messages: list) -> int | None:
    if carrier == "audiosocket":
        await audiosocket_stream(server, opened, messages)
        return None
    return await websocket_stream(server, carrier, opened, messages)


async def all_at_once(server: LiveServer, batch: dict[str, tuple[bool, list]]) -> dict[str, int | None]:
    codes = await asyncio.gather(*(stream(server, carrier, *sent) for carrier, sent in batch.items()))
    return dict(zip(batch, codes))


def test_fuzzed_streams_into_a_live_server_leave_the_call_beside_them_unharmed(tmp_path, caller_en, monkeypatch):
    for name, value in {**CARRIER_SECRETS, "TELNYX_STREAM_TOKEN": TELNYX_TOKEN, "PLIVO_STREAM_SECRET": PLIVO_SECRET,
                        "EXOTEL_STREAM_PASSWORD": EXOTEL_PASSWORD, "VOICEBOT_ADMIN_TOKEN": CONSOLE_TOKEN}.items():
        monkeypatch.setenv(name, value)
    for module in (realtime_events, tool_calls):    # the emulator's ids, drawn on the server's thread while
        monkeypatch.setattr(module, "random", random.Random(7))   # hypothesis watches the global random state
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    closes: dict[str, list[int | None]] = {}
    beside: list[int] = []            # per example: calls the server had open (the good one among them)
    try:
        with LiveServer(tmp_path) as server, structlog.testing.capture_logs() as logs:
            good = server.submit(simulate_twilio_call(
                server.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
                script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
            server.run(wait_for(lambda: server.calls, "the good call to start"))
            good_call = next(iter(server.calls))

            # Each example: one connection of every carrier at once, beside the good call. No per-example
            # deadline: nine connections and a live call share the machine (server.run bounds each at 30 s).
            @settings(max_examples=min(500, max(10, settings().max_examples // 2)), deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(batch=st.fixed_dictionaries({carrier: streams(carrier) for carrier in CARRIERS}))
            def fuzz(batch) -> None:
                codes = server.run(all_at_once(server, batch), timeout=30)
                for carrier, code in codes.items():
                    assert code is None or code in SERVER_CLOSE_CODES, (carrier, code, batch[carrier])
                    closes.setdefault(carrier, []).append(code)
                beside.append(good_call in server.calls)

            fuzz()
            result = good.result(60)
            server.run(wait_for(lambda: not server.calls, "every call to end", timeout=15))
            health, ready = server.run(statuses(server.url))
    finally:
        logging.getLogger().removeHandler(errors)

    assert server.unhandled == [], server.unhandled
    assert errors.records == [], [r.getMessage() for r in errors.records]
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []
    assert not [e for e in logs if e["event"] == "websocket_listener_failed"]
    assert sum(beside) >= 5, beside                                  # the good call was live meanwhile
    assert any(e["event"] == "carrier_protocol_error" for e in logs)  # the fuzz did reach the parsers
    assert result.protocol_errors == [] and result.end_reason == "hangup", (result.protocol_errors, result.end_reason)
    assert len(result.utterances) == 1
    assert len([s for s in result.segments if s.played_ms > 500]) >= 2      # greeting and reply heard
    assert (health, ready) == (200, 200)


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def statuses(url: str) -> tuple[int, int]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/healthz") as health, http.get(url + "/readyz") as ready:
            return health.status, ready.status
