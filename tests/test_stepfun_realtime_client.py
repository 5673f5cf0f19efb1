"""The StepFun realtime client (sans-I/O websockets on an asyncio transport) against the emulator and a bare server."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from aiohttp import web

from voicebot.emulator.app import Emulator, start_emulator
from voicebot.stepfun.errors import StepFunAuthError, StepFunUnavailable
from voicebot.stepfun.realtime import RealtimeConnection

from conftest import until

MODEL = "stepaudio-2.5-realtime"


@pytest.fixture
async def emulator():
    runner, emu = await start_emulator("127.0.0.1", 0, Emulator(speed=50.0, api_key="right-key", record=False))
    try:
        yield emu
    finally:
        await runner.cleanup()


async def test_session_events_appends_and_a_clean_close(emulator):
    conn = await RealtimeConnection.connect(emulator.ws_url, "right-key", MODEL, timeout_s=5)
    first = await asyncio.wait_for(conn.next_event(), 5)
    assert first["type"] == "session.created" and conn.session_id == first["session"]["id"]
    events, closed = [], []
    conn.listen(events.append, lambda: closed.append(conn.close_reason))
    conn.send({"type": "session.update", "session": {"voice": "lively-girl"}})
    pcm = np.zeros(480, dtype=np.int16)
    for _ in range(3):   # bytes, as the engine sends them, and str
        conn.send_raw(b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcm.tobytes()) + b'"}')
    conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()}))
    await until(lambda: any(e["type"] == "session.updated" for e in events) and emulator.sessions[0].appends == 4,
                what="session.updated and four appends")
    assert [e["type"] for e in events] == ["session.updated"]
    assert emulator.sessions[0].appends == 4 and emulator.sessions[0].errors_sent == 0
    await conn.close()
    assert closed == [conn.close_reason] and conn.close_reason
    await until(lambda: emulator.sessions[0].closed, what="the emulator to see the close")


async def test_a_refused_upgrade_is_a_typed_error_with_the_trace_id(emulator):
    with pytest.raises(StepFunAuthError) as caught:
        await RealtimeConnection.connect(emulator.ws_url, "wrong-key", MODEL, timeout_s=5)
    assert caught.value.status == 401 and caught.value.trace_id


async def test_nothing_listening_is_unavailable():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(StepFunUnavailable):
        await RealtimeConnection.connect(f"ws://127.0.0.1:{port}", "k", MODEL, timeout_s=2)


async def test_fragmented_messages_are_joined_and_a_server_close_is_reported():
    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"id": "sess_1"}}))
        # One event in three frames (text + two continuations), written raw (server frames are unmasked).
        text = json.dumps({"type": "response.audio_transcript.delta", "delta": "x" * 300}).encode()
        transport = request.transport
        for i, (opcode, part) in enumerate(((0x1, text[:100]), (0x0, text[100:200]), (0x0, text[200:]))):
            fin = 0x80 if i == 2 else 0
            transport.write(bytes([fin | opcode, len(part)]) if len(part) < 126 else
                            bytes([fin | opcode, 126]) + len(part).to_bytes(2, "big"))
            transport.write(part)
        await ws.close(code=1011, message=b"overloaded")   # written after the fragments: TCP keeps the order
        return ws

    app = web.Application()
    app.router.add_get("/realtime", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        conn = await RealtimeConnection.connect(f"ws://127.0.0.1:{port}", "k", MODEL, timeout_s=5)
        assert (await conn.next_event())["type"] == "session.created"
        closed = asyncio.get_running_loop().create_future()
        events = []
        conn.listen(events.append, lambda: closed.set_result(conn.close_reason))
        reason = await asyncio.wait_for(closed, 5)
        assert [e["type"] for e in events] == ["response.audio_transcript.delta"]
        assert events[0]["delta"] == "x" * 300
        assert reason == "closed by StepFun (code 1011, overloaded)"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_hand_built_text_frames_are_what_websockets_writes_and_a_server_reads_back(size):
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from voicebot.stepfun.realtime import MaskKeys, masked_text_frame

    payload = (('{"type":"input_audio_buffer.append","audio":"' + "QUJD" * size)[:size]).encode()
    key = MaskKeys().take()
    ours = masked_text_frame(payload, key)
    import secrets
    original, secrets.token_bytes = secrets.token_bytes, lambda n: key
    try:
        theirs = Frame(Opcode.TEXT, payload).serialize(mask=True)
    finally:
        secrets.token_bytes = original
    assert ours == theirs
    assert ours[-len(payload):] != payload or size == 0   # masked on the wire

    reader = StreamReader()          # websockets' own frame parser, as a server reads client frames
    reader.feed_data(ours)
    reader.feed_eof()
    parsing = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as parsed:
        next(parsing)
    frame = parsed.value.value
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload
    assert not reader.buffer         # nothing left over


def test_masking_keys_are_fresh_per_frame_and_refilled_from_the_os():
    from voicebot.stepfun.realtime import MaskKeys

    keys = MaskKeys(batch=4)
    drawn = [keys.take() for _ in range(4000)]
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 3990          # 32-bit random keys: repeats are rare, not systematic
