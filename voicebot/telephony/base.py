"""What every carrier shares: the wire-protocol interface and the loop that drives a call over it.

A carrier module only translates its wire messages into ``Started``/``Audio``/``MarkPlayed``/``Dtmf``/
``Stopped`` events and encodes ``send_audio``/``send_mark``/``send_clear``. Everything else — size limits,
authentication order, persona lookup, running the ``Call``, error logging, cleanup — lives here once, in
:class:`MediaStream`, which does not care how messages travel. Two transports (:mod:`.transport`) feed it: an
aiohttp WebSocket (:func:`serve_media_stream`, most carriers) and a plain TCP connection
(:func:`serve_tcp_stream`, Asterisk AudioSocket).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog
from aiohttp import web

from ..audio import FRAME_SAMPLES
from ..config import Fields
from ..wsserver import ServerWebSocket
from .transport import Outbox, StreamEnded, TcpTransport, Transport, WebSocketTransport

if TYPE_CHECKING:
    from ..call import Call, CallServices
    from ..dialplan import Dialplan, Persona

log = structlog.get_logger("voicebot.telephony")

START_TIMEOUT_S = 10.0
HEARTBEAT_S = 30.0   # a silent carrier is pinged after this long, dropped without a pong
MAX_LOGGED_PROTOCOL_ERRORS = 5   # per connection; later ones are counted and summarised at the end
POLICY_VIOLATION = 1008             # WebSocket close code for refused streams
_connection_ids = itertools.count(1)


class ProtocolError(Exception):
    """A carrier message we cannot use; the message says what was wrong with it."""


class FatalProtocolError(ProtocolError):
    """A message that makes the whole stream unusable (e.g. a start naming a codec we cannot play):
    logged like any protocol error, then the connection is closed."""


@dataclass
class CallMeta:
    carrier: str
    call_id: str                     # the carrier's id for the call (Twilio CallSid, …)
    stream_id: str | None = None     # the carrier's id for this media stream (Twilio streamSid, …)
    from_number: str | None = None
    to_number: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    persona: str | None = None       # a persona asked for by name (route/config/custom parameter), else by number


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
    # The most bot audio one outgoing message may carry (whole 20 ms frames); None: any length.
    max_chunk_ms: int | None = 20
    # The persona for calls that name no number the dialplan knows (carrier config); None: the default.
    fallback_persona: str | None = None

    def __init__(self, send_text: Callable[[str], None], send_bytes: Callable[[bytes], None]) -> None:
        self.send_text = send_text
        self.send_bytes = send_bytes
        # Set by the loop once the call runs: tells the playout a mark was reached without a wire echo.
        self.mark_reached: Callable[[str], None] = lambda name: None

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

    def reached_when_sent(self, name: str) -> None:
        """``send_mark`` for carriers that can neither echo marks nor flush what we sent (Asterisk
        AudioSocket, mod_audio_stream): everything handed to them will be heard, so a mark counts as reached
        once the audio before it is sent. With a small ``max_lead_ms`` that is at most a frame or two ahead of
        the caller's ear, and a barge-in truncates the model at all the audio the caller will hear."""
        self.mark_reached(name)

    def authorize(self, meta: CallMeta) -> str | None:
        """None when this connection may carry ``meta``'s call, else why not."""
        return None


# -- helpers for carrier modules -------------------------------------------------------------------

def parse_json_object(text: str) -> dict:
    """One JSON text frame that must hold an object."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON ({exc.msg} at char {exc.pos}): {text[:60]!r}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is JSON but not an object: {text[:60]!r}")
    return msg


def require(msg: dict, key: str, kind: type | tuple[type, ...], where: str):
    """``msg[key]`` when it is a ``kind``; otherwise a ProtocolError naming the message and the field."""
    value = msg.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"{where}: field {key!r} missing or not a {'/'.join(k.__name__ for k in kinds)}")
    return value


def dtmf(value: object, where: str) -> Dtmf:
    """A DTMF event from a digit field, which carriers write as a string or a number."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ProtocolError(f"{where}: no DTMF digit")
    return Dtmf(str(value))


def persona_for(dialplan: "Dialplan", meta: CallMeta, fallback: str | None = None) -> tuple["Persona | None", str]:
    """The persona answering ``meta``'s call, or None and why not: the one asked for by name, else the one
    owning the called number, else ``fallback`` (the carrier's configured persona), else the default."""
    if meta.persona:
        return persona_named(dialplan, meta.persona), f"no persona named {meta.persona!r}"
    if fallback and (meta.to_number is None or meta.to_number not in dialplan.by_number):
        return persona_named(dialplan, fallback), f"no persona named {fallback!r}"
    return dialplan.lookup(meta.to_number), f"no persona for number {meta.to_number!r}"


