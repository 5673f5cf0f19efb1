"""What every carrier shares: the wire-protocol interface and the socket loop that drives it.

A carrier module only translates its wire messages into ``Started``/``Audio``/``MarkPlayed``/``Dtmf``/
``Stopped`` events and encodes ``send_audio``/``send_mark``/``send_clear``. Everything else — the socket,
size limits, authentication order, persona lookup, running the ``Call``, error logging — lives here once.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from ..audio import FRAME_SAMPLES

if TYPE_CHECKING:
    from ..call import CallServices

log = structlog.get_logger("voicebot.telephony")

START_TIMEOUT_S = 10.0
MAX_LOGGED_PROTOCOL_ERRORS = 5   # per connection; later ones are counted and summarised at the end
_connection_ids = itertools.count(1)


class ProtocolError(Exception):
    """A carrier message we cannot use; the message says what was wrong with it."""


@dataclass
class CallMeta:
    carrier: str
    call_id: str                     # the carrier's id for the call (Twilio CallSid, …)
    stream_id: str | None = None     # the carrier's id for this media stream (Twilio streamSid, …)
    from_number: str | None = None
    to_number: str | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Started:
    meta: CallMeta


@dataclass
class Audio:
    pcm: np.ndarray        # int16, 8 kHz, any length


@dataclass
class MarkPlayed:
    name: str


@dataclass
class Dtmf:
    digit: str


@dataclass
class Stopped:
    reason: str


CarrierEvent = Started | Audio | MarkPlayed | Dtmf | Stopped


class CarrierSession(ABC):
    """One media-stream connection's wire protocol. Sending only queues: it never blocks the caller."""

    carrier: str = ""
    supports_marks: bool = True
    # Carriers that keep little or no playback buffer of their own cap how far ahead we may send.
    max_lead_ms: int | None = None

    def __init__(self, send_text: Callable[[str], None], send_bytes: Callable[[bytes], None]) -> None:
        self.send_text = send_text
        self.send_bytes = send_bytes

    @abstractmethod
    def handle_text(self, text: str) -> list[CarrierEvent]:
        """Parse one text frame; raise ProtocolError naming what was wrong."""

    def handle_bytes(self, data: bytes) -> list[CarrierEvent]:
        raise ProtocolError(f"unexpected binary frame of {len(data)} bytes")

    @abstractmethod
    def send_audio(self, frame: np.ndarray) -> None: ...

    @abstractmethod
    def send_mark(self, name: str) -> None: ...

    @abstractmethod
    def send_clear(self) -> None: ...

    def send_hangup(self) -> None:
        """Carriers that can end the call in-band override this; closing the socket is the fallback."""

    def authorize(self, meta: CallMeta) -> str | None:
        """None when this connection may carry ``meta``'s call, else why not."""
        return None


class FrameAssembler:
    """Re-cuts inbound audio of any length into exact 20 ms frames."""

    def __init__(self) -> None:
        self._rest = np.zeros(0, dtype=np.int16)

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        if len(self._rest) == 0 and len(pcm) == FRAME_SAMPLES:
            return [pcm]
        if len(self._rest):
            pcm = np.concatenate((self._rest, pcm))
        whole = len(pcm) - len(pcm) % FRAME_SAMPLES
        self._rest = pcm[whole:]
        return [pcm[i:i + FRAME_SAMPLES] for i in range(0, whole, FRAME_SAMPLES)]


