"""How messages travel to and from a carrier connection: an aiohttp WebSocket or a plain TCP stream behind one
:class:`Transport` interface, and the :class:`Outbox` that lets protocol code send synchronously and in order.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

SEND_NOW_MAX_BUFFERED = 16 * 1024   # above this many unsent bytes, sends wait for the socket to drain


class StreamEnded(Exception):
    """The transport has no more messages; ``problem`` says why when it was not a normal close."""

    def __init__(self, problem: str | None = None) -> None:
        super().__init__(problem or "closed")
        self.problem = problem


class Transport(ABC):
    """One media connection, whatever carries it: messages in, messages out, close."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    async def receive(self, timeout: float | None) -> str | bytes:
        """The next whole message; raises asyncio.TimeoutError, or StreamEnded when there are no more."""

    @abstractmethod
    async def send(self, data: str | bytes) -> None: ...

    def send_now(self, data: str | bytes) -> bool:
        """Write ``data`` without waiting when the connection takes it at once; False when it must go
        through :meth:`send` (the socket is backed up, or this transport cannot write synchronously)."""
        return False

    @abstractmethod
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebSocketTransport(Transport):
    def __init__(self, ws: web.WebSocketResponse, socket: asyncio.Transport | None = None) -> None:
        self.ws = ws
        self._socket = socket     # the upgraded connection, for its write-buffer level

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def receive(self, timeout: float | None) -> str | bytes:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.data
        if msg.type == WSMsgType.ERROR:
            raise StreamEnded(f"websocket error: {self.ws.exception()}")
        raise StreamEnded()   # CLOSE / CLOSING / CLOSED

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    def send_now(self, data: str | bytes) -> bool:
        # aiohttp writes an uncompressed frame synchronously and only then may wait for the socket to
        # drain. With the socket's buffer low that wait never happens, so the send coroutine is run to
        # completion right here instead of costing a task wake-up per message.
        socket = self._socket
        if socket is None or self.ws.closed or socket.get_write_buffer_size() > SEND_NOW_MAX_BUFFERED:
            return False
        sending = self.ws.send_str(data) if isinstance(data, str) else self.ws.send_bytes(data)
        try:
            sending.send(None)
        except StopIteration:
            return True
        except (ConnectionError, RuntimeError):
            return True    # closing: the reader sees the close and ends the call
        sending.close()    # it paused for flow control after writing the frame; later sends queue up
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code=code, message=reason.encode())


class TcpTransport(Transport):
    """A plain TCP connection whose byte stream ``read_message`` cuts into the carrier's messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 read_message: Callable[[asyncio.StreamReader], Awaitable[bytes | None]]) -> None:
        self.reader, self.writer = reader, writer
        self._read_message = read_message

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    async def receive(self, timeout: float | None) -> bytes:
        try:
            message = await asyncio.wait_for(self._read_message(self.reader), timeout)
        except asyncio.IncompleteReadError as exc:
            raise StreamEnded(f"connection closed inside a message ({len(exc.partial)} of {exc.expected} "
                              "bytes read)" if exc.partial else None) from None
        except ConnectionError as exc:
            raise StreamEnded(f"connection lost: {exc}") from None
        if message is None:
            raise StreamEnded()
        return message

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

    def __init__(self, transport: Transport | web.WebSocketResponse) -> None:
        if isinstance(transport, web.WebSocketResponse):
            transport = WebSocketTransport(transport)
        self._transport = transport
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._backlog = 0     # messages queued and not yet sent: while any are, new ones queue behind them
        self._task = asyncio.create_task(self._drain())

    def send_text(self, text: str) -> None:
        self._send(text)

    def send_bytes(self, data: bytes) -> None:
        self._send(data)

    def _send(self, data: str | bytes) -> None:
        if self._backlog == 0 and self._transport.send_now(data):
            return
        self._backlog += 1
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

    async def close(self) -> None:
        """Send what is queued (for at most 2 s), then stop. Safe to call twice."""
        if self._task.done():
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