def persona_named(dialplan: "Dialplan", name: str) -> "Persona | None":
    return next((p for p in dialplan.personas if p.name == name), None)


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a credential from the wire with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def basic_auth_problem(request: web.Request, username: str, password: str | None, env_name: str) -> str | None:
    """None when the upgrade request carries HTTP Basic ``username``/``password``, else why not."""
    if not password:
        return f"{env_name} is not set, so no credentials can be checked"
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return "HTTP Basic credentials missing"
    try:
        user, sep, given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return "Authorization header is not valid Basic credentials"
    if not sep or not (secret_matches(user, username) & secret_matches(given, password)):
        return "wrong username or password"
    return None


def refuse_upgrade(request: web.Request, carrier: str, reason: str, *, basic_realm: str | None = None) -> web.Response:
    """Answer an unauthenticated media-stream upgrade with 401 before any audio flows."""
    log.warning("media_stream_refused", carrier=carrier, reason=reason, peer=request.remote, path=request.path)
    headers = {"WWW-Authenticate": f'Basic realm="{basic_realm}"'} if basic_realm else None
    return web.Response(status=401, text="unauthorized\n", headers=headers)


@dataclass(frozen=True)
class CarrierOptions:
    """The ``carriers.<name>`` fields every carrier module reads the same way."""

    enabled: bool = True
    auth: bool = True             # the carrier's authentication is checked (refusing when its secret is unset)
    persona: str | None = None    # answers calls that name no number this dialplan knows


