"""HTTP plumbing shared by the StepFun endpoint clients (ASR, chat, TTS, voices).

* Base URL: ``https://api.stepfun.com/step_plan/v1`` unless overridden (the emulator serves the same paths,
  e.g. ``http://127.0.0.1:9000/step_plan/v1``). The WebSocket base is derived from it (``https`` → ``wss``,
  ``http`` → ``ws``).
* Every request carries ``Authorization: Bearer <key>``. The key lives only in that header: it is never logged,
  never put into an exception message and never shown by ``repr``. With no key the header is left out and the
  server answers 401, which becomes :class:`~voicebot.stepfun.errors.StepFunAuthError`.
* Timeouts are per call: ``connect`` bounds getting a connection, ``total`` the whole exchange including reading
  a streamed body. Each client has defaults; each call may override them.
* A non-2xx answer ``{"error":{"message","type"}}`` becomes the typed error of its status (401/403 auth,
  402/429 quota, 5xx unavailable, other 4xx request), carrying ``type``, ``code`` and the ``X-Trace-Id``.
  Connection failures, timeouts and broken streams become :class:`StepFunUnavailable`.
* :class:`SSEReader` yields the payload of each ``data:`` line of a ``text/event-stream`` body, ``[DONE]``
  included (the caller decides what ends its stream).
* :class:`SseStream` is the lifecycle every streamed endpoint shares (ASR, chat, TTS over SSE): start the POST,
  read and decode the events, map transport failures, drop the connection when stopped. Subclasses only say
  what an event, ``[DONE]`` and the end of the body mean.

The clients take one :class:`aiohttp.ClientSession` shared by the whole process; they never close it.
"""

from __future__ import annotations

import abc

import asyncio
from dataclasses import dataclass, replace
from typing import Any, Generic, Mapping, Self, TypeVar

import aiohttp
import structlog

from .. import jsoncodec, latency
from .errors import StepFunError, StepFunRequestError, StepFunUnavailable, error_for_status

log = structlog.get_logger("voicebot.stepfun")

DEFAULT_BASE_URL = "https://api.stepfun.com/step_plan/v1"
TRACE_HEADER = "X-Trace-Id"
SSE_DONE = "[DONE]"
MAX_ERROR_BODY = 64 * 1024
MAX_SSE_LINE = 32 * 1024 * 1024

T = TypeVar("T")


def normalize_base_url(base_url: str) -> str:
    """``base_url`` without its trailing slash; it must be an http(s) URL."""
    url = (base_url or "").strip().rstrip("/")
    if not (url.startswith("https://") or url.startswith("http://")):
        raise ValueError(f"StepFun base URL must start with https:// or http://, got {base_url!r}")
    return url


def ws_base_url(base_url: str) -> str:
    """The WebSocket base for an HTTP base: ``https://…`` → ``wss://…``, ``http://…`` → ``ws://…``."""
    url = (base_url or "").strip().rstrip("/")
    if url.startswith("wss://") or url.startswith("ws://"):
        return url
    url = normalize_base_url(url)
    return "wss://" + url[len("https://"):] if url.startswith("https://") else "ws://" + url[len("http://"):]


@dataclass(frozen=True)
class Timeouts:
    """Per-call limits in seconds. ``total=None`` means no overall limit (``connect`` still applies);
    ``read`` bounds each wait for more of the answer (None: only ``total`` does)."""

    connect: float = 5.0
    total: float | None = 30.0
    read: float | None = None

    def override(self, connect: float | None = None, total: float | None = None,
                 read: float | None = None) -> "Timeouts":
        return replace(self, connect=self.connect if connect is None else connect,
                       total=self.total if total is None else total, read=self.read if read is None else read)

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, connect=self.connect, sock_connect=self.connect,
                                     sock_read=self.read)


def trace_id_of(resp: aiohttp.ClientResponse) -> str | None:
    return resp.headers.get(TRACE_HEADER)


