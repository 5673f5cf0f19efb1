"""The simulated carrier's media WebSocket, on aiohttp's client (its frame writer and reader are compiled,
which matters at 50 frames a second per call in the load test).

A :class:`~voicebot.simulator.caller.MediaConnection`: whole text or binary messages both ways, pings
answered, the server's close frame answered and its code and reason kept; iteration ends when the server
closes or the connection drops; sending on a closed connection raises ``ConnectionError``.

Messages are framed and masked by aiohttp's own frame writer (what its ``send_str`` does, without the
coroutines around it, which cost more than the frame) and written, in the order sent, at the end of the
loop step that sent them: one run of socket writes after all the ticks due in that step have been
computed, rather than a system call between each call's tick and the next one's. Flow control is the
writer's protocol pausing and resuming, as ``send_str`` would await it.
"""

from __future__ import annotations

import asyncio
import weakref

import aiohttp

from voicebot.simulator.caller import (CallSetupError, MediaConnection, Message, StreamRefused, StreamTarget,
                                      reset_transport)

_TEXT, _BINARY = aiohttp.WSMsgType.TEXT.value, aiohttp.WSMsgType.BINARY.value
_END = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class _Writes:
    """The frames sent during one loop step, written in order when the step's callbacks are done."""

    def __init__(self) -> None:  # used only from its loop (not held: a closed loop can be collected)
        self._frames: list[tuple[WebSocketConnection, bytes, int]] = []  # (connection, payload, opcode)

    def add(self, connection: WebSocketConnection, payload: bytes, opcode: int) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append((connection, payload, opcode))

    def flush(self) -> None:
        frames, self._frames = self._frames, []
        for connection, payload, opcode in frames:
            if connection._ws.closed:  # the server closed meanwhile and aiohttp answered: nothing after that
                continue
            try:
                connection._write_frame(payload, opcode, 0)
            except ConnectionError:  # the peer went away meanwhile; its call sees the socket end
                pass


_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes] = weakref.WeakKeyDictionary()


class WebSocketConnection(MediaConnection):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession | None) -> None:
        self._ws = ws
        self._session = session  # ours to close, when the call brought no session
        self.close_reason: str | None = None
        writer = ws._writer  # aiohttp's WebSocketWriter: masks (client side) and writes one frame
        self._write_frame = writer._write_websocket_frame
        self._protocol = writer.protocol
        self._transport = writer.transport
        loop = asyncio.get_running_loop()
        writes = _writes.get(loop)
        if writes is None:
            writes = _writes[loop] = _Writes()
        self._writes = writes

    @property
    def close_code(self) -> int | None:  # type: ignore[override]
        return self._ws.close_code

    def send_nowait(self, message: Message) -> None:
        if self._ws.closed or self._transport.is_closing():
            raise ConnectionResetError("WebSocket closed")
        if isinstance(message, str):
            self._writes.add(self, message.encode(), _TEXT)
        else:
            self._writes.add(self, message, _BINARY)

    @property
    def writing_paused(self) -> bool:
        return self._protocol.writing_paused

    async def drain(self) -> None:
        await self._protocol._drain_helper()

    def __aiter__(self):
        return self._messages()

    async def _messages(self):
        ws = self._ws
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
                yield msg.data
            elif kind in _END:
                if kind is aiohttp.WSMsgType.CLOSE and msg.extra:
                    self.close_reason = msg.extra
                return

    async def abort(self) -> None:
        reset_transport(self._transport)
        if self._session is not None:
            await self._session.close()

    async def close(self) -> None:
        self._writes.flush()  # what was sent goes out before the close frame
        try:
            await self._ws.close()
        finally:
            if self._session is not None:
                await self._session.close()


async def open_websocket(target: StreamTarget, *, session: aiohttp.ClientSession | None, timeout_s: float,
                         max_message_bytes: int) -> WebSocketConnection:
    """Open the media WebSocket like the carrier does: no compression, no proxy, no client pings."""
    own = session is None
    if own:
        session = aiohttp.ClientSession()
    try:
        ws = await asyncio.wait_for(session.ws_connect(
            target.url, headers=target.headers, protocols=tuple(target.subprotocols or ()), compress=0,
            autoping=True, heartbeat=None, max_msg_size=max_message_bytes,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)), timeout_s)
    except aiohttp.WSServerHandshakeError as exc:
        if own:
            await session.close()
        if exc.status == 101:  # upgraded, but the handshake itself was wrong
            raise CallSetupError(f"media stream {target.url}: {exc.message}") from exc
        raise StreamRefused(target.url, exc.status) from exc
    except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError) as exc:
        if own:
            await session.close()
        raise CallSetupError(f"media stream {target.url}: {type(exc).__name__}: {exc}") from exc
    return WebSocketConnection(ws, session if own else None)