def read_carrier_options(fields: Fields, dialplan: "Dialplan", *, has_auth: bool = True) -> CarrierOptions:
    options = CarrierOptions(enabled=fields.get("enabled", bool, True),
                             auth=fields.get("auth", bool, True) if has_auth else False,
                             persona=fields.get("persona", str, None))
    fields.section("call_control")   # the carrier's call-control API settings: read by telephony.rest
    if options.persona is not None and persona_named(dialplan, options.persona) is None:
        names = ", ".join(p.name for p in dialplan.personas)
        raise fields.error("persona", f"no persona named {options.persona!r} (known: {names})")
    return options


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

    def __init__(self, transport: Transport, session_cls: type[CarrierSession], services: "CallServices", *,
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
        self._ending: asyncio.Future | None = None   # set once the connection is being closed on our side

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
            self.protocol_error(str(exc))
            if isinstance(exc, FatalProtocolError):
                if self.call is not None:
                    self.call.hang_up(f"carrier protocol error: {exc}")
                self._end(self.refuse("unusable stream"))
            return
        self.handle(events)

    def handle(self, events: list[CarrierEvent]) -> None:
        call = self.call
        for event in events:
            if isinstance(event, Audio):
                if call is not None:
                    for frame in self._assembler.push(event.pcm):
                        call.on_caller_audio(frame)
            elif isinstance(event, MarkPlayed):
                if call is not None:
                    call.on_mark(event.name)
            elif isinstance(event, Started):
                if call is not None:
                    self.protocol_error("second start message on one stream ignored")
                    continue
                refusal = self.session.authorize(event.meta)
                if refusal is not None:
                    self.log.warning("media_stream_refused", reason=refusal, call_sid=event.meta.call_id)
                    self._end(self.refuse("unauthorized"))
                    return
                persona, why_not = persona_for(self.services.dialplan, event.meta, self.session.fallback_persona)
                if persona is None:
                    self.log.warning("no_persona_for_number", reason=why_not, to=event.meta.to_number,
                                     call_sid=event.meta.call_id)
                    self._end(self.refuse("no persona for this call"))
                    return
                from ..call import Call   # call.py imports this module's types; here, not per message
                call = self.call = Call(meta=event.meta, persona=persona, carrier=self.session,
                                        services=self.services, close_carrier=self.hang_up)
                loop = asyncio.get_running_loop()
                self.session.mark_reached = lambda name, on_mark=call.on_mark: loop.call_soon(on_mark, name)
                call.start()
            elif isinstance(event, Dtmf):
                if call is not None:
                    call.on_dtmf(event.digit)
            elif isinstance(event, Stopped):
                if call is not None:
                    call.hang_up(f"carrier: {event.reason}")
                self._end(self.transport.close())
                return

    def _end(self, closing: Awaitable[None]) -> None:
        """Stop acting on messages; ``closing`` ends the connection (``run`` waits for it)."""
        self._ending = asyncio.ensure_future(closing)

    def _no_start(self) -> None:
        if self.call is None and self._ending is None:
            self.log.warning("media_stream_no_start", waited_s=START_TIMEOUT_S)
            self._end(self.refuse("no start message"))

    async def refuse(self, reason: str) -> None:
        await self.transport.close(code=POLICY_VIOLATION, reason=reason)

    async def hang_up(self) -> None:
        """The call is over on our side: tell the carrier in-band where it can be told, then close."""
        if not self.transport.closed:
            self.session.send_hangup()
            await self.outbox.close()
        await self.transport.close()

    async def run(self) -> None:
        """Deliver messages until either side hangs up; the call, if any, is finished on return."""
        no_start = asyncio.get_running_loop().call_later(START_TIMEOUT_S, self._no_start)
        try:
            await self.transport.deliver(self.receive)
        except StreamEnded as end:
            if end.problem:
                self.protocol_error(end.problem)
        except asyncio.CancelledError:
            if self.call is not None:
                self.call.hang_up("server shutting down")
            raise
        finally:
            no_start.cancel()
            if self._ending is not None:
                await self._ending
            if self.call is not None:
                self.call.hang_up("carrier socket closed")
                await self.call.finished()
            if self.errors > MAX_LOGGED_PROTOCOL_ERRORS:
                (self.call.log if self.call else self.log).warning("carrier_protocol_errors_total",
                                                                   count=self.errors)
            await self.outbox.close()
            if not self.transport.closed:
                await self.transport.close()


async def serve_media_stream(request: web.Request, session_cls: type[CarrierSession],
                             services: "CallServices", *, protocols: tuple[str, ...] = (),
                             **session_kwargs) -> web.StreamResponse:
    """Accept one carrier media WebSocket and run its call until either side hangs up."""
    # No permessage-deflate: carriers don't ask for it, μ-law barely compresses, and uncompressed frames
    # are what lets the outbox write without a task wake-up per message.
    ws = await ServerWebSocket.accept(request, protocols=protocols, heartbeat_s=HEARTBEAT_S,
                                      max_message_bytes=services.settings.max_message_bytes)
    stream = MediaStream(WebSocketTransport(ws), session_cls, services, peer=request.remote, **session_kwargs)
    await stream.run()
    return ws.response


class MediaRoute:
    """One carrier's media WebSocket route: its ``carriers.<name>`` options, its authentication of the
    upgrade request (refused with 401 before any audio flows), then :func:`serve_media_stream`.

    Subclasses set ``carrier``, ``path``, ``session_cls`` (and ``protocols``), read their own config fields
    in :meth:`configure` and check credentials in :meth:`auth_problem`; the module's
    ``add_routes = TheRoute.add_routes``."""

    carrier: str = ""
    path: str = ""
    session_cls: type[CarrierSession]
    protocols: tuple[str, ...] = ()
    basic_realm: str | None = None     # set for HTTP Basic carriers: the 401 then asks for credentials

    def __init__(self, services: "CallServices") -> None:
        self.services = services
        fields = services.settings.carrier_fields(self.carrier)
        self.options = read_carrier_options(fields, services.dialplan)
        self.configure(fields)
        fields.reject_unknown()

    def configure(self, fields: Fields) -> None:
        """Read the carrier's own fields (secrets come from the environment, never from the file)."""

    def auth_problem(self, request: web.Request) -> str | None:
        """None when the upgrade request is authenticated, else why not (only asked while auth is on)."""
        return None

    def session_kwargs(self, request: web.Request) -> dict:
        return {"options": self.options, "query": request.query}

    async def media(self, request: web.Request) -> web.StreamResponse:
        if self.options.auth:
            problem = self.auth_problem(request)
            if problem is not None:
                return refuse_upgrade(request, self.carrier, problem, basic_realm=self.basic_realm)
        return await serve_media_stream(request, self.session_cls, self.services, protocols=self.protocols,
                                        **self.session_kwargs(request))

    @classmethod
    def add_routes(cls, app: web.Application, services: "CallServices") -> None:
        route = cls(services)
        if route.options.enabled:
            app.router.add_get(cls.path, route.media)


class BasicAuthRoute(MediaRoute):
    """A media route whose carrier authenticates with HTTP Basic on the upgrade: ``carriers.<name>.username``
    and the password from the environment variable ``password_env``."""

    default_username = "voicebot"
    password_env = ""
    basic_realm = "voicebot"

    def configure(self, fields: Fields) -> None:
        self.username = fields.get("username", str, self.default_username)
        self.password = os.environ.get(self.password_env) or None

    def auth_problem(self, request: web.Request) -> str | None:
        return basic_auth_problem(request, self.username, self.password, self.password_env)


async def serve_tcp_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           read_message: Callable[[asyncio.StreamReader], Awaitable[bytes | None]],
                           session_cls: type[CarrierSession], services: "CallServices", **session_kwargs) -> None:
    """Run one call over a plain TCP connection; ``read_message`` cuts the byte stream into messages."""
    peer = writer.get_extra_info("peername")
    stream = MediaStream(TcpTransport(reader, writer, read_message), session_cls, services,
                         peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None, **session_kwargs)
    await stream.run()