class Outbox:
    """Queues outgoing frames so that protocol code can send synchronously, in order, within one loop turn."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._drain())

    def send_text(self, text: str) -> None:
        self._queue.put_nowait(text)

    def send_bytes(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    async def _drain(self) -> None:
        while (item := await self._queue.get()) is not None:
            if self._ws.closed:
                continue
            try:
                if isinstance(item, str):
                    await self._ws.send_str(item)
                else:
                    await self._ws.send_bytes(item)
            except (ConnectionError, RuntimeError):
                pass   # the reader sees the close and ends the call

    async def close(self) -> None:
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._task, 2.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()


async def serve_media_stream(request: web.Request, session_cls: type[CarrierSession],
                             services: "CallServices", *, protocols: tuple[str, ...] = (),
                             **session_kwargs) -> web.WebSocketResponse:
    """Accept one carrier media WebSocket and run its call until either side hangs up."""
    from ..call import Call   # call.py imports this module's types

    conn_id = next(_connection_ids)
    clog = log.bind(carrier=session_cls.carrier, conn=conn_id, peer=request.remote)
    ws = web.WebSocketResponse(max_msg_size=services.settings.max_message_bytes, protocols=protocols,
                               heartbeat=30.0)
    await ws.prepare(request)
    outbox = Outbox(ws)
    session = session_cls(outbox.send_text, outbox.send_bytes, **session_kwargs)
    errors = 0
    call: Call | None = None
    assembler = FrameAssembler()

    def protocol_error(problem: str) -> None:
        nonlocal errors
        errors += 1
        if errors <= MAX_LOGGED_PROTOCOL_ERRORS:
            (call.log if call else clog).warning("carrier_protocol_error", problem=problem, count=errors)

    async def handle(events: list[CarrierEvent]) -> None:
        nonlocal call
        for event in events:
            if isinstance(event, Audio):
                if call is not None:
                    for frame in assembler.push(event.pcm):
                        call.on_caller_audio(frame)
            elif isinstance(event, MarkPlayed):
                if call is not None:
                    call.on_mark(event.name)
            elif isinstance(event, Started):
                if call is not None:
                    protocol_error("second start message on one stream ignored")
                    continue
                refusal = session.authorize(event.meta)
                if refusal is not None:
                    clog.warning("media_stream_refused", reason=refusal, call_sid=event.meta.call_id)
                    await ws.close(code=1008, message=b"unauthorized")
                    return
                persona = services.dialplan.lookup(event.meta.to_number)
                if persona is None:
                    clog.warning("no_persona_for_number", to=event.meta.to_number, call_sid=event.meta.call_id)
                    await ws.close(code=1008, message=b"no persona for this number")
                    return
                call = Call(meta=event.meta, persona=persona, carrier=session, services=services,
                            close_carrier=ws.close)
                call.start()
            elif isinstance(event, Dtmf):
                if call is not None:
                    call.on_dtmf(event.digit)
            elif isinstance(event, Stopped):
                if call is not None:
                    call.hang_up(f"carrier: {event.reason}")
                await ws.close()

    try:
        start_deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not ws.closed:
            timeout = None if call is not None else max(start_deadline - asyncio.get_running_loop().time(), 0.01)
            try:
                msg = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                clog.warning("media_stream_no_start", waited_s=START_TIMEOUT_S)
                await ws.close(code=1008, message=b"no start message")
                break
            if msg.type == WSMsgType.TEXT:
                try:
                    await handle(session.handle_text(msg.data))
                except ProtocolError as exc:
                    protocol_error(str(exc))
            elif msg.type == WSMsgType.BINARY:
                try:
                    await handle(session.handle_bytes(msg.data))
                except ProtocolError as exc:
                    protocol_error(str(exc))
            elif msg.type == WSMsgType.ERROR:
                protocol_error(f"websocket error: {ws.exception()}")
                break
            else:   # CLOSE / CLOSING / CLOSED
                break
    except asyncio.CancelledError:
        if call is not None:
            call.hang_up("server shutting down")
        raise
    finally:
        if call is not None:
            call.hang_up("carrier socket closed")
            await call.finished()
        if errors > MAX_LOGGED_PROTOCOL_ERRORS:
            (call.log if call else clog).warning("carrier_protocol_errors_total", count=errors)
        await outbox.close()
        if not ws.closed:
            await ws.close()
    return ws
