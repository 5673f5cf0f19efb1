"""What every carrier's call-control client shares: the interface, what it can do, and how it talks HTTP.

A carrier module subclasses :class:`CallControl`: it reads its configuration once (:meth:`CallControl.configure`,
which also says which actions the configured credentials allow and why the others are off) and implements
``_hang_up``/``_transfer``/``_send_dtmf`` with :meth:`CallControl._request`; a carrier that places outbound
calls (campaigns) also implements ``_dial``, ``call_status``, ``find_call`` and ``read_callback``, which verifies
and parses the carrier's status and answering-machine callbacks. Everything else lives here once:
refusing an action that is not available, validating call ids, transfer targets and DTMF strings, timeouts,
turning a vendor's error answer into a :class:`CallControlError` that names its status, code and message, and
one log line per action. Credentials travel only in request headers; they never reach a log line or an
exception.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import structlog
from yarl import URL

from ...config import Fields, Settings, absolute_url, url_problem

if TYPE_CHECKING:
    from ..base import CallMeta
    from .documents import TransferDocuments

log = structlog.get_logger("voicebot.call_control")

ACTIONS = ("hang_up", "transfer", "send_dtmf")
CONNECT_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 5.0
MAX_DTMF_DIGITS = 64
MAX_VENDOR_MESSAGE_CHARS = 300

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SIP_URI = re.compile(r"sips?:[^\s<>\"]+", re.IGNORECASE)
_DTMF = re.compile(r"[0-9*#w]+")
_UNSAFE_IN_PATH = re.compile(r"[/?#\s]")


class CallControlError(Exception):
    """A call-control action failed. The message names the carrier, the action, the call and what went wrong:
    the HTTP status with the vendor's error code and message, a timeout, or why the action is not available."""

    def __init__(self, carrier: str, action: str, call_id: str, problem: str, *, status: int | None = None,
                 code: str | None = None, request_id: str | None = None) -> None:
        self.carrier = carrier
        self.action = action
        self.call_id = call_id
        self.problem = problem
        self.status = status            # HTTP status of the vendor's answer; None: no answer (timeout, network)
        self.code = code                # the vendor's own error code, as text
        self.request_id = request_id    # the vendor's id of the request, for its support
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{carrier} {action} of call {call_id!r}: {problem}{suffix}")


@dataclass(frozen=True)
class Capabilities:
    """Which actions are usable with the configured credentials."""

    hang_up: bool = False
    transfer: bool = False
    send_dtmf: bool = False


@dataclass(frozen=True)
class Target:
    """Where a transfer goes: an E.164 number or a SIP URI."""

    kind: str       # "number" | "sip"
    value: str      # "+15551230000" or "sip:desk@pbx.example.com"

    @property
    def digits(self) -> str:
        """The number without its +, as Plivo and Vonage write it."""
        return self.value.lstrip("+")


def parse_target(text: str) -> Target:
    """A transfer target from its text; ValueError naming what was wrong otherwise."""
    if isinstance(text, str):
        if _E164.fullmatch(text.strip()):
            return Target("number", text.strip())
        if _SIP_URI.fullmatch(text.strip()):
            return Target("sip", text.strip())
    raise ValueError(f"transfer target {text!r} is neither an E.164 number (+15551230000) nor a sip: URI")


def check_digits(digits: str) -> str:
    """DTMF to play: 0-9, * and #, with w for a half-second pause; ValueError otherwise."""
    if not isinstance(digits, str) or not _DTMF.fullmatch(digits):
        raise ValueError(f"DTMF digits {digits!r} must be 0-9, * and # (w: half-second pause)")
    if len(digits) > MAX_DTMF_DIGITS:
        raise ValueError(f"{len(digits)} DTMF digits is more than the {MAX_DTMF_DIGITS} one action may send")
    return digits


@dataclass(frozen=True)
class ApiConfig:
    """Where a carrier's API is and who we are to it."""

    base_url: str
    user: str | None                              # account or application id (not a secret)
    secret: Any = field(default=None, repr=False)  # auth token, API key or signing key
    documents: "TransferDocuments | None" = None  # for carriers that fetch a transfer's instructions from us


@dataclass(frozen=True)
class Configured:
    """A carrier's call-control configuration as read from the settings and the environment."""

    capabilities: Capabilities
    missing: dict[str, str]          # action → why it is not available
    config: ApiConfig
    dial_problem: str | None = None  # what stands in the way of dialling, for a client that dials