def error_from_body(status: int, body: bytes | str, *, what: str, trace_id: str | None) -> StepFunError:
    """The typed error for a non-2xx answer whose body is (usually) ``{"error":{"message","type"}}``."""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    message: str | None = None
    err_type: str | None = None
    code: str | None = None
    try:
        doc = jsoncodec.loads(text) if text.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            message = err.get("message") if isinstance(err.get("message"), str) else None
            err_type = err.get("type") if isinstance(err.get("type"), str) else None
            code = None if err.get("code") is None else str(err.get("code"))
        elif isinstance(err, str):
            message = err
        elif isinstance(doc.get("message"), str):
            message = doc["message"]
    if not message:
        snippet = " ".join(text.split())[:200]
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return error_for_status(status, f"{what}: {message}", type=err_type, code=code, trace_id=trace_id)


async def error_from_response(resp: aiohttp.ClientResponse, what: str) -> StepFunError:
    """Read (at most 64 KiB of) an error answer and turn it into the typed error of its status."""
    trace_id = trace_id_of(resp)
    body = bytearray()
    try:
        while len(body) < MAX_ERROR_BODY:
            chunk = await resp.content.read(MAX_ERROR_BODY - len(body))
            if not chunk:
                break
            body += chunk
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # the status alone still says what happened
    err = error_from_body(resp.status, bytes(body), what=what, trace_id=trace_id)
    log.warning("stepfun.http_error", what=what, status=resp.status, type=err.type, code=err.code,
                trace_id=trace_id, message=err.message)
    return err


def transport_error(exc: BaseException, what: str, *, trace_id: str | None = None) -> StepFunUnavailable:
    """A connection failure, timeout or broken body as :class:`StepFunUnavailable` (never mentions headers)."""
    if isinstance(exc, asyncio.TimeoutError):
        detail = "timed out"
    else:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return StepFunUnavailable(f"{what}: {detail}", trace_id=trace_id)


class StepFunHttp:
    """Base URL, key and timeouts of one client; sends requests and checks their status."""

    __slots__ = ("session", "base_url", "ws_base_url", "_api_key", "timeouts")

    def __init__(self, session: aiohttp.ClientSession, base_url: str = DEFAULT_BASE_URL,
                 api_key: str | None = None, *, timeouts: Timeouts | None = None) -> None:
        self.session = session
        self.base_url = normalize_base_url(base_url)
        self.ws_base_url = ws_base_url(self.base_url)
        self._api_key = api_key or None
        self.timeouts = timeouts or Timeouts()

    def __repr__(self) -> str:
        return f"StepFunHttp(base_url={self.base_url!r}, key={'set' if self._api_key else 'missing'})"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def ws_url(self, path: str) -> str:
        return f"{self.ws_base_url}/{path.lstrip('/')}"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        if extra:
            headers.update(extra)
        return headers

    async def request(self, method: str, path: str, *, what: str, json_body: Any = None,
                      data: Any = None, params: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None,
                      timeouts: Timeouts | None = None) -> aiohttp.ClientResponse:
        """Send one request; return the 2xx response with its body unread (the caller releases it).

        Raises the typed error of a non-2xx status, or :class:`StepFunUnavailable` on connection failure
        and timeout.
        """
        t = timeouts or self.timeouts
        kwargs: dict[str, Any] = {"headers": self.headers(headers), "timeout": t.client_timeout()}
        if json_body is not None:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
        if params:
            kwargs["params"] = params
        try:
            resp = await self.session.request(method, self.url(path), **kwargs)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, what) from None
        if not 200 <= resp.status < 300:
            try:
                raise await error_from_response(resp, what)
            finally:
                resp.release()
        return resp

    async def request_json(self, method: str, path: str, *, what: str, **kwargs: Any) -> tuple[Any, str | None]:
        """:meth:`request` and read the JSON body; returns ``(document, trace_id)``."""
        resp = await self.request(method, path, what=what, **kwargs)
        trace_id = trace_id_of(resp)
        body = await read_body(resp, what)
        try:
            return jsoncodec.loads(body), trace_id
        except ValueError:
            raise StepFunUnavailable(f"{what}: answer is not JSON: {body[:120]!r}", trace_id=trace_id) from None


