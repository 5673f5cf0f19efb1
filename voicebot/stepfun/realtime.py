"""Thin client for the StepFun realtime WebSocket (``/realtime?model=…``): connect, send, receive events.

A call sends one ``append`` per 20 ms frame and receives a stream of small events, so the per-message cost
matters more than anything else here. The connection therefore drives websockets' sans-I/O protocol
(``websockets.client.ClientProtocol``) on a plain asyncio transport: ``send`` frames and writes to the
socket at once (no queue, no writer task), and events are parsed in the socket's data callback and handed
to the listener in the same loop step (no reader task, no async generator per event). Where a proxy is
configured for the URL, websockets' own client is used instead (it knows proxies), behind the same API.
"""

from __future__ import annotations

import abc

import asyncio
import os
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable

import structlog
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Opcode, apply_mask
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .. import jsoncodec, latency
from .errors import StepFunError, StepFunUnavailable, error_for_status

log = structlog.get_logger("voicebot.stepfun")

MAX_EVENT_BYTES = 16 * 1024 * 1024   # one append may carry up to 15 MB
# Unsent data beyond which StepFun counts as not reading: the socket is dropped and the call fails over (or
# ends). A call appends 66.8 KB/s (20 ms at 24 kHz: 1 336 bytes a frame), so this is ~8 s of the caller's voice
# queued on top of what the kernel's socket buffers hold; the model would hear them seconds late, which is no
# conversation any more. It is what a hung StepFun can make a call hold here.
MAX_BUFFERED_BYTES = 512 * 1024
PING_INTERVAL_S = 20.0                # keepalive: a ping every 20 s, the pong due before the next one
CLOSE_TIMEOUT_S = 2.0

Listener = Callable[[dict], None]


class MaskKeys:
    """Client masking keys (RFC 6455 §5.3: unpredictable, from a strong source) drawn from the OS 1024 at a
    time: one getrandom call per frame was a measurable share of the per-append cost."""

    def __init__(self, batch: int = 1024) -> None:
        self._batch = batch * 4
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._pool):
            self._pool, self._next = os.urandom(self._batch), 0
        key = self._pool[self._next:self._next + 4]
        self._next += 4
        return key


