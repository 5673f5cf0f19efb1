"""The server end of a WebSocket (voicebot/wsserver.py): what well-behaved clients get, and how each RFC 6455
violation by a client is answered. Clients here are a real aiohttp client and raw sockets writing frames
byte by byte."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import aiohttp
import pytest
from aiohttp import web

from voicebot.wsserver import ServerWebSocket, accept_key


def masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def echo_app(received: list, max_message_bytes: int = 1024, heartbeat_s: float | None = 30.0,
             protocols: tuple[str, ...] = ()) -> web.Application:
    """Echoes every message back; records what it got and why the connection ended."""
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await ServerWebSocket.accept(request, protocols=protocols, max_message_bytes=max_message_bytes,
                                          heartbeat_s=heartbeat_s)

        def on_message(message):
            received.append(message)
            if message == "bye":
                asyncio.ensure_future(ws.close(1000, "done"))
            elif message == "refuse":
                asyncio.ensure_future(ws.close(1008, "refused"))
            elif isinstance(message, str):
                ws.send_text(message)
            else:
                ws.send_bytes(message)

        ws.listen(on_message)
        try:
            await ws.wait_closed()
        finally:   # the test server cancels handlers whose connection is gone
            received.append(("ended", ws.close_code, ws.problem, ws.protocol))
        return ws.response

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


async def raw_connect(server, *, key: str | None = None, extra: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    key = key or base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert not second & 0x80, "server frames are never masked"
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first, await reader.readexactly(n)


async def close_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    first, payload = await read_frame(reader)
    assert first == 0x88, f"expected a close frame, got {first:#x}"
    code = struct.unpack("!H", payload[:2])[0]
    assert await asyncio.wait_for(reader.read(), 5) == b"", "the server closes the connection after its close"
    return code, payload[2:].decode()


async def test_echo_with_aiohttp_client_and_clean_close(aiohttp_client):
    received: list = []
    client = await aiohttp_client(echo_app(received, protocols=("audio.v1",)))
    async with client.ws_connect("/ws", protocols=("other", "audio.v1")) as ws:
        assert ws.protocol == "audio.v1"
        await ws.send_str('{"event":"media","media":{"payload":"AAAA"}}')
        assert (await ws.receive(timeout=5)).data == '{"event":"media","media":{"payload":"AAAA"}}'
        await ws.send_bytes(b"\x00\xff" * 500)   # two-byte length form
        assert (await ws.receive(timeout=5)).data == b"\x00\xff" * 500
        await ws.send_str("bye")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000 and msg.extra == "done"
    for _ in range(50):
        if received and isinstance(received[-1], tuple):
            break
        await asyncio.sleep(0.02)
    assert received[-1] == ("ended", 1000, None, "audio.v1")


async def test_upgrade_response_and_fragments_split_across_reads(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    reader, writer, head = await raw_connect(server, key=key)
    assert head.startswith(b"HTTP/1.1 101")
    assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head
    assert accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="   # RFC 6455 §1.3's example
    # a text message in three fragments with a ping between them, written one byte at a time
    data = (masked(0x1, "héllo ".encode(), fin=False) + masked(0x9, b"p1") + masked(0x0, b"wor", fin=False)
            + masked(0x0, b"ld"))
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()
    assert await read_frame(reader) == (0x8A, b"p1")              # the pong comes first, with the ping's data
    assert await read_frame(reader) == (0x81, "héllo world".encode())
    writer.write(masked(0x8, struct.pack("!H", 1000)))
    assert await close_reply(reader) == (1000, "")
    writer.close()
    assert received[0] == "héllo world"


@pytest.mark.parametrize("frame, code, problem", [
    (masked(0x1, b"hi", mask=False), 1002, "not masked"),
    (masked(0x1, b"hi", rsv=0x40), 1002, "reserved bits"),
    (masked(0x3, b"hi"), 1002, "unknown opcode"),
    (masked(0x9, b"x" * 126), 1002, "control frame"),
    (masked(0x9, b"x", fin=False), 1002, "control frame"),
    (masked(0x0, b"x"), 1002, "continuation"),
    (masked(0x1, b"a", fin=False) + masked(0x1, b"b"), 1002, "inside a fragmented"),
    (masked(0x1, b"\xff\xfe"), 1007, "UTF-8"),
    (masked(0x2, b"x" * 1025), 1009, "over the 1024-byte limit"),
    (masked(0x1, b"x" * 600, fin=False) + masked(0x0, b"x" * 600), 1009, "1200 bytes"),
    (masked(0x8, b"\x03"), 1002, "1 byte"),
    (masked(0x8, struct.pack("!H", 999)), 1002, "invalid close code"),
], ids=lambda value: "" if isinstance(value, bytes) else str(value))   # frames are randomly masked: no ids from them
async def test_violations_close_with_the_rfc_code_and_say_why(aiohttp_server, frame, code, problem):
    received: list = []
    server = await aiohttp_server(echo_app(received))
    reader, writer, _ = await raw_connect(server)
    writer.write(masked(0x1, b"before") + frame + masked(0x1, b"after"))
    assert await read_frame(reader) == (0x81, b"before")
    got_code, reason = await close_reply(reader)
    writer.close()
    assert got_code == code
    assert problem in reason
    for _ in range(50):
        if isinstance(received[-1], tuple):
            break
        await asyncio.sleep(0.02)
    assert received[0] == "before" and "after" not in received    # nothing after a violation is used
    assert problem in received[-1][2]


async def test_oversized_frame_is_refused_from_its_header(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received))
    reader, writer, _ = await raw_connect(server)
    writer.write(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 40) + os.urandom(4))   # no payload sent
    assert (await close_reply(reader))[0] == 1009
    writer.close()


async def ended(received: list) -> tuple:
    for _ in range(150):
        if received and isinstance(received[-1], tuple):
            break
        await asyncio.sleep(0.02)
    return received[-1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
async def test_a_large_message_is_answered_with_1009_the_client_reads(aiohttp_client, binary):
    """10 MB in one message, as a real client sends it: the client gets the 1009 close frame, not a reset (the
    server reads past the rest of the message instead of closing with it unread), and the close handshake ends."""
    received: list = []
    client = await aiohttp_client(echo_app(received, max_message_bytes=64 * 1024))
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        if binary:
            await ws.send_bytes(b"\x00\x01" * 5_000_000)
        else:
            await ws.send_str("x" * 10_000_000)
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1009 and "over the 65536-byte limit" in msg.extra
    code, problem, _ = (await ended(received))[1:]
    assert received[:1] == ["before"] and len(received) == 2
    assert problem == "message of 10000000 bytes is over the 65536-byte limit"


async def test_a_large_message_then_more_frames_then_the_close(aiohttp_server):
    """Frames after the refused message are read past unused; the peer's close ends the handshake at once."""
    received: list = []
    server = await aiohttp_server(echo_app(received, max_message_bytes=1024))
    reader, writer, _ = await raw_connect(server)
    big = bytes((0x82, 0x80 | 126)) + struct.pack("!H", 50_000) + b"\x00" * 4   # mask key 0: payload as is
    writer.write(big + b"\x07" * 20_000)       # the header and the first part of the payload
    first, payload = await read_frame(reader)
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 1009
    writer.write(b"\x07" * 30_000 + masked(0x1, b"after") + masked(0x8, struct.pack("!H", 1009)))
    assert await asyncio.wait_for(reader.read(), 1) == b""     # closed on the peer's close, not on a timeout
    writer.close()
    assert received[0] == ("ended", 1009, "message of 50000 bytes is over the 1024-byte limit", None)


