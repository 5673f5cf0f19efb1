"""What the fake carrier REST APIs share: a loopback aiohttp server, the calls it knows, and what it recorded.

A fake follows its vendor's protocol to the letter where we rely on it: credentials are checked the vendor's way,
paths and bodies are validated, answers carry the vendor's success and error shapes (codes included), and every
request is recorded with its time on the event loop's clock. A simulated caller registers its call with
:meth:`FakeCarrierApi.register_call`; its listener hears each update of the call (hang-up, transfer, DTMF) as a
:class:`CallUpdate`, whose ``ends_stream`` says whether the real carrier would now end the media stream (Twilio
sends ``stop`` and closes the socket after a REST hang-up or new TwiML).
"""

from __future__ import annotations

import abc

import asyncio
import base64
import binascii
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

log = structlog.get_logger("voicebot.simulator.carrier_api")

FETCH_TIMEOUT_S = 5.0


@dataclass
class ApiRequest:
    """One request the fake received, and the status it answered."""

    at: float                  # loop time when it arrived
    method: str
    path: str
    headers: dict[str, str]
    body: str
    status: int | None = None  # None while the answer is held back (see ``hold``)

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body, keep_blank_values=True))

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


@dataclass(frozen=True)
class CallUpdate:
    """Something the API did to a call."""

    call_id: str
    action: str                  # "hang_up" | "transfer" | "send_dtmf" | "redirect" (new instructions, not a dial)
    at: float                    # loop time
    ends_stream: bool            # the real carrier would now end the call's media stream
    target: str | None = None    # transfer: "+15551230000" or "sip:…", as the carrier will dial it
    digits: str | None = None    # send_dtmf, as the carrier received them
    document: str | None = None  # the instructions that carried the transfer (TwiML, Plivo XML, NCCO JSON)
    error: str | None = None     # the instructions could not be fetched or read: the carrier would fail the call


@dataclass
class FakeCall:
    call_id: str
    from_: str | None = None
    to: str | None = None
    on_update: Callable[[CallUpdate], None] | None = None
    live: bool = True            # False once hung up (by the API or by the caller)
    updates: list[CallUpdate] = field(default_factory=list)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic ``Authorization`` header, or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


def dialled(root: ET.Element, readers: Mapping[str, Callable[[str], str]]) -> tuple[str | None, str | None]:
    """What call instructions ``<Response><Dial>`` with exactly one noun of ``readers`` dial: (target, None); (None,
    why the dial fails) when the noun's reader raises ValueError; (None, None) when they dial no single target."""
    dial = root.find("Dial")
    nouns = [] if dial is None else [child for child in dial if child.tag in readers]
    if len(nouns) != 1:
        return None, None
    try:
        return readers[nouns[0].tag]((nouns[0].text or "").strip()), None
    except ValueError as exc:
        return None, str(exc)