class StepFunClient:
    """What every StepFun endpoint client is made of: its model and one :class:`StepFunHttp` (base URL, key,
    default timeouts). Subclasses set ``default_model`` and ``default_total_timeout``."""

    default_model: str = ""
    default_total_timeout: float | None = 30.0

    def __init__(self, session: aiohttp.ClientSession, base_url: str = DEFAULT_BASE_URL,
                 api_key: str | None = None, *, model: str | None = None, connect_timeout: float = 5.0,
                 total_timeout: float | None = ...) -> None:  # type: ignore[assignment]  # ...: the default
        self.model = model or self.default_model
        total = self.default_total_timeout if total_timeout is ... else total_timeout
        self._http = StepFunHttp(session, base_url, api_key, timeouts=Timeouts(connect=connect_timeout, total=total))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._http!r}, model={self.model!r})"


async def read_body(resp: aiohttp.ClientResponse, what: str) -> bytes:
    """The whole body, then the connection back to the pool; a broken read is a typed error."""
    try:
        return await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise transport_error(exc, what, trace_id=trace_id_of(resp)) from None
    finally:
        resp.release()


async def expect_event_stream(resp: aiohttp.ClientResponse, what: str) -> None:
    """A 2xx answer that is JSON instead of ``text/event-stream`` is an error in disguise: raise it."""
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("text/event-stream") or not ctype.startswith("application/json"):
        return
    trace_id = trace_id_of(resp)
    body = await read_body(resp, what)
    err = error_from_body(400, body, what=what, trace_id=trace_id)
    raise StepFunRequestError(f"{err.message} (JSON answer where an event stream was expected)",
                              status=resp.status, type=err.type, code=err.code, trace_id=trace_id)


class SSEReader:
    """Yields the payload of every ``data:`` line of a server-sent-event body, in order.

    StepFun sends one JSON document per ``data:`` line; each line is therefore one payload (blank lines,
    comments and ``event:``/``id:``/``retry:`` fields are skipped). ``[DONE]`` is yielded like any payload.
    Lines may be arbitrarily long (base64 audio); a line over 32 MiB is a protocol error. Transport failures
    while reading raise :class:`StepFunUnavailable` with the response's trace id.
    """

    def __init__(self, resp: aiohttp.ClientResponse, what: str, *, max_line: int = MAX_SSE_LINE) -> None:
        self._resp = resp
        self._what = what
        self._max_line = max_line
        self._buf = bytearray()
        self._scanned = 0
        self._eof = False
        self.trace_id = trace_id_of(resp)

    def __aiter__(self) -> "SSEReader":
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self._readline()
            if line is None:
                raise StopAsyncIteration
            if line.startswith(b"data:"):
                payload = line[5:]
                if payload.startswith(b" "):
                    payload = payload[1:]
                return payload.decode("utf-8", "replace")
            if line and not line.startswith((b":", b"event:", b"id:", b"retry:")):
                log.debug("stepfun.sse_unexpected_line", what=self._what, line=line[:80])

    async def _readline(self) -> bytes | None:
        while True:
            i = self._buf.find(b"\n", self._scanned)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[:i + 1]
                self._scanned = 0
                return line[:-1] if line.endswith(b"\r") else line
            self._scanned = len(self._buf)
            if self._eof:
                if not self._buf:
                    return None
                line = bytes(self._buf)
                self._buf.clear()
                self._scanned = 0
                return line.rstrip(b"\r")
            try:
                chunk = await self._resp.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise transport_error(exc, self._what, trace_id=self.trace_id) from None
            if not chunk:
                self._eof = True
                continue
            self._buf += chunk
            if len(self._buf) > self._max_line:
                raise StepFunUnavailable(f"{self._what}: event-stream line longer than {self._max_line} bytes",
                                         trace_id=self.trace_id)