def configured(config: ApiConfig, problems: Mapping[str, str | None], *, dial: str | None = None) -> Configured:
    """Capabilities from what stands in each action's way (None: nothing). An action the carrier module does
    not name is off: a client offers only what it implements."""
    problems = {action: problems.get(action, "not supported by this carrier's client") for action in ACTIONS}
    return Configured(Capabilities(**{action: problem is None for action, problem in problems.items()}),
                      {action: problem for action, problem in problems.items() if problem is not None}, config,
                      dial)


@dataclass(frozen=True)
class DialRequest:
    """One outbound call to place."""

    to: str                   # E.164
    from_: str                # E.164, a number of ours at the carrier
    attempt_token: str        # the signed attempt id (campaigns.attempt_tokens)
    callback_url: str         # our URL for status, AMD and event callbacks, already carrying ?attempt=<token>
    media_url: str | None     # Twilio: our Voice webhook with ?attempt=<token>; Telnyx: the wss stream_url
    machine_detection: bool   # ask the carrier's answering-machine detection (async, after the greeting)
    ring_timeout_s: int       # how long it rings before the carrier gives up (no-answer)


# Carrier-neutral call progress, in the order a call goes through it.
PROGRESS = ("dialed", "ringing", "answered", "completed", "busy", "no-answer", "failed", "canceled")
ANSWERED_BY = ("human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
               "unknown")


@dataclass(frozen=True)
class CallProgress:
    """Where a placed call is, from a callback or a status query. ``status`` is one of :data:`PROGRESS`:
    "dialed" (the carrier has the call, it does not ring yet) comes only from status queries; callbacks
    start at "ringing". An answering-machine verdict comes as ``answered_by`` with status "answered"."""

    carrier_call_id: str
    status: str
    answered_by: str | None = None   # one of ANSWERED_BY
    duration_s: float | None = None  # talk time, once ended
    sequence: int | None = None      # the carrier's callback order (Twilio SequenceNumber), when it gives one
    detail: str | None = None        # why it failed or how it ended (SIP code, hangup cause)
    attempt_token: str | None = None  # as the carrier carried it (callback URL query, Telnyx client_state)
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ended(self) -> bool:
        return self.status in PROGRESS[3:]


class CallbackRefused(Exception):
    """A callback that is not the carrier's, or not fresh: answer 403 and change nothing. The message says why."""


CALLBACK_MAX_AGE = timedelta(minutes=5)


class SeenCallbacks:
    """Callbacks accepted within the last ``max_age`` by key: a second delivery of one is a replay. Older ones
    are refused by their signed time (where the carrier signs one), so their keys are let go, oldest first
    (O(1) per callback: this runs for every callback of a campaign)."""

    def __init__(self, max_age: timedelta = CALLBACK_MAX_AGE) -> None:
        self.max_age = max_age
        self._seen: set[tuple] = set()
        self._order: deque[tuple[datetime, tuple]] = deque()

    def first(self, key: tuple, now: datetime) -> bool:
        """True the first time ``key`` comes (and remembers it), False for a repeat."""
        horizon = now - 2 * self.max_age      # twice: the signed times may be off either way
        while self._order and self._order[0][0] < horizon:
            self._seen.discard(self._order.popleft()[1])
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append((now, key))
        return True


def check_fresh(at: datetime, now: datetime, what: str) -> None:
    """CallbackRefused when ``at`` is more than CALLBACK_MAX_AGE from ``now`` (either way)."""
    skew = now - at
    if skew > CALLBACK_MAX_AGE:
        raise CallbackRefused(f"{what} is {skew.total_seconds():.0f} s old (more than "
                              f"{CALLBACK_MAX_AGE.total_seconds():.0f} s: a replay)")
    if -skew > CALLBACK_MAX_AGE:
        raise CallbackRefused(f"{what} is {-skew.total_seconds():.0f} s in the future")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by name, whatever its case (a plain dict or aiohttp's headers)."""
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)


def call_control_fields(settings: Settings, carrier: str) -> Fields:
    """``carriers.<carrier>.call_control``: this package's part of a carrier's section (the wire module leaves
    it alone); the caller reads its fields and then calls ``reject_unknown``."""
    return settings.carrier_fields(carrier).section("call_control")


def optional_url(fields: Fields, key: str) -> str | None:
    """An absolute http(s) URL field without its trailing slash, or None when absent."""
    value = fields.get(key, str, None)
    if value is None:
        return None
    if not absolute_url(value):
        raise fields.error(key, url_problem(value))
    return value.rstrip("/")


