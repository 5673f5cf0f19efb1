"""Helpers shared by the emulator's HTTP endpoints (ASR, chat, TTS, voices).

* Strict body checks: :class:`BadRequest` becomes HTTP 400 ``{"error":{"message","type":"request_params_invalid"}}``
  (or another status/type where given), through :func:`endpoint`.
* One-shot faults: :func:`take_fault` reads a ``Faults`` field and clears it, so "fail once" means the next
  request only. ``Faults.http_delay_s`` delays every answer of these endpoints (:func:`http_delay`).
* A record of every request on ``Emulator.http_log`` (:class:`HttpRecord`, newest last; audio payloads elided)
  so tests can check what a client actually sent, e.g. the chat history after a barge-in. Records carry
  ``time.monotonic()`` stamps (received, first body byte, handler done) so benchmarks can take the
  emulator's own service time out of a client's latency (the monotonic clock is shared by processes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from .app import TRACE_ID, Emulator, check_bearer, error_response

MAX_LOG = 1000


class BadRequest(Exception):
    """The request is rejected; answered as ``status`` with the documented error body."""

    def __init__(self, message: str, *, status: int = 400, type: str = "request_params_invalid") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type


@dataclass
class HttpRecord:
    endpoint: str                   # "asr", "chat", "tts", "tts.ws", "files", "voices.preview", ...
    trace_id: str | None
    body: Any = None                # the request JSON, audio payloads replaced by "<N base64 chars>"
    status: int = 200
    error: str | None = None        # message of an error answer or error event
    result: str | None = None       # transcript / reply text / synthesized text
    done: bool = False              # the answer was sent to its end
    aborted: bool = False           # the client went away first
    at: float = field(default_factory=time.time)
    # time.monotonic(): request handed to the handler, streamed answer's headers sent, handler returned
    # (for a non-streamed answer its body is written just after that)
    received: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    finished: float | None = None


HTTP_RECORD = web.RequestKey("http_record", HttpRecord) if hasattr(web, "RequestKey") else "voicebot.http_record"


def http_log(emulator: Emulator) -> list[HttpRecord]:
    log = getattr(emulator, "http_log", None)
    if log is None:
        log = []
        emulator.http_log = log  # type: ignore[attr-defined]
    return log


def new_record(emulator: Emulator, request: web.Request, endpoint: str) -> HttpRecord:
    record = HttpRecord(endpoint, request.get(TRACE_ID))
    log = http_log(emulator)
    log.append(record)
    if len(log) > MAX_LOG:
        del log[: len(log) - MAX_LOG]
    return record


def take_fault(emulator: Emulator, name: str) -> Any:
    """The value of a one-shot fault field (``None`` if unset), cleared for the next request."""
    value = getattr(emulator.faults, name, None)
    if value is not None:
        setattr(emulator.faults, name, None)
    return value


def fault(emulator: Emulator, name: str, default: Any = None) -> Any:
    return getattr(emulator.faults, name, default)


def reset_connection(transport: asyncio.BaseTransport | None) -> None:
    """Drop the connection with a TCP reset (RST, no FIN, no close frame), like a network failure."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:     # linger 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def until_client_gone(transport: asyncio.BaseTransport | None, *, also: Callable[[], bool] = lambda: False,
                            poll_s: float = 0.05) -> None:
    """Return once the client's connection is gone (or ``also()`` holds): a stalled answer must not outlive
    its client (aiohttp does not cancel a handler whose client left)."""
    while transport is not None and not transport.is_closing() and not also():
        await asyncio.sleep(poll_s)


async def http_delay(emulator: Emulator) -> None:
    delay = fault(emulator, "http_delay_s", 0.0) or 0.0
    if delay > 0:
        await asyncio.sleep(delay)


def fault_response(status: int, what: str) -> web.Response:
    message = {451: "The content you provided or machine outputted is blocked."}.get(
        status, f"{what} unavailable (injected fault, HTTP {status})")
    return error_response(status, message, "censorship_block" if status == 451 else None)