class SseStream(abc.ABC, Generic[T]):
    """One streamed POST whose answer is ``text/event-stream``: an async iterator of items of type ``T``.

    The request goes out on ``async with`` or on the first ``__anext__``. Each ``data:`` payload is
    JSON-decoded (a payload that is not JSON is logged and skipped, one that is not an object is skipped) and
    handed to :meth:`_on_event`, which returns the next item or ``None`` to keep reading. ``[DONE]`` goes to
    :meth:`_on_done_marker`, the end of the body to :meth:`_on_end`. A hook may raise ``StopAsyncIteration`` to
    end the stream cleanly, or an error to fail it.

    Whatever ends the iteration (its end, an error, ``aclose()``, leaving the ``async with``, or cancelling the
    task that iterates) drops the connection at once; transport failures while reading become
    :class:`StepFunUnavailable` with the answer's trace id.
    """

    #: structlog event names: the request was answered with a stream / a payload was not JSON (None: no log)
    _log_started: str | None = None
    _log_bad_event: str | None = "stepfun.sse_bad_event"
    #: each payload stamps ``latency.arrival`` (side "model") before it is decoded: the stream carries audio
    _stamps_arrival = False

    def __init__(self, http: StepFunHttp, path: str, body: dict, timeouts: Timeouts, what: str) -> None:
        self._http = http
        self._path = path
        self._body = body
        self._timeouts = timeouts
        self._what = what
        self._resp: aiohttp.ClientResponse | None = None
        self._reader: SSEReader | None = None
        self._finished = False
        self.trace_id: str | None = None

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def _start(self) -> None:
        if self._resp is not None or self._finished:
            return
        resp = await self._http.request("POST", self._path, what=self._what, json_body=self._body,
                                        headers={"Accept": "text/event-stream"}, timeouts=self._timeouts)
        self.trace_id = trace_id_of(resp)
        await expect_event_stream(resp, self._what)
        self._resp = resp
        self._reader = SSEReader(resp, self._what)
        if self._log_started:
            log.debug(self._log_started, trace_id=self.trace_id)

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        try:
            await self._start()
            assert self._reader is not None
            while True:
                try:
                    payload: str | None = await self._reader.__anext__()
                except StopAsyncIteration:
                    payload = None
                if payload is None:
                    self._on_end()
                    raise StopAsyncIteration
                if self._stamps_arrival and latency.ENABLED:
                    latency.arrival, latency.arrival_side = latency.clock(), "model"
                if payload.strip() == SSE_DONE:
                    if self._on_done_marker():
                        raise StopAsyncIteration
                    continue
                try:
                    event = jsoncodec.loads(payload)
                except ValueError:
                    if self._log_bad_event:
                        log.warning(self._log_bad_event, trace_id=self.trace_id, payload=payload[:120])
                    continue
                if not isinstance(event, dict):
                    continue
                item = self._on_event(event)
                if item is not None:
                    return item
        except StopAsyncIteration:
            await self.aclose()
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self.aclose()
            raise transport_error(exc, self._what, trace_id=self.trace_id) from None
        except BaseException:
            await self.aclose()
            raise

    @abc.abstractmethod
    def _on_event(self, event: dict) -> T | None:
        """One decoded event: the next item, or ``None`` to keep reading."""

    def _on_done_marker(self) -> bool:
        """``data: [DONE]``: True ends the stream, False skips it."""
        return True

    def _on_end(self) -> None:
        """The body ended without ``[DONE]``: return to end the stream cleanly, or raise."""
        raise StepFunUnavailable(f"{self._what}: stream ended before [DONE]", trace_id=self.trace_id)

    async def aclose(self) -> None:
        """Stop now: drop the connection if the stream is still open (idempotent)."""
        self._finished = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
