"""The server end of a WebSocket (RFC 6455) on a connection aiohttp has upgraded, without aiohttp's reader.

A carrier sends 50 small messages a second per call. aiohttp's ``WebSocketResponse`` hands each one to a
reader task through a queue: a task wake-up, a timeout context and a heartbeat reset per message. Here
aiohttp still parses the upgrade request, routes it and writes the ``101`` response, then hands every byte
of the connection to :class:`ServerWebSocket` (its payload-parser hook, ``RequestHandler.set_parser``):
frames are parsed in the socket's data callback and each message goes to the listener in the same loop
step; sends are written to the socket at once.

Server-side rules enforced (closing with the RFC's code and a reason): client frames must be masked,
no reserved bits (no extension is negotiated), known opcodes only, control frames unfragmented and
≤ 125 bytes, continuations only inside a fragmented message, text in valid UTF-8, messages no larger
than ``max_message_bytes`` (1009; the rest of such a message is read past, unused, until the peer's close
frame, so our close frame is not lost to a connection reset). Pings are answered; when the peer sends
nothing for ``heartbeat_s`` it is pinged, and without an answer within half that the connection is dropped.

What a peer cannot make us hold: one message (``max_message_bytes``) plus a frame header; and what it does
not read of ours beyond ``max_buffered_bytes`` ends the connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import struct
from collections import deque
from collections.abc import Callable

import structlog
from aiohttp import hdrs, web
from websockets.frames import apply_mask

log = structlog.get_logger("voicebot.wsserver")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Unsent bytes beyond which the peer counts as not reading and the connection is dropped. A carrier reads our
# audio as it plays (a few KB/s to 48 KB/s), and the kernel's socket buffers hold the first 16 KB to 4 MB of
# backlog before anything waits here: 256 KB more is 5 s (L16 24 kHz) to 20 s (μ-law in JSON) of bot audio the
# carrier has not taken, far beyond any playback buffer it keeps. Servers that send faster than real time
# (the StepFun emulator, unpaced) pass their own ``max_buffered_bytes``.
MAX_BUFFERED_BYTES = 256 * 1024
CLOSE_TIMEOUT_S = 2.0

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG, INTERNAL_ERROR = 1002, 1007, 1009, 1011
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

Listener = Callable[[str | bytes], None]


def handshake_problem(request: web.Request) -> str | None:
    """None when ``request`` is a valid WebSocket upgrade (RFC 6455 §4.2.1), else what is wrong with it."""
    if request.method != "GET":
        return f"method {request.method} (a WebSocket upgrade is a GET)"
    if request.headers.get(hdrs.UPGRADE, "").strip().lower() != "websocket":
        return "no 'Upgrade: websocket' header"
    if "upgrade" not in {token.strip().lower() for token in request.headers.get(hdrs.CONNECTION, "").split(",")}:
        return "no 'Connection: Upgrade' header"
    if request.headers.get(hdrs.SEC_WEBSOCKET_VERSION, "").strip() != "13":
        return "Sec-WebSocket-Version is not 13"
    key = request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return "Sec-WebSocket-Key is not 16 bytes"
    except binascii.Error:
        return "Sec-WebSocket-Key is not base64"
    return None


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.strip().encode() + _GUID).digest()).decode()


def _frame(first_byte: int, payload: bytes) -> bytes:
    """One unmasked server frame (servers never mask, §5.1)."""
    length = len(payload)
    if length < 126:
        return bytes((first_byte, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length) + payload
    return struct.pack("!BBQ", first_byte, 127, length) + payload


class ServerWebSocket:
    """One accepted WebSocket. ``listen`` sets where messages go (those read before wait for it); sends never
    block. ``problem`` says why the connection ended when it was not a clean close."""

    def __init__(self, transport: asyncio.Transport, *, protocol: str | None, max_message_bytes: int,
                 heartbeat_s: float | None, max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self.transport = transport
        self.protocol = protocol                 # the negotiated subprotocol
        self.close_code: int | None = None       # the peer's close code, once it sent one
        self.problem: str | None = None
        self.violation: int | None = None        # our close code when the peer broke the protocol or a limit
        self.refused_bytes: int | None = None    # the size of a message refused as over the limit (1009)
        self.response: web.StreamResponse | None = None   # the 101, for the aiohttp handler to return
        self._max = max_message_bytes
        self._max_buffered = max_buffered_bytes
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._listener: Listener | None = None
        self._pending: deque[str | bytes] = deque()
        self._input_done = False                 # a close frame or a violation: further bytes are ignored
        self._discarding = False                 # a message refused for its size: frames are read past, unused
        self._skip = 0                           # bytes of a discarded frame still to come
        self._close_sent = False
        loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._close_received: asyncio.Future[None] = loop.create_future()
        self._heartbeat_s = heartbeat_s
        self._ping_due = False
        self._heard = True                       # something arrived since the last heartbeat check
        self._heartbeat = loop.call_later(heartbeat_s, self._beat) if heartbeat_s else None

    @classmethod
    async def accept(cls, request: web.Request, *, protocols: tuple[str, ...] = (), max_message_bytes: int,
                     heartbeat_s: float | None = 30.0,
                     max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> "ServerWebSocket":
        """Answer the upgrade with 101 and take the connection over. Raises ``web.HTTPBadRequest`` (or 426
        for an unsupported version) naming what is wrong with a request that is no valid upgrade."""
        problem = handshake_problem(request)
        if problem is not None:
            if problem.startswith("Sec-WebSocket-Version"):
                raise web.HTTPUpgradeRequired(text=problem + "\n", headers={hdrs.SEC_WEBSOCKET_VERSION: "13"})
            raise web.HTTPBadRequest(text=f"not a WebSocket upgrade: {problem}\n")
        offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()]
        protocol = next((p for p in offered if p in protocols), None)
        headers = {hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "upgrade",
                   hdrs.SEC_WEBSOCKET_ACCEPT: accept_key(request.headers[hdrs.SEC_WEBSOCKET_KEY])}
        if protocol is not None:
            headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = protocol
        response = web.StreamResponse(status=101, headers=headers)
        response.force_close()
        await response.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost during the WebSocket handshake")
        ws = cls(transport, protocol=protocol, max_message_bytes=max_message_bytes, heartbeat_s=heartbeat_s,
                 max_buffered_bytes=max_buffered_bytes)
        ws.response = response
        request.protocol.set_parser(ws)   # every later byte of the connection comes to feed_data
        return ws

    # -- state ----------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """No more messages will be sent or read (a close frame went either way, or the socket is gone)."""
        return self._close_sent or self._input_done or self._lost.done()

    def listen(self, listener: Listener) -> None:
        self._listener = listener
        while self._pending and self._listener is listener:
            listener(self._pending.popleft())

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost)

    def ignore_input(self) -> None:
        """Read nothing more from the peer, close frames and pings included: a peer gone deaf (the StepFun
        emulator's fault injection). The connection's end is still noticed."""
        self._input_done = True
        self._buffer = b""

    # -- sending --------------------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        self._send(0x81, text.encode())

    def send_bytes(self, data: bytes) -> None:
        self._send(0x82, bytes(data))

    def _send(self, first_byte: int, payload: bytes) -> None:
        transport = self.transport
        if self._close_sent or transport.is_closing():
            return    # closing: the reader side ends the session
        transport.write(_frame(first_byte, payload))
        if transport.get_write_buffer_size() > self._max_buffered:
            self._drop(f"peer is not reading ({transport.get_write_buffer_size()} bytes unsent)")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, wait (≤ 2 s) for the peer's, then close the connection. Safe to call twice."""
        if not self._close_sent and not self.transport.is_closing():
            self._send_close(code, reason)
        if not self._close_received.done() and not self._lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._close_received), CLOSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
        self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.transport.abort()

    def _send_close(self, code: int, reason: str = "") -> None:
        payload = struct.pack("!H", code) + reason.encode()[:123]
        self.transport.write(_frame(0x88, payload))
        self._close_sent = True

    def _fail(self, code: int, problem: str) -> None:
        """A protocol violation by the peer: close with ``code`` and stop reading (§7.1.7)."""
        if self.problem is None:
            self.problem = problem
        if self.violation is None and code != INTERNAL_ERROR:     # INTERNAL_ERROR: our bug, not the peer's
            self.violation = code
        self._input_done = True
        if not self._close_sent and not self.transport.is_closing():
            self._send_close(code, problem[:100])
        self.transport.close()

    def _refuse_too_big(self, size: int) -> None:
        """Close with 1009 and read on, discarding, until the peer's close frame (or CLOSE_TIMEOUT_S): closing
        the socket with the rest of a large message unread makes the kernel answer with a reset, which destroys
        our close frame before the peer reads it."""
        problem = f"message of {size} bytes is over the {self._max}-byte limit"
        if self.problem is None:
            self.problem = problem
        if self.violation is None:
            self.violation = MESSAGE_TOO_BIG
            self.refused_bytes = size
        self._discarding, self._fragments, self._fragment_size = True, None, 0
        if not self._close_sent and not self.transport.is_closing():
            self._send_close(MESSAGE_TOO_BIG, problem[:100])
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._close_handshake_expired)

    def _close_handshake_expired(self) -> None:
        if not self._lost.done():
            self.transport.close()

    def _drop(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
        self._input_done = True
        self.transport.abort()

    def _beat(self) -> None:
        if self._lost.done():
            return
        if self._heard:
            self._heard, self._ping_due = False, False
            self._heartbeat = asyncio.get_running_loop().call_later(self._heartbeat_s, self._beat)
        elif self._ping_due:
            self._drop(f"no answer to a ping within {self._heartbeat_s / 2:g} s")
        else:
            self._ping_due = True
            self.transport.write(_frame(0x89, b"vb"))
            self._heartbeat = asyncio.get_running_loop().call_later(self._heartbeat_s / 2, self._beat)

    # -- aiohttp's payload-parser interface -------------------------------------------------------------
    def feed_eof(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self._close_received.done() and self.problem is None and not self._close_sent:
            self.problem = "connection closed without a close frame"
        self._input_done = True
        if not self._lost.done():
            self._lost.set_result(None)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._input_done:
            return False, b""
        self._heard = True
        if self._skip:       # the rest of a discarded frame (the buffer is empty meanwhile)
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        if self._buffer:
            data = self._buffer + data
        size, pos = len(data), 0
        while size - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length, head = second & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = (data[pos + 2] << 8) | data[pos + 3], pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
            if not second & 0x80:
                self._fail(PROTOCOL_ERROR, "client frame is not masked")
                break
            if first & 0x70:
                self._fail(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
                break
            if first & 0x08:   # a control frame
                if length > 125 or not first & 0x80:
                    self._fail(PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
                    break
            elif self._discarding or length + self._fragment_size > self._max:
                if not self._discarding:
                    self._refuse_too_big(length + self._fragment_size)
                end = head + 4 + length
                if end > size:
                    self._skip, pos = end - size, size
                    break
                pos = end
                continue
            end = head + 4 + length
            if end > size:
                break
            payload = apply_mask(data[head + 4:end], data[head:head + 4])
            pos = end
            self._frame_received(first & 0x80, first & 0x0F, payload)
            if self._input_done:
                break
        self._buffer = data[pos:] if pos < size and not self._input_done else b""
        return False, b""

    def _frame_received(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._fragments is not None:
                self._fail(PROTOCOL_ERROR, "a new message started inside a fragmented one")
            elif fin:
                self._deliver(opcode, payload)
            else:
                self._fragments, self._fragment_opcode, self._fragment_size = [payload], opcode, len(payload)
        elif opcode == OP_CONT:
            if self._fragments is None:
                self._fail(PROTOCOL_ERROR, "continuation frame outside a fragmented message")
                return
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if fin:
                message, self._fragments, self._fragment_size = b"".join(self._fragments), None, 0
                self._deliver(self._fragment_opcode, message)
        elif opcode == OP_PING:
            if not self._close_sent:
                self.transport.write(_frame(0x8A, payload))
        elif opcode == OP_PONG:
            self._ping_due = False
        elif opcode == OP_CLOSE:
            self._close_frame(payload)
        else:
            self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _close_frame(self, payload: bytes) -> None:
        code, reason = 1005, ""
        if len(payload) == 1:
            self._fail(PROTOCOL_ERROR, "close frame of 1 byte")
            return
        if payload:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "close reason is not UTF-8")
                return
            if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
                self._fail(PROTOCOL_ERROR, f"invalid close code {code}")
                return
        self.close_code = code
        if code not in (1000, 1001, 1005) and self.problem is None and not self._close_sent:   # not our close's echo
            self.problem = f"peer closed with code {code}" + (f" ({reason})" if reason else "")
        self._input_done = True
        self._close_received.set_result(None)
        if not self._close_sent:
            self._send_close(1000 if code == 1005 else code)
        self.transport.close()   # the server closes the TCP connection first (§7.1.1)

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                message: str | bytes = payload.decode()
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "text message is not valid UTF-8")
                return
        else:
            message = payload
        listener = self._listener
        if listener is None:
            self._pending.append(message)
            return
        try:
            listener(message)
        except Exception:   # a bug handling one message ends this connection, never the server
            log.exception("websocket_listener_failed")
            self._fail(INTERNAL_ERROR, "internal error")