async def test_our_own_close_echoed_by_the_peer_is_no_problem(aiohttp_server):
    """A close the server started (a refusal, 1008) and the peer answered with the same code is a clean end,
    not "peer closed with code 1008"."""
    received: list = []
    server = await aiohttp_server(echo_app(received))
    reader, writer, _ = await raw_connect(server)
    writer.write(masked(0x1, b"refuse"))
    first, payload = await read_frame(reader)
    assert (first, payload) == (0x88, struct.pack("!H", 1008) + b"refused")
    writer.write(masked(0x8, payload))          # the echo RFC 6455 §5.5.1 asks for
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert (await ended(received))[1:3] == (1008, None)


async def test_peer_close_code_is_reported(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received))
    reader, writer, _ = await raw_connect(server)
    writer.write(masked(0x8, struct.pack("!H", 4001) + b"carrier hung up"))
    assert await close_reply(reader) == (4001, "")
    writer.close()
    for _ in range(50):
        if received and isinstance(received[-1], tuple):
            break
        await asyncio.sleep(0.02)
    assert received[-1][1] == 4001 and "carrier hung up" in received[-1][2]


async def test_connection_dropped_without_close_frame(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received))
    reader, writer, _ = await raw_connect(server)
    writer.write(masked(0x1, b"x"))
    await read_frame(reader)
    writer.transport.abort()
    for _ in range(100):
        if isinstance(received[-1], tuple):
            break
        await asyncio.sleep(0.02)
    assert received[-1][2] == "connection closed without a close frame"


async def test_silent_peer_is_pinged_then_dropped(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received, heartbeat_s=0.2))
    reader, writer, _ = await raw_connect(server)
    first, payload = await asyncio.wait_for(read_frame(reader), 2)
    assert first == 0x89                      # a ping after 0.2 s of silence
    assert await asyncio.wait_for(reader.read(), 2) == b""   # no pong within 0.1 s: dropped
    writer.close()
    assert "no answer to a ping" in received[-1][2]


async def test_answered_ping_keeps_the_connection(aiohttp_server):
    received: list = []
    server = await aiohttp_server(echo_app(received, heartbeat_s=0.2))
    reader, writer, _ = await raw_connect(server)
    for _ in range(3):
        first, payload = await asyncio.wait_for(read_frame(reader), 2)
        assert first == 0x89
        writer.write(masked(0xA, payload))
    writer.write(masked(0x1, b"still here"))
    assert await read_frame(reader) == (0x81, b"still here")
    writer.close()


@pytest.mark.parametrize("headers, status, problem", [
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}, 400, "Sec-WebSocket-Key"),
    ({"Upgrade": "h2c", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 400, "Upgrade: websocket"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 426, "Version"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "c2hvcnQ="}, 400, "16 bytes"),
])
async def test_invalid_upgrades_are_refused_with_the_reason(aiohttp_client, headers, status, problem):
    received: list = []
    client = await aiohttp_client(echo_app(received))
    response = await client.get("/ws", headers=headers)
    assert response.status == status
    assert problem in await response.text()
    if status == 426:
        assert response.headers["Sec-WebSocket-Version"] == "13"
    assert received == []
