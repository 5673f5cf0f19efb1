"""Telnyx end to end: simulated Telnyx media stream → real server → StepFun emulator; and the reordering."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import structlog
import websockets

from voicebot.simulator.caller import SimulatedCall
from voicebot.simulator.telnyx import TelnyxProtocol, simulate_call
from voicebot.telephony.base import Audio, CarrierOptions, ProtocolError, Started, Stopped
from voicebot.telephony.telnyx import REORDER_WINDOW, TelnyxSession

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, secret_in_env
from conftest import EN, until

TOKEN = "telnyx-stream-token-7f3a"

carrier_secret = secret_in_env("TELNYX_STREAM_TOKEN", TOKEN)


async def test_call_heard_both_ways_though_telnyx_delivers_out_of_order(stack, caller_en):
    protocols: list[TelnyxProtocol] = []

    async def shuffled(base_url, *, to, script, max_duration_s, **options):
        protocols.append(TelnyxProtocol(base_url, to=to, token=TOKEN, token_header=False, shuffle=0.2))
        return await SimulatedCall(protocols[0], script, max_duration_s=max_duration_s, **options).run()

    with structlog.testing.capture_logs() as logs:
        result = await conversation(stack, shuffled, caller_en)
    assert protocols[0].reordered > 50                               # Telnyx really did shuffle
    assert [e for e in logs if e["event"] == "carrier_protocol_error"] == []   # and the server put it right
    assert {size for _, size in result.media_received} == {160}     # 20 ms of PCMU per media message


async def test_barge_in_over_l16_16k_truncates_at_what_telnyx_played(stack, caller_en, caller_interrupt):
    result = await barge_in(stack, simulate_call, caller_en, caller_interrupt, encoding="L16", sample_rate=16000)
    assert {size for _, size in result.media_received} == {640}     # 20 ms of 16 kHz L16


async def test_stream_token_is_required_before_any_audio(stack, monkeypatch):
    assert await refused_before_audio(stack, simulate_call, token="wrong") == "401"        # upgrade header
    assert await refused_before_audio(stack, simulate_call, token="wrong", token_header=False) == "1008"
    assert await refused_before_audio(stack, simulate_call, token=None) == "1008"         # no token at all
    assert stack.emulator.sessions == []                                                 # no model session opened


async def test_a_refusal_echoed_by_the_carrier_is_logged_as_ours(stack):
    """A client that answers our 1008 with the same code, as RFC 6455 asks (websockets does; so do carriers):
    one media_stream_refused line with the reason, no carrier_protocol_error "peer closed with code 1008"."""
    url = stack.url.replace("http://", "ws://") + "/telnyx/media"
    start = {"event": "start", "sequence_number": "1", "stream_id": "s-1", "start": {
        "call_control_id": "v3:no-token", "from": "+15005550006", "to": EN,
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
    with structlog.testing.capture_logs() as logs:
        async with websockets.connect(url) as ws:           # no token header: the connected frame must carry it
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(json.dumps(start))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1008 and ws.close_reason == "unauthorized"
        await until(lambda: any(e["event"] == "media_stream_refused" for e in logs), what="the refusal logged")
        await asyncio.sleep(0.2)                             # the server's end of the connection is finished
    refusals = [e for e in logs if e["event"] == "media_stream_refused"]
    assert len(refusals) == 1, logs
    assert refusals[0]["kind"] == "auth" and refusals[0]["close_code"] == 1008
    assert "stream auth token missing or wrong" in refusals[0]["reason"]
    assert [e for e in logs if e["event"] == "carrier_protocol_error"] == []


async def test_malformed_messages_hurt_only_their_own_call(stack, caller_en):
    def media(seq, payload: str | None = None, raw: bytes = b"\x00\x01" * 160) -> str:
        body = {"track": "inbound", "chunk": "1", "timestamp": "0",
                "payload": base64.b64encode(raw).decode() if payload is None else payload}
        return json.dumps({"event": "media", "sequence_number": seq, "stream_id": "s-1", "media": body}
                          if seq is not None else {"event": "media", "stream_id": "s-1", "media": body})

    start = json.dumps({"event": "start", "sequence_number": "1", "stream_id": "s-1", "start": {
        "call_control_id": "v3:bad-call", "from": "+15005550006", "to": EN,
        "media_format": {"encoding": "L16", "sample_rate": 8000, "channels": 1}}})
    connected = json.dumps({"event": "connected", "version": "1.0.0"})
    first = [connected,
             media(None),                                                # media before start
             start,
             "{not json",
             media("2", payload="!!!not base64!!!"),
             json.dumps({"event": "dance", "stream_id": "s-1"}),
             json.dumps({"event": "media", "sequence_number": "3", "stream_id": "s-1"}),
             *[media(str(n)) for n in range(4, 30)]]
    second = [connected, start,
              media("2"),
              media("2"),                                                # repeated number
              media("x"),
              media("3", raw=b"\x00" * 161),                             # not whole 16-bit samples
              *[media(str(n)) for n in range(4, 30)]]
    await malformed_input(stack, simulate_call, caller_en, url=stack.url.replace("http", "ws") + "/telnyx/media",
                          headers={"x-telnyx-streaming-auth-token": TOKEN}, connections=[first, second],
                          expected=["media before start", "not JSON", "not valid base64", "unknown event 'dance'",
                                    "field 'media' missing", "late or repeated", "'x' is not a number",
                                    "161 bytes is not a whole number of samples"])


# -- the reordering itself, message by message ----------------------------------------------------------------

def _session() -> TelnyxSession:
    return TelnyxSession(lambda text: None, lambda data: None, expected_token=None, options=CarrierOptions())


def _numbered(seq: int, value: int | None = None, event: str = "media") -> str:
    if event != "media":
        return json.dumps({"event": event, "sequence_number": str(seq), "stream_id": "s", event: {}})
    pcm = np.full(160, value if value is not None else seq, dtype=">i2").tobytes()
    return json.dumps({"event": "media", "sequence_number": str(seq), "stream_id": "s",
                       "media": {"payload": base64.b64encode(pcm).decode()}})


def _start() -> str:
    return json.dumps({"event": "start", "sequence_number": "1", "stream_id": "s", "start": {
        "call_control_id": "c", "media_format": {"encoding": "L16", "sample_rate": 8000}}})


def _values(events) -> list[int]:
    return [int(e.pcm[0]) for e in events if isinstance(e, Audio)]


def test_media_is_put_back_in_sequence_order_even_around_start():
    session = _session()
    assert session.handle_text(_numbered(3)) == []                   # before start: held
    events = session.handle_text(_start())
    assert isinstance(events[0], Started) and _values(events) == []  # 2 is still missing
    assert _values(session.handle_text(_numbered(2))) == [2, 3]
    assert _values(session.handle_text(_numbered(5))) == []
    assert _values(session.handle_text(_numbered(4))) == [4, 5]
    with pytest.raises(ProtocolError, match="late or repeated"):
        session.handle_text(_numbered(4))


def test_a_lost_message_is_waited_for_only_a_window_and_stop_releases_the_rest():
    session = _session()
    session.handle_text(_start())
    released = []
    for seq in range(3, 3 + REORDER_WINDOW + 1):                      # 2 never comes
        released += _values(session.handle_text(_numbered(seq)))
    assert released == list(range(3, 3 + REORDER_WINDOW + 1))
    session.handle_text(_numbered(16))                               # 14, 15 missing: held
    events = session.handle_text(_numbered(17, event="stop"))
    assert _values(events) == [16] and isinstance(events[-1], Stopped)


def test_events_released_with_a_bad_message_are_not_lost():
    session = _session()
    session.handle_text(_numbered(3, 30))
    bad = json.loads(_numbered(2))
    bad["media"]["payload"] = "!!!"
    session.handle_text(json.dumps(bad))                             # held: start is missing
    with pytest.raises(ProtocolError, match="not valid base64"):
        session.handle_text(_start())                                # releases 2 (bad) and 3 (good)
    events = session.handle_text(_numbered(4, 40))                   # start and 3 come out with the next message
    assert isinstance(events[0], Started) and _values(events) == [30, 40]