def masked_text_frame(payload: bytes, key: bytes) -> bytes:
    """One unfragmented, masked client text frame (RFC 6455 §5.2), byte for byte what websockets writes
    for ``send_text`` with no extensions, without its per-frame objects."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return head + key + apply_mask(payload, key)


def _proxy_for(uri) -> str | None:
    try:
        from websockets.proxy import get_proxy
    except ImportError:   # websockets < 15 has no proxy support
        return None
    try:
        return get_proxy(uri)
    except Exception:
        return None


class RealtimeConnection(abc.ABC):
    """One realtime session. ``send`` writes at once (never blocks); events go to the listener set with
    :meth:`listen` (synchronously, in the loop step that read them); before that they wait for
    :meth:`next_event`. ``close_reason`` says why the socket closed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id: str | None = None
        self.close_reason: str | None = None
        self._pending: deque[dict] = deque()
        self._waiter: asyncio.Future | None = None
        self._listener: Listener | None = None
        self._on_closed: Callable[[], None] | None = None
        self._ended = False

    @classmethod
    async def connect(cls, ws_base_url: str, api_key: str, model: str, *, timeout_s: float) -> "RealtimeConnection":
        url = f"{ws_base_url}/realtime?model={model}"
        headers = {"Authorization": f"Bearer {api_key}"}
        uri = parse_uri(url)
        if _proxy_for(uri):
            return await _LibraryConnection.open(url, headers, timeout_s)
        return await _SansIoConnection.open(url, uri, headers, timeout_s)

    # -- sending (subclasses) -----------------------------------------------------------------------
    def send(self, event: dict) -> None:
        self.send_raw(jsoncodec.dumps(event))

    @abc.abstractmethod
    def send_raw(self, text: str | bytes, since: float | None = None) -> None:
        """Send an already-encoded event (str, or its UTF-8 bytes); ``since`` (latency.ENABLED): when its
        cause reached us."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session's socket: a close handshake of at most ``CLOSE_TIMEOUT_S``, then the connection
        is dropped; dropped too when the wait is cancelled (the socket never outlives the session)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection now, without a close handshake (a session given up on)."""

    # -- receiving ------------------------------------------------------------------------------------
    def _deliver(self, data: bytes | str) -> None:
        if latency.ENABLED:
            latency.arrival, latency.arrival_side = latency.clock(), "model"
        try:
            event = jsoncodec.loads(data)
        except (ValueError, TypeError):
            sample = data[:80] if type(data) is str else bytes(data[:80]).decode("utf-8", "replace")
            log.warning("stepfun_bad_event", problem="not JSON", sample=sample)
            return
        if not isinstance(event, dict):
            log.warning("stepfun_bad_event", problem=f"JSON {type(event).__name__}, not an event object")
            return
        if self.session_id is None and event.get("type") == "session.created":
            session = event.get("session")
            session_id = session.get("id") if isinstance(session, dict) else None
            self.session_id = session_id if isinstance(session_id, str) else None
        if self._listener is not None:
            self._listener(event)
        else:
            self._pending.append(event)
            self._wake()

    def _ended_with(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.close_reason = reason
        self._wake()
        if self._on_closed is not None:
            self._on_closed()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_event(self) -> dict | None:
        """The next event not yet handed to a listener; None once the socket has closed."""
        while not self._pending:
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._pending.popleft()

    def listen(self, on_event: Listener, on_closed: Callable[[], None]) -> None:
        """From now on every event goes to ``on_event`` as it is read; ``on_closed`` once the socket is gone."""
        self._listener, self._on_closed = on_event, on_closed
        while self._pending and self._listener is on_event:
            on_event(self._pending.popleft())
        if self._ended:
            on_closed()

    async def events(self) -> AsyncIterator[dict]:
        """Server events until the socket closes (for callers that prefer iterating; no listener set)."""
        while (event := await self.next_event()) is not None:
            yield event


def _close_reason(code: int | None, reason: str) -> str:
    return ("connection lost" if code in (None, 1006) else
            f"closed by StepFun (code {code}{', ' + reason if reason else ''})")


class _SansIoConnection(RealtimeConnection, asyncio.Protocol):
    """websockets' protocol state machine on an asyncio transport, written to synchronously."""

    def __init__(self, url: str, uri) -> None:
        super().__init__(url)
        self._ws = ClientProtocol(uri, max_size=MAX_EVENT_BYTES)   # no extensions: frames are plain
        self._mask_keys = MaskKeys()
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future | None = None
        self._lost: asyncio.Future | None = None
        self._fragments: list[bytes] | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._pong_due = False

    @classmethod
    async def open(cls, url: str, uri, headers: dict[str, str], timeout_s: float) -> "_SansIoConnection":
        loop = asyncio.get_running_loop()
        conn = cls(url, uri)
        conn._handshake = loop.create_future()
        conn._lost = loop.create_future()
        request = conn._ws.connect()
        for name, value in headers.items():
            request.headers[name] = value
        request.headers["User-Agent"] = f"voicebot websockets/{websockets.__version__}"

        async def handshake() -> None:
            await loop.create_connection(lambda: conn, uri.host, uri.port,
                                         ssl=ssl.create_default_context() if uri.secure else None,
                                         server_hostname=uri.host if uri.secure else None)
            conn._ws.send_request(request)
            conn._flush()
            await conn._handshake

        try:
            await asyncio.wait_for(handshake(), timeout_s)
        except InvalidStatus as exc:
            conn._abort()
            response = exc.response
            body = bytes(response.body or b"")[:300].decode("utf-8", "replace")
            raise error_for_status(response.status_code, f"realtime upgrade refused: {body or 'no body'}",
                                   trace_id=response.headers.get("X-Trace-Id")) from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake, EOFError) as exc:
            conn._abort()
            raise StepFunUnavailable(f"realtime connect to {url} failed: {type(exc).__name__}: {exc}") from None
        conn._ping = loop.call_later(PING_INTERVAL_S, conn._keepalive)
        return conn

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        self._flush()    # pongs, the close reply
        for event in events:
            if event.__class__ is Response:
                self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    self._deliver(event.data)
                else:
                    self._fragments = [event.data]
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(event.data)
                if event.fin:
                    data, self._fragments = b"".join(self._fragments), None
                    self._deliver(data)
            elif opcode is Opcode.PONG:
                self._pong_due = False
        if ws.state is State.CLOSED and self._transport is not None:
            self._transport.close()
        elif ws.state is State.CLOSING and not self._ended and (ws.close_rcvd or ws.parser_exc):
            self._closing_by_server()

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._flush()
        self._handshake_done()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping is not None:
            self._ping.cancel()
        rcvd = self._ws.close_rcvd
        self._handshake_done(exc or EOFError("connection closed during the handshake"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._ended_with(_close_reason(rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))

    def _closing_by_server(self) -> None:
        """StepFun closed the session or sent what no WebSocket may carry (then we failed the connection,
        RFC 6455 §7.1.7): the session is over now, whatever the TCP connection does. Closing that is the
        server's part; one that does not within ``CLOSE_TIMEOUT_S`` is dropped."""
        ws = self._ws
        if ws.parser_exc is not None:
            reason = f"invalid data from StepFun ({type(ws.parser_exc).__name__}: {ws.parser_exc})"
            log.warning("stepfun_invalid_frame", problem=str(ws.parser_exc))
        else:
            reason = _close_reason(ws.close_rcvd.code, ws.close_rcvd.reason)
        if self._ping is not None:
            self._ping.cancel()
        self._ping = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._abort)
        self._ended_with(reason)

    def _handshake_done(self, exc: BaseException | None = None) -> None:
        future = self._handshake
        if future is None or future.done():
            return
        problem = self._ws.handshake_exc
        if problem is None and self._ws.state is not State.CONNECTING:
            # Accepted; the session may already be closing when the close frame came in the same read as the
            # handshake response: the events before it are still delivered, then the close is reported.
            future.set_result(None)
        elif problem is not None or exc is not None:
            future.set_exception(problem or exc)

    # -- writing ----------------------------------------------------------------------------------
    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def send_raw(self, text: str | bytes, since: float | None = None) -> None:
        transport = self._transport
        if transport is None or self._ws.state is not State.OPEN or transport.is_closing():
            return    # closing: the listener hears about it
        # The state machine is bypassed for data frames (it checks nothing for them once OPEN with no
        # extensions and no fragmented message in progress, and sends are never fragmented here).
        transport.write(masked_text_frame(text if type(text) is bytes else text.encode(), self._mask_keys.take()))
        if since is not None:
            latency.record("in", latency.clock() - since)
            latency.count("appends_sent")
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            log.warning("stepfun_not_reading", buffered=transport.get_write_buffer_size())
            self._abort()

    def _keepalive(self) -> None:
        if self._ws.state is not State.OPEN:
            return
        if self._pong_due:
            log.warning("stepfun_keepalive_timeout", after_s=PING_INTERVAL_S)
            self._abort()
            return
        self._pong_due = True
        self._ws.send_ping(b"vb")
        self._flush()
        self._ping = asyncio.get_running_loop().call_later(PING_INTERVAL_S, self._keepalive)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def abort(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        self._abort()

    async def close(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self._transport is None or self._lost is None or self._lost.done():
            return
        if self._ws.state is State.OPEN:
            self._ws.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
        finally:
            if not self._lost.done():    # no answer in time, or whoever waited gave up
                self._abort()


class _LibraryConnection(RealtimeConnection):
    """websockets' asyncio client (used where a proxy is configured): a writer task and a reader task."""

    def __init__(self, ws, url: str) -> None:
        super().__init__(url)
        self._ws = ws
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._queued_bytes = 0      # in the outbox, not yet handed to websockets: bounded by MAX_BUFFERED_BYTES
        self._writer = asyncio.create_task(self._drain())
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, headers: dict[str, str], timeout_s: float) -> "_LibraryConnection":
        from websockets.asyncio.client import connect
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=timeout_s, max_size=MAX_EVENT_BYTES,
                               ping_interval=PING_INTERVAL_S, ping_timeout=PING_INTERVAL_S,
                               close_timeout=CLOSE_TIMEOUT_S, compression=None)
        except InvalidStatus as exc:
            response = exc.response
            body = bytes(response.body or b"")[:300].decode("utf-8", "replace")
            raise error_for_status(response.status_code, f"realtime upgrade refused: {body or 'no body'}",
                                   trace_id=response.headers.get("X-Trace-Id")) from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
            raise StepFunUnavailable(f"realtime connect to {url} failed: {type(exc).__name__}: {exc}") from None
        return cls(ws, url)

    def send_raw(self, text: str | bytes, since: float | None = None) -> None:
        if self._writer.done():
            return      # closed, or given up on: the reader reports the end
        if self._queued_bytes + len(text) > MAX_BUFFERED_BYTES:
            # websockets' send waits while StepFun is not reading: the queue would grow for good.
            log.warning("stepfun_not_reading", buffered=self._queued_bytes)
            self._writer.cancel()
            transport = getattr(self._ws, "transport", None)
            if transport is not None:
                transport.abort()     # the reader sees the connection lost and ends the session
            return
        self._queued_bytes += len(text)
        self._outbox.put_nowait(text if since is None else (text, since))

    async def _drain(self) -> None:
        while (item := await self._outbox.get()) is not None:
            try:
                if type(item) is tuple:
                    await self._ws.send(item[0], text=True)
                    latency.record("in", latency.clock() - item[1])
                    latency.count("appends_sent")
                    self._queued_bytes -= len(item[0])
                else:
                    await self._ws.send(item, text=True)
                    self._queued_bytes -= len(item)
            except ConnectionClosed:
                return

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                self._deliver(data)
        except ConnectionClosed:
            pass
        except Exception:   # a bug in a listener must not leave the call hanging
            log.exception("stepfun_listener_failed")
        self._ended_with(_close_reason(self._ws.close_code, self._ws.close_reason or ""))

    def abort(self) -> None:
        self._writer.cancel()
        transport = getattr(self._ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        try:
            # asyncio.wait: the writer's and reader's own ends are not raised here, a cancellation of close() is.
            if (await asyncio.wait([self._writer], timeout=1.0))[1]:
                self._writer.cancel()
            await self._ws.close()
            if (await asyncio.wait([self._reader], timeout=1.0))[1]:
                self._reader.cancel()
        finally:
            if not self._reader.done():   # whoever waited gave up: the socket must not outlive the session
                self.abort()


__all__ = ["RealtimeConnection", "StepFunError", "websockets"]