Handler = Callable[[web.Request, HttpRecord], Awaitable[web.StreamResponse]]


def endpoint(emulator: Emulator, name: str, fail_fault: str | None = None) -> Callable[[Handler], Callable]:
    """Wrap a handler: record it, check the bearer, apply ``http_delay_s`` and the one-shot ``fail_fault``
    (an HTTP status), and turn :class:`BadRequest` into the documented error answer."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            record = new_record(emulator, request, name)
            request[HTTP_RECORD] = record
            try:
                denied = check_bearer(request)
                if denied is not None:
                    record.status, record.error, record.done = 401, "unauthorized", True
                    return denied
                await http_delay(emulator)
                status = take_fault(emulator, fail_fault) if fail_fault else None
                if status is not None:
                    record.status, record.error, record.done = int(status), "injected fault", True
                    return fault_response(int(status), name)
                try:
                    return await handler(request, record)
                except BadRequest as exc:
                    record.status, record.error, record.done = exc.status, exc.message, True
                    return error_response(exc.status, exc.message, exc.type)
            finally:
                record.finished = time.monotonic()
        return run
    return wrap


# ---------------------------------------------------------------------------------------------- bodies

async def read_json(request: web.Request) -> dict:
    """The JSON object body; 400 ``unsupported_content_type`` / ``request_params_invalid`` otherwise."""
    if request.content_type != "application/json":
        raise BadRequest(f"Content-Type must be application/json, got '{request.content_type}'",
                         type="unsupported_content_type")
    raw = await request.read()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


def elide_audio(value: Any, keys: tuple[str, ...] = ("data", "audio")) -> Any:
    """A copy of a JSON value with long base64 strings under ``keys`` replaced by their length."""
    if isinstance(value, dict):
        return {k: (f"<{len(v)} base64 chars>" if k in keys and isinstance(v, str) and len(v) > 256
                    else elide_audio(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [elide_audio(v, keys) for v in value]
    return value


def sse(event: Any) -> bytes:
    """One ``data:`` line (JSON, or a literal such as ``[DONE]``) plus the blank line ending the event."""
    payload = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8")


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    record = request.get(HTTP_RECORD)
    if record is not None:
        record.first_byte = time.monotonic()
    return resp


# ---------------------------------------------------------------------------------------------- field checks

_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "str": (str, "a string"),
    "bool": (bool, "a boolean"),
    "obj": (dict, "an object"),
    "list": (list, "an array"),
}


def check_keys(obj: dict, allowed: set[str] | frozenset[str], path: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        where = f"{path}." if path else ""
        raise BadRequest(f"unknown parameter '{where}{unknown[0]}'")


def get(obj: dict, key: str, path: str, kind: str, *, required: bool = False, default: Any = None,
        choices: tuple | frozenset | set | None = None, lo: float | None = None, hi: float | None = None) -> Any:
    """``obj[key]`` checked: ``kind`` is str/bool/int/number/obj/list; missing → ``default`` unless required."""
    name = f"{path}.{key}" if path else key
    if key not in obj or obj[key] is None:
        if required:
            raise BadRequest(f"missing required parameter '{name}'")
        return default
    value = obj[key]
    if kind == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise BadRequest(f"'{name}' must be an integer")
        value = int(value)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"'{name}' must be a number")
    else:
        typ, desc = _KINDS[kind]
        if not isinstance(value, typ):
            raise BadRequest(f"'{name}' must be {desc}")
    if choices is not None and value not in choices:
        raise BadRequest(f"'{name}' must be one of {', '.join(map(str, sorted(choices, key=str)))}; got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            bound = f"between {lo:g} and {hi:g}"
        else:
            bound = f"at least {lo:g}" if lo is not None else f"at most {hi:g}"
        raise BadRequest(f"'{name}' must be {bound}; got {value!r}")
    return value


def b64decode(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{name}' is not valid base64") from None
