"""Answering a call: runs one carrier media connection as a ``Call``, whatever the carrier and transport.

A carrier's route authenticates the connection and hands it here (``services.answer``): :class:`MediaStream`
takes the carrier session's events, authorizes the start, picks the persona, starts the ``Call``, feeds it, logs
protocol errors and cleans up. A stream of a call a campaign placed names its attempt (``params["attempt"]``): the
campaign service resolves it to the contact's context before the ``Call`` starts. Two transports (:mod:`.telephony.transport`) feed it: an aiohttp WebSocket
(:meth:`Answerer.websocket`, most carriers) and a plain TCP connection (:meth:`Answerer.tcp`, Asterisk AudioSocket).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable

import numpy as np
import structlog
from aiohttp import web

from . import metrics
from .audio import FRAME_SAMPLES, RATE
from .call import Call, CallServices
from .telephony.base import (POLICY_VIOLATION, Audio, CarrierEvent, CarrierSession, Dtmf, FatalProtocolError,
                             MarkPlayed, ProtocolError, Started, Stopped)
from .telephony.flood import FLOOD_BURST_MS, CallerAudioBudget
from .telephony.transport import Outbox, StreamEnded, TcpTransport, Transport, WebSocketTransport
from .wsserver import MESSAGE_TOO_BIG, ServerWebSocket

log = structlog.get_logger("voicebot.telephony")

START_TIMEOUT_S = 10.0
HEARTBEAT_S = 30.0   # a silent carrier is pinged after this long, dropped without a pong
MAX_LOGGED_PROTOCOL_ERRORS = 5   # per connection; later ones are counted and summarised at the end
MAX_CLOSE_REASON_BYTES = 123   # what a WebSocket close frame has room for (RFC 6455 §5.5)
REFUSALS = {"draining": "the server is shutting down", "limit": "the server has all the calls it takes"}
_connection_ids = itertools.count(1)


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


# -- the call over one media connection ------------------------------------------------------------

class MediaStream:
    """Drives one call over one media connection, whatever the transport: start, authorization, persona,
    the ``Call``, events, protocol-error logging and cleanup."""

    def __init__(self, transport: Transport, session_cls: type[CarrierSession], services: CallServices, *,
                 peer: str | None = None, **session_kwargs) -> None:
        self.transport = transport
        self.services = services
        self.conn_id = next(_connection_ids)
        self.log = log.bind(carrier=session_cls.carrier, conn=self.conn_id, peer=peer)
        self.outbox = Outbox(transport)
        self.session = session_cls(self.outbox.send_text, self.outbox.send_bytes, **session_kwargs)
        self.call: Call | None = None
        self.errors = 0
        self._assembler = FrameAssembler()
        self._budget = CallerAudioBudget()           # caller audio beyond real time (+ a burst) is dropped
        self._flood_frames_counted = 0
        self._ending: asyncio.Future | None = None   # set once the connection is being closed on our side
        self._resolving: asyncio.Task | None = None  # a placed call's attempt being looked up

    def protocol_error(self, problem: str) -> None:
        self.errors += 1
        if self.errors <= MAX_LOGGED_PROTOCOL_ERRORS:
            (self.call.log if self.call else self.log).warning("carrier_protocol_error", problem=problem,
                                                              count=self.errors)

    def receive(self, message: str | bytes) -> None:
        """One message from the carrier, in the loop step that read it: parsed by the session, its events
        acted on. What must wait (closing the connection) runs as a task; later messages are then ignored."""
        if self._ending is not None:
            return
        try:
            if isinstance(message, str):
                events = self.session.handle_text(message)
            else:
                events = self.session.handle_bytes(message)
        except ProtocolError as exc:
            metrics.frames_dropped(self.session.carrier, "protocol")     # the message is dropped
            self.protocol_error(str(exc))
            if isinstance(exc, FatalProtocolError):
                if self.call is not None:
                    self.call.hang_up(f"carrier protocol error: {exc}", "failed")
                told = (exc.told.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore") if exc.told
                        else "unusable stream")
                self._end(self.refuse(told, "protocol", str(exc)))
            return
        self.handle(events)

    def handle(self, events: list[CarrierEvent]) -> None:
        call = self.call
        for event in events:
            if isinstance(event, Audio):
                if call is not None:
                    if not self._budget.admit(len(event.pcm)):
                        self._flooded()
                        continue
                    for frame in self._assembler.push(event.pcm):
                        call.on_caller_audio(frame)
            elif isinstance(event, MarkPlayed):
                if call is not None:
                    call.on_mark(event.name)
            elif isinstance(event, Started):
                if call is not None or self._resolving is not None:
                    self.protocol_error("second start message on one stream ignored")
                    continue
                refusal = self.session.authorize(event.meta)
                if refusal is not None:
                    self._end(self.refuse("unauthorized", "auth", refusal, call_sid=event.meta.call_id))
                    return
                meta = event.meta
                if "attempt" in meta.params:
                    self._resolving = asyncio.create_task(self._start_outbound(meta), name=f"attempt-{self.conn_id}")
                    return      # what else came with the start is before the call: the callee is not heard yet
                persona, why_not = self.services.dialplan.persona_for(meta.to_number, asked=meta.persona,
                                                                      fallback=self.session.fallback_persona)
                if persona is None:
                    self._end(self.refuse("no persona for this call", "no_persona", why_not,
                                          to=event.meta.to_number, call_sid=event.meta.call_id))
                    return
                if meta.engine is not None and meta.engine != persona.engine:
                    persona = dataclasses.replace(persona, engine=meta.engine)   # this call only
                call = self._start_call(meta, persona)
            elif isinstance(event, Dtmf):
                if call is not None:
                    call.on_dtmf(event.digit)
            elif isinstance(event, Stopped):
                if call is not None:
                    call.hang_up(f"carrier: {event.reason}")
                self._end(self.transport.close())
                return

    def _flooded(self) -> None:
        """An audio message over the budget was dropped: counted in whole frames; logged when the flood begins
        and, with its totals, when the stream ends (never per message)."""
        budget = self._budget
        if budget.dropped_messages == 1:
            (self.call.log if self.call else self.log).warning(
                "caller_audio_flood", burst_ms=FLOOD_BURST_MS,
                problem="the carrier sends audio faster than real time: what is over it is dropped")
        frames = budget.dropped_samples // FRAME_SAMPLES - self._flood_frames_counted
        if frames:
            self._flood_frames_counted += frames
            metrics.frames_dropped(self.session.carrier, "flood", frames)

    def _start_call(self, meta, persona, outbound=None) -> Call:
        call = self.call = Call(meta=meta, persona=persona, carrier=self.session, services=self.services,
                                close_carrier=self.hang_up, outbound=outbound)
        loop = asyncio.get_running_loop()
        self.session.mark_reached = lambda name, on_mark=call.on_mark: loop.call_soon(on_mark, name)
        self.session.call_started(call)
        call.start()
        return call

    async def _start_outbound(self, meta) -> None:
        """A call a campaign placed: its attempt → the contact's context → the ``Call``, or the stream refused."""
        attempt = meta.params.get("attempt", "")
        resolve = getattr(self.services.campaigns, "resolve", None)
        if resolve is None:
            self._end(self.refuse("no campaigns here", "no_persona", "a placed call's stream, and this server runs "
                                  "no campaigns", call_sid=meta.call_id))
            return
        try:
            context = await asyncio.wait_for(resolve(meta), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            self._end(self.refuse("attempt lookup timed out", "unavailable",
                                  f"attempt lookup took over {START_TIMEOUT_S:g} s", level="error",
                                  call_sid=meta.call_id))
            return
        except Exception as exc:
            self._end(self.refuse("attempt lookup failed", "unavailable", f"attempt lookup failed: {exc}",
                                  level="error", call_sid=meta.call_id))
            return
        if self._ending is not None:
            return      # the carrier ended the stream meanwhile
        if context is None:
            self._end(self.refuse("unknown attempt", "auth", "the attempt token names no live attempt",
                                  attempt=attempt[:80], call_sid=meta.call_id))
            return
        meta.direction = "outbound"
        self._start_call(meta, context.persona, outbound=context)

    def _end(self, closing: Awaitable[None]) -> None:
        """Stop acting on messages; ``closing`` ends the connection (``run`` waits for it)."""
        self._ending = asyncio.ensure_future(closing)

    def _no_start(self) -> None:
        if self.call is None and self._ending is None and self._resolving is None:
            self._end(self.refuse("no start message", "protocol", f"no start message within {START_TIMEOUT_S:g} s"))

    def refuse(self, told: str, kind: str, why: str | None = None, *, level: str = "warning",
               **fields) -> Awaitable[None]:
        """Close the stream as refused (1008 with ``told``, which the carrier sees: never a secret or a detail),
        log it as our refusal (``media_stream_refused``, with ``why``), and count it in the metrics under
        ``kind`` (one of metrics.REFUSAL_REASONS). The carrier's echo of the 1008 is no protocol error of its."""
        logger = self.call.log if self.call is not None else self.log
        getattr(logger, level)("media_stream_refused", reason=why or told, kind=kind, close_code=POLICY_VIOLATION,
                               close_reason=told, **fields)
        metrics.stream_refused(self.session.carrier, kind)
        return self.transport.close(code=POLICY_VIOLATION, reason=told)

    async def hang_up(self) -> None:
        """The call is over on our side: tell the carrier in-band where it can be told, then close."""
        if not self.transport.closed:
            self.session.send_hangup()
            await self.outbox.close()
        await self.transport.close()

    async def run(self) -> None:
        """Deliver messages until either side hangs up; the call, if any, is finished on return."""
        no_start = asyncio.get_running_loop().call_later(START_TIMEOUT_S, self._no_start)
        ended_because: str | None = None
        try:
            await self.transport.deliver(self.receive)
        except StreamEnded as end:
            ended_because = end.problem
            if end.violation == MESSAGE_TOO_BIG:    # our refusal of one message, not a carrier protocol error
                (self.call.log if self.call else self.log).warning(
                    "media_message_too_big", size=end.refused_bytes,
                    limit=self.services.settings.max_message_bytes, closed_with=MESSAGE_TOO_BIG)
                metrics.stream_refused(self.session.carrier, "limit")
            elif end.problem:
                self.protocol_error(end.problem)
            if end.violation is not None and end.violation != MESSAGE_TOO_BIG:   # we closed it for what it sent
                metrics.stream_refused(self.session.carrier, "protocol")
        except asyncio.CancelledError:
            if self.call is not None:
                self.call.hang_up("server shutting down", "failed")
            raise
        finally:
            no_start.cancel()
            if self._resolving is not None and not self._resolving.done():
                self._resolving.cancel()
            if self._ending is not None:
                await self._ending
            if self.call is not None:
                self.call.hang_up(f"carrier socket closed: {ended_because}" if ended_because
                                  else "carrier socket closed")
                await self.call.finished()
            if self._budget.dropped_messages:
                budget = self._budget
                (self.call.log if self.call else self.log).warning(
                    "caller_audio_flood_dropped", messages=budget.dropped_messages,
                    dropped_ms=budget.dropped_samples * 1000 // RATE,
                    since_first_drop_s=round(time.monotonic() - budget.first_drop_t, 2))
            if self.errors > MAX_LOGGED_PROTOCOL_ERRORS:
                (self.call.log if self.call else self.log).warning("carrier_protocol_errors_total",
                                                                   count=self.errors)
            await self.outbox.close()
            if not self.transport.closed:
                await self.transport.close()


class Answerer:
    """What a carrier route hands its authenticated connection to (``services.answer``): runs its call."""

    def __init__(self, services: CallServices) -> None:
        self.services = services

    async def websocket(self, request: web.Request, session_cls: type[CarrierSession], *,
                        protocols: tuple[str, ...] = (), **session_kwargs) -> web.StreamResponse:
        """Accept one carrier media WebSocket and run its call until either side hangs up. While the server
        drains or has ``server.max_calls`` calls, the upgrade is answered 503 instead."""
        admission = self.services.admission
        refused = admission.refusal(session_cls.carrier, peer=request.remote, path=request.path)
        if refused is not None:
            return web.Response(status=503, text=f"not taking calls: {REFUSALS[refused]}\n")
        # No permessage-deflate: carriers don't ask for it, μ-law barely compresses, and uncompressed frames
        # are what lets the outbox write without a task wake-up per message.
        admission.opened()
        try:
            try:
                ws = await ServerWebSocket.accept(request, protocols=protocols, heartbeat_s=HEARTBEAT_S,
                                                  max_message_bytes=self.services.settings.max_message_bytes)
            except web.HTTPClientError:       # not a valid WebSocket upgrade: answered 400/426 naming the problem
                metrics.stream_refused(session_cls.carrier, "protocol")
                raise
            stream = MediaStream(WebSocketTransport(ws), session_cls, self.services, peer=request.remote,
                                 **session_kwargs)
            await stream.run()
            return ws.response
        finally:
            admission.closed()

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  read_message: Callable[[asyncio.StreamReader], Awaitable[bytes | None]],
                  session_cls: type[CarrierSession], **session_kwargs) -> None:
        """Run one call over a plain TCP connection; ``read_message`` cuts the byte stream into messages. While
        the server drains or has ``server.max_calls`` calls, the carrier is told to hang up instead."""
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else None
        stream = MediaStream(TcpTransport(reader, writer, read_message), session_cls, self.services, peer=peer,
                             **session_kwargs)
        admission = self.services.admission
        if admission.refusal(session_cls.carrier, peer=peer) is not None:
            await stream.hang_up()
            return
        admission.opened()
        try:
            await stream.run()
        finally:
            admission.closed()