def basic_auth(user: str, password: str) -> dict[str, str]:
    """HTTP Basic credentials as a header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def missing_env(environ: Mapping[str, str], *names: str) -> str | None:
    """None when every variable is set, else which are not."""
    unset = [name for name in names if not environ.get(name)]
    if not unset:
        return None
    return f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set"


class CallControl(ABC):
    """One carrier's call-control API client, shared by all calls of the process.

    ``meta.call_id`` is the carrier's id of the call (Twilio/SignalWire CallSid, Telnyx call_control_id, Plivo
    call uuid, Vonage uuid). Each action raises :class:`CallControlError` when it is not available, its input
    is invalid, or the carrier refuses or does not answer in time."""

    carrier: ClassVar[str] = ""
    dials: ClassVar[bool] = False        # the client places outbound calls (implements _dial and the rest)
    request_id_headers: ClassVar[tuple[str, ...]] = ()
    # Carriers that fetch a transfer's instructions from us render them with this (see .documents).
    document_renderer: ClassVar[Callable[[Target], str] | None] = None

    def __init__(self, http: aiohttp.ClientSession, setup: Configured, *,
                 timeout: aiohttp.ClientTimeout | None = None) -> None:
        self.http = http
        self.capabilities = setup.capabilities
        self.missing = dict(setup.missing)
        self.config = setup.config
        self.dial_problem = (setup.dial_problem if self.dials else
                             f"{self.carrier}'s client cannot place calls (campaigns dial through twilio or telnyx)")
        self.timeout = timeout or aiohttp.ClientTimeout(total=TOTAL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)

    @classmethod
    @abstractmethod
    def configure(cls, settings: Settings) -> Configured:
        """Read the carrier's configuration and credentials; say which actions they allow."""

    @classmethod
    def from_settings(cls, settings: Settings, http: aiohttp.ClientSession, **kwargs) -> "CallControl":
        return cls(http, cls.configure(settings), **kwargs)

    # -- the interface ----------------------------------------------------------------------------------
    async def hang_up(self, meta: "CallMeta") -> None:
        """End the call."""
        self._admit("hang_up", meta)
        await self._hang_up(meta)

    async def transfer(self, meta: "CallMeta", target: str) -> None:
        """Connect the caller to ``target`` (E.164 "+1555…" or a "sip:…" URI). The caller is then no longer ours:
        close our end of the media stream, without hanging up (Twilio, SignalWire and Plivo end it themselves;
        Telnyx and Vonage would keep streaming the caller to us)."""
        call_id = self._admit("transfer", meta)
        try:
            parsed = parse_target(target)
        except ValueError as exc:
            raise self._error("transfer", call_id, str(exc)) from None
        await self._transfer(meta, parsed)

    async def send_dtmf(self, meta: "CallMeta", digits: str) -> None:
        """Play DTMF digits to the caller's side of the call (0-9 * #, w: half-second pause)."""
        call_id = self._admit("send_dtmf", meta)
        try:
            check_digits(digits)
        except ValueError as exc:
            raise self._error("send_dtmf", call_id, str(exc)) from None
        await self._send_dtmf(meta, digits)

    async def dial(self, request: DialRequest) -> str:
        """Place an outbound call; the carrier's call id. CallControlError when the carrier refuses it or
        this client cannot dial (``dial_problem`` says why)."""
        if self.dial_problem is not None:
            raise self._error("dial", request.to, f"not available: {self.dial_problem}")
        return await self._dial(request)

    async def _dial(self, request: DialRequest) -> str:
        raise self._error("dial", request.to, f"not available: {self.dial_problem}")

    async def call_status(self, carrier_call_id: str) -> CallProgress | None:
        """The call's current state at the carrier (reconciling after a crash); None: the carrier does not
        know it."""
        raise self._error("call_status", carrier_call_id, f"not available: {self.dial_problem}")

    async def find_call(self, to: str, from_: str, since: datetime) -> list[CallProgress]:
        """Calls from ``from_`` to ``to`` created since ``since`` (a dial whose answer was lost)."""
        raise self._error("find_call", to, f"not available: {self.dial_problem}")

    def read_callback(self, url: str, headers: Mapping[str, str], body: bytes, *,
                      now: datetime | None = None) -> CallProgress | None:
        """Verify one status/AMD/event callback and parse it; None when it changes nothing (e.g. Twilio's
        ``initiated``). ``url``: the public URL the carrier posted to (query included); ``body``: the raw
        bytes. Raises CallbackRefused (answer 403) when it is not genuine, too old or a replay."""
        raise CallbackRefused(f"{self.carrier} sends no call callbacks we can verify: {self.dial_problem}")

    # -- what a carrier implements (``meta.call_id`` is checked by then) ----------------------------------
    @abstractmethod
    async def _hang_up(self, meta: "CallMeta") -> None: ...

    @abstractmethod
    async def _transfer(self, meta: "CallMeta", target: Target) -> None: ...

    async def _send_dtmf(self, meta: "CallMeta", digits: str) -> None:
        """Carriers whose API plays digits override this (the capability stays off for the others, so
        ``send_dtmf`` never gets here for them)."""
        raise self._error("send_dtmf", meta.call_id, f"{self.carrier}'s call-control API cannot play digits")

    def auth_headers(self) -> dict[str, str]:
        """The credentials of one request (built per request: some carriers sign short-lived tokens)."""
        return {}

    def vendor_error(self, body: Any, text: str) -> tuple[str | None, str]:
        """(the vendor's error code, its message) from an error answer's body."""
        return None, text.strip()

    def request_id(self, headers: Mapping[str, str], body: Any) -> str | None:
        return next((headers[name] for name in self.request_id_headers if headers.get(name)), None)

    # -- shared machinery ---------------------------------------------------------------------------------
    def _admit(self, action: str, meta: "CallMeta") -> str:
        call_id = getattr(meta, "call_id", None)
        if not isinstance(call_id, str) or not call_id or _UNSAFE_IN_PATH.search(call_id):
            raise self._error(action, str(call_id), "the call has no usable carrier call id")
        if not getattr(self.capabilities, action):
            raise self._error(action, call_id, f"not available: {self.missing.get(action, 'not supported')}")
        return call_id

    def _error(self, action: str, call_id: str, problem: str, **details) -> CallControlError:
        return CallControlError(self.carrier, action, call_id, problem, **details)

    async def _request(self, action: str, call_id: str, method: str, url: URL, *,
                       form: Mapping[str, str] | list[tuple[str, str]] | None = None, json_body: Any = None,
                       ok: Collection[int] = (200,), done_already: Collection[str] = ()) -> Any:
        """Send one request; the parsed JSON answer (or None) when its status is in ``ok``. An error answer
        whose vendor code is in ``done_already`` (the call already ended) counts as success."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        headers = {"Accept": "application/json", **self.auth_headers()}
        try:
            async with self.http.request(method, url, headers=headers, data=form, json=json_body,
                                         timeout=self.timeout, allow_redirects=False) as response:
                status = response.status
                text = await response.text(errors="replace")
                response_headers = response.headers
        except asyncio.TimeoutError:
            raise self._failed(action, call_id, started, f"no answer within {self.timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise self._failed(action, call_id, started, f"request failed: {type(exc).__name__}: {exc}") from None
        body = _json_or_none(text)
        request_id = self.request_id(response_headers, body)
        elapsed_ms = round((loop.time() - started) * 1000, 1)
        if status in ok:
            log.info("call_control", carrier=self.carrier, call_id=call_id, action=action, status=status,
                     elapsed_ms=elapsed_ms, request_id=request_id)
            return body
        code, message = self.vendor_error(body, text)
        if code is not None and code in done_already:
            log.info("call_control", carrier=self.carrier, call_id=call_id, action=action, status=status,
                     elapsed_ms=elapsed_ms, request_id=request_id, outcome="call already ended", code=code)
            return body
        message = message[:MAX_VENDOR_MESSAGE_CHARS] or "(no message)"
        problem = f"HTTP {status}" + (f", code {code}" if code is not None else "") + f": {message}"
        error = self._error(action, call_id, problem, status=status, code=code, request_id=request_id)
        log.warning("call_control_failed", carrier=self.carrier, call_id=call_id, action=action, status=status,
                    elapsed_ms=elapsed_ms, request_id=request_id, code=code, problem=problem)
        raise error

    def _failed(self, action: str, call_id: str, started: float, problem: str) -> CallControlError:
        elapsed_ms = round((asyncio.get_running_loop().time() - started) * 1000, 1)
        log.warning("call_control_failed", carrier=self.carrier, call_id=call_id, action=action, status=None,
                    elapsed_ms=elapsed_ms, problem=problem)
        return self._error(action, call_id, problem)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None
