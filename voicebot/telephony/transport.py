"""How messages travel to and from a carrier connection: a WebSocket (:mod:`voicebot.wsserver`) or a plain TCP
stream behind one :class:`Transport` interface, and the :class:`Outbox` that lets protocol code send
synchronously and in order.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

import structlog

from ..wsserver import MAX_BUFFERED_BYTES, ServerWebSocket

log = structlog.get_logger("voicebot.telephony")

SEND_NOW_MAX_BUFFERED = 16 * 1024   # above this many unsent bytes, sends wait for the socket to drain
# What the outbox may hold for a transport that cannot take it (a TCP carrier whose socket is backed up; a
# WebSocket write never waits, and wsserver bounds its own backlog to the same size, for the same reason): a
# carrier that has not read this much of our audio has stopped reading, and the connection is dropped.
MAX_BACKLOG_BYTES = MAX_BUFFERED_BYTES

MessageHandler = Callable[[str | bytes], None]


class StreamEnded(Exception):
    """The transport has no more messages; ``problem`` says why when it was not a normal close, ``violation``
    the close code we ended it with when the peer broke the protocol or a limit (wsserver's codes), and
    ``refused_bytes`` the size of a message refused as over the size limit."""

    def __init__(self, problem: str | None = None, violation: int | None = None,
                 refused_bytes: int | None = None) -> None:
        super().__init__(problem or "closed")
        self.problem = problem
        self.violation = violation
        self.refused_bytes = refused_bytes


class Transport(ABC):
    """One media connection, whatever carries it: messages in, messages out, close."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    async def deliver(self, on_message: MessageHandler) -> None:
        """Hand every message to ``on_message`` as it arrives, until the connection ends; raises
        StreamEnded with the problem when it ended abnormally."""

    @abstractmethod
    async def send(self, data: str | bytes) -> None: ...

    def send_now(self, data: str | bytes) -> bool:
        """Write ``data`` without waiting when the connection takes it at once; False when it must go
        through :meth:`send` (the socket is backed up, or this transport cannot write synchronously)."""
        return False

    @abstractmethod
    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def drop(self, problem: str) -> None:
        """End the connection now, without a goodbye (the peer has stopped reading); ``problem`` is why."""


class WebSocketTransport(Transport):
    """A carrier WebSocket: messages reach ``on_message`` in the socket's own data callback."""

    def __init__(self, ws: ServerWebSocket) -> None:
        self.ws = ws

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def deliver(self, on_message: MessageHandler) -> None:
        self.ws.listen(on_message)
        await self.ws.wait_closed()
        if self.ws.problem:
            raise StreamEnded(self.ws.problem, self.ws.violation, self.ws.refused_bytes)

    async def send(self, data: str | bytes) -> None:
        self.send_now(data)

    def send_now(self, data: str | bytes) -> bool:
        if isinstance(data, str):
            self.ws.send_text(data)
        else:
            self.ws.send_bytes(data)
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


class TcpTransport(Transport):
    """A plain TCP connection whose byte stream ``read_message`` cuts into the carrier's messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 read_message: Callable[[asyncio.StreamReader], Awaitable[bytes | None]]) -> None:
        self.reader, self.writer = reader, writer
        self._read_message = read_message
        self._dropped: str | None = None     # why we dropped the connection, if we did

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    async def deliver(self, on_message: MessageHandler) -> None:
        while not self.closed:
            try:
                message = await self._read_message(self.reader)
            except asyncio.IncompleteReadError as exc:
                raise StreamEnded(self._dropped or (f"connection closed inside a message ({len(exc.partial)} of "
                                  f"{exc.expected} bytes read)" if exc.partial else None)) from None
            except ConnectionError as exc:
                raise StreamEnded(self._dropped or f"connection lost: {exc}") from None
            if message is None:
                if self._dropped:
                    raise StreamEnded(self._dropped)
                return
            try:
                on_message(message)
            except Exception:    # a bug handling one message ends this connection, never the server (as wsserver)
                log.exception("tcp_listener_failed")
                raise StreamEnded("internal error handling a message") from None

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            raise RuntimeError("a TCP media stream carries bytes only")
        self.writer.write(data)
        await self.writer.drain()

    def send_now(self, data: str | bytes) -> bool:
        if isinstance(data, str) or self.writer.is_closing() \
                or self.writer.transport.get_write_buffer_size() > SEND_NOW_MAX_BUFFERED:
            return False
        self.writer.write(data)
        return True

    def drop(self, problem: str) -> None:
        if self._dropped is None:
            self._dropped = problem
            self.writer.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class Outbox:
    """Lets protocol code send synchronously and in order: a message is written at once while the connection
    takes it, and queued behind the others while the socket is backed up (or the transport cannot write
    synchronously)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        # Bounded by MAX_BACKLOG_BYTES in _send (a maxsize would count messages, not what they hold).
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._backlog = 0     # messages queued and not yet sent: while any are, new ones queue behind them
        self._backlog_bytes = 0
        self._task = asyncio.create_task(self._drain())

    def send_text(self, text: str) -> None:
        self._send(text)

    def send_bytes(self, data: bytes) -> None:
        self._send(data)

    def _send(self, data: str | bytes) -> None:
        if self._backlog == 0 and self._transport.send_now(data):
            return
        if self._backlog_bytes + len(data) > MAX_BACKLOG_BYTES:
            self._transport.drop(f"peer is not reading ({self._backlog_bytes} bytes unsent)")
            return
        self._backlog += 1
        self._backlog_bytes += len(data)
        self._queue.put_nowait(data)

    async def _drain(self) -> None:
        while (item := await self._queue.get()) is not None:
            try:
                if not self._transport.closed:
                    await self._transport.send(item)
            except (ConnectionError, RuntimeError):
                pass   # the reader sees the close and ends the call
            finally:
                self._backlog -= 1
                self._backlog_bytes -= len(item)

    async def close(self) -> None:
        """Send what is queued (for at most 2 s), then stop. Safe to call twice."""
        if self._task.done():
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        except asyncio.TimeoutError:
            self._task.cancel()
        except asyncio.CancelledError:
            self._task.cancel()
            if asyncio.current_task().cancelling():     # we were cancelled (not the drain): say so
                raise
