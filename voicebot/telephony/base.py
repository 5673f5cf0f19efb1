"""What every carrier module shares: the wire-protocol interface, the events it produces, and helpers.

A carrier module only translates its wire messages into ``Started``/``Audio``/``MarkPlayed``/``Dtmf``/
``Stopped`` events and encodes ``send_audio``/``send_mark``/``send_clear``. Its route authenticates the upgrade
request and hands the connection to the call-level stream runner (``services.answer``, voicebot/answer.py),
which runs the ``Call``: carrier modules speak wire protocol only and never construct a call.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog
from aiohttp import web

from .. import jsoncodec, metrics
from ..config import Fields

if TYPE_CHECKING:
    from ..audio.codecs import WireCodec
    from ..call import CallServices
    from ..dialplan import Dialplan

log = structlog.get_logger("voicebot.telephony")

POLICY_VIOLATION = 1008             # WebSocket close code for refused streams


MAX_PROBLEM_CHARS = 300


class ProtocolError(Exception):
    """A carrier message we cannot use; the message says what was wrong with it. It often quotes what the peer
    sent, which may be a whole 64 kB frame: past ``MAX_PROBLEM_CHARS`` it is cut, as it becomes one log line."""

    def __init__(self, problem: str) -> None:
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = f"{problem[:MAX_PROBLEM_CHARS]}… ({len(problem)} characters)"
        super().__init__(problem)


class FatalProtocolError(ProtocolError):
    """A message that makes the whole stream unusable (e.g. a start naming a codec we cannot play):
    logged like any protocol error, then the connection is closed. ``told`` is the close reason the peer reads
    (short, nothing secret; default "unusable stream")."""

    def __init__(self, problem: str, *, told: str | None = None) -> None:
        super().__init__(problem)
        self.told = told


@dataclass
class CallMeta:
    carrier: str
    call_id: str                     # the carrier's id for the call (Twilio CallSid, …)
    stream_id: str | None = None     # the carrier's id for this media stream (Twilio streamSid, …)
    from_number: str | None = None
    to_number: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    persona: str | None = None       # a persona asked for by name (route/config/custom parameter), else by number
    engine: str | None = None        # an engine asked for instead of the persona's own (realtime, chain, auto)
    direction: str = "inbound"       # "outbound" for calls we placed


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
    can_flush: bool = True      # send_clear empties the carrier's buffer (else what was sent still plays)
    # Carriers that keep little or no playback buffer of their own cap how far ahead we may send.
    max_lead_ms: int | None = None
    # The most bot audio one outgoing message may carry (whole 20 ms frames); None: any length.
    max_chunk_ms: int | None = 20
    # The persona for calls that name no number the dialplan knows (carrier config); None: the default.
    fallback_persona: str | None = None
    # Ending the stream ends the call, or hands it back to the carrier's own flow (the next TwiML verb, NCCO
    # action, applet or dialplan step; none there: the call ends). Where it does not, hang-up needs the
    # carrier's call-control API, and this says why.
    in_band_hang_up: bool = True
    in_band_hang_up_missing: str = ""

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

    def call_started(self, call) -> None:
        """The call this stream carries is about to start (a carrier that shows it live subscribes here)."""


# -- helpers for carrier modules -------------------------------------------------------------------

def parse_json_object(text: str) -> dict:
    """One JSON text frame that must hold an object."""
    try:
        msg = jsoncodec.loads(text)
    except json.JSONDecodeError as exc:     # orjson's error is one too
        raise ProtocolError(f"frame is not JSON ({exc.msg} at char {exc.pos}): {text[:60]!r}") from None
    except ValueError as exc:               # JSON the reader cannot take (nested too deep, a 5000-digit number)
        raise ProtocolError(f"frame is not usable JSON ({exc}): {text[:60]!r}") from None
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


def decode_audio(codec: "WireCodec", payload: bytes, where: str) -> np.ndarray:
    """A carrier's audio payload as 8 kHz PCM. One the codec cannot take (an L16 payload that is not whole
    samples) is a ProtocolError naming where it came from: the message is dropped, the call goes on."""
    try:
        return codec.decode(payload)
    except ValueError as exc:
        raise ProtocolError(f"{where}: {exc}") from None


DTMF_KEYS = frozenset("0123456789*#ABCD")


def dtmf(value: object, where: str) -> Dtmf:
    """A DTMF event from a digit field, which carriers write as a string or a number. One key of the keypad
    (RFC 4733: 0-9, *, #, A-D): anything else would reach the model as if the caller had typed it."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ProtocolError(f"{where}: no DTMF digit")
    digit = str(value).upper()
    if digit not in DTMF_KEYS:
        raise ProtocolError(f"{where}: {value!r} is not a DTMF key (0-9, *, #, A-D)")
    return Dtmf(digit)


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
    metrics.stream_refused(carrier, "auth")
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
    if options.persona is not None and dialplan.named(options.persona) is None:
        names = ", ".join(p.name for p in dialplan.personas)
        raise fields.error("persona", f"no persona named {options.persona!r} (known: {names})")
    return options


class MediaRoute:
    """One carrier's media WebSocket route: its ``carriers.<name>`` options, its authentication of the
    upgrade request (refused with 401 before any audio flows), then the call-level stream runner.

    Subclasses set ``carrier``, ``path``, ``session_cls`` (and ``protocols``), read their own config fields
    in :meth:`configure` and check credentials in :meth:`auth_problem`; the module's
    ``add_routes = TheRoute.add_routes``."""

    carrier: str = ""
    path: str = ""
    session_cls: type[CarrierSession]
    protocols: tuple[str, ...] = ()
    basic_realm: str | None = None     # set for HTTP Basic carriers: the 401 then asks for credentials
    auth_required = False   # always authenticated: no carriers.<name>.auth to turn it off

    def __init__(self, services: "CallServices") -> None:
        self.services = services
        fields = services.settings.carrier_fields(self.carrier)
        self.options = read_carrier_options(fields, services.dialplan, has_auth=not self.auth_required)
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
        if self.options.auth or self.auth_required:
            problem = self.auth_problem(request)
            if problem is not None:
                return refuse_upgrade(request, self.carrier, problem, basic_realm=self.basic_realm)
        return await self.services.answer.websocket(request, self.session_cls, protocols=self.protocols,
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