class FakeCarrierApi(abc.ABC):
    """A carrier's call-control API on loopback. Subclasses add their routes in :meth:`add_routes`."""

    carrier: ClassVar[str] = ""

    def __init__(self) -> None:
        self.calls: dict[str, FakeCall] = {}
        self.requests: list[ApiRequest] = []
        self.updates: list[CallUpdate] = []
        self.listener_errors: list[BaseException] = []
        self.app = web.Application(middlewares=[self._record])
        self.add_routes(self.app.router)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._released = asyncio.Event()
        self._released.set()
        self._waiters: list[tuple[str, Callable[[Any], bool], asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    @abc.abstractmethod
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The vendor's API paths on ``router``."""

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "FakeCarrierApi":
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        self._http = aiohttp.ClientSession()
        return self

    async def close(self) -> None:
        self._released.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "FakeCarrierApi":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- what a test (or the simulated caller) does --------------------------------------------------------
    def register_call(self, call_id: str, *, from_: str | None = None, to: str | None = None,
                      on_update: Callable[[CallUpdate], None] | None = None) -> FakeCall:
        """A live call the API knows (the simulated caller's); ``on_update`` hears what the API does to it."""
        call = self.calls[call_id] = FakeCall(call_id, from_, to, on_update)
        return call

    def end_call(self, call_id: str) -> None:
        """The call ended on the caller's side: later actions on it get the vendor's "call ended" answer."""
        self.calls[call_id].live = False

    def hold(self) -> None:
        """Answer nothing until :meth:`release` (a carrier that stopped answering: clients must time out)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def wait_for_update(self, predicate: Callable[[CallUpdate], bool] = lambda update: True,
                              timeout: float = 5.0) -> CallUpdate:
        """The first update (past or coming) that ``predicate`` accepts."""
        return await self._wait("update", self.updates, predicate, timeout)

    async def wait_for_request(self, predicate: Callable[[ApiRequest], bool] = lambda request: True,
                               timeout: float = 5.0) -> ApiRequest:
        """The first request (past or coming, answered or held) that ``predicate`` accepts."""
        return await self._wait("request", self.requests, predicate, timeout)

    # -- for the vendor modules ----------------------------------------------------------------------------
    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def apply(self, call: FakeCall, action: str, *, ends_stream: bool, **details) -> CallUpdate:
        """Record an update of ``call`` and tell its listener."""
        update = CallUpdate(call.call_id, action, self.now(), ends_stream, **details)
        if action == "hang_up":
            call.live = False
        call.updates.append(update)
        self.updates.append(update)
        if call.on_update is not None:
            try:
                call.on_update(update)
            except Exception as exc:     # the listener is the test's code: keep serving, let the test look
                self.listener_errors.append(exc)
                log.warning("carrier_api_listener_failed", carrier=self.carrier, call_id=call.call_id,
                            error=f"{type(exc).__name__}: {exc}")
        self._wake("update", update)
        return update

    def later(self, coroutine) -> None:
        """Run ``coroutine`` after the answer, as the carrier does what it accepted (e.g. fetch a document)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def instructions_request(url: str, method: str, params: dict[str, str]) -> tuple[str, dict[str, str] | None]:
        """(the URL, the form) of a request for call instructions: parameters in the form for POST, in the
        query for GET (Twilio-style signatures cover exactly that URL and form)."""
        if method == "GET":
            return str(URL(url).update_query(params)), None
        return url, params

    async def fetch(self, url: str, method: str, form: dict[str, str] | None,
                    headers: dict[str, str] | None = None) -> tuple[str | None, str | None]:
        """(the document, None) fetched as the carrier fetches call instructions, or (None, what went wrong)."""
        try:
            async with self._http.request(method, url, data=form, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
                text = await response.text()
                content_type = response.content_type
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return None, f"fetching {method} {url} failed: {type(exc).__name__}: {exc}"
        if status != 200:
            return None, f"{method} {url} answered HTTP {status}: {text[:200]!r}"
        if content_type not in ("text/xml", "application/xml"):
            return None, f"{method} {url} answered {content_type!r}, not XML"
        return text, None

    # -- machinery -----------------------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler) -> web.StreamResponse:
        entry = ApiRequest(self.now(), request.method, request.path, dict(request.headers),
                           await request.text())
        self.requests.append(entry)
        self._wake("request", entry)
        await self._released.wait()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        entry.status = response.status
        return response

    async def _wait(self, kind: str, seen: list, predicate: Callable[[Any], bool], timeout: float):
        for item in seen:
            if predicate(item):
                return item
        future = asyncio.get_running_loop().create_future()
        waiter = (kind, predicate, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.carrier} API: no matching {kind} within {timeout} s "
                                 f"(requests so far: {[(r.method, r.path, r.status) for r in self.requests]})") from None
        finally:
            self._waiters.remove(waiter)

    def _wake(self, kind: str, item: Any) -> None:
        for waiter_kind, predicate, future in self._waiters:
            if waiter_kind == kind and not future.done() and predicate(item):
                future.set_result(item)
