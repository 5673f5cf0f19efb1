"""Signed JSON POSTs to the persona's own services: webhook tools (one try, short timeout) and call events
(queued, retried with backoff). Neither ever blocks a call: tools run in their own task, events in one
sender task per process.

Every request carries ``X-Voicebot-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` keyed with the
secret the persona names (an environment variable), so the receiver can check it came from us.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
import structlog

from . import jsoncodec

log = structlog.get_logger("voicebot.webhooks")

SIGNATURE_HEADER = "X-Voicebot-Signature"
MAX_ANSWER_BYTES = 64 * 1024         # a tool's answer goes to the model: keep it small
EVENT_TIMEOUT_S = 10.0
EVENT_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)   # then the event is given up, logged and counted
MAX_QUEUED_EVENTS = 10_000


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, secret: str, header: str | None) -> bool:
    """For receivers (and tests): does ``header`` sign ``body`` with ``secret``?"""
    return header is not None and hmac.compare_digest(signature(body, secret), header)


def encode(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def headers_for(body: bytes, secret: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "voicebot"}
    if secret:
        headers[SIGNATURE_HEADER] = signature(body, secret)
    if extra:
        headers.update(extra)
    return headers


class WebhookFailed(Exception):
    """The request failed; the message says how (fit for the model and the log)."""


async def post_json(http: aiohttp.ClientSession, url: str, document: object, *, secret: str | None,
                    timeout_s: float, headers: dict[str, str] | None = None) -> object:
    """POST ``document`` signed; the answer's JSON. Raises WebhookFailed on timeout, a non-2xx status, a body
    that is not JSON or is too large."""
    body = encode(document)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with http.post(url, data=body, headers=headers_for(body, secret, headers), timeout=timeout) as resp:
            raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
            if not 200 <= resp.status < 300:
                snippet = raw[:200].decode("utf-8", "replace").strip()
                raise WebhookFailed(f"HTTP {resp.status}" + (f": {snippet}" if snippet else ""))
    except asyncio.TimeoutError:
        raise WebhookFailed(f"no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise WebhookFailed(f"request failed: {type(exc).__name__}: {exc}") from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise WebhookFailed(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        return jsoncodec.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError):
        raise WebhookFailed(f"answer is not JSON: {raw[:80].decode('utf-8', 'replace')!r}") from None


@dataclass
class _Event:
    url: str
    secret: str | None
    body: bytes
    event_type: str
    event_id: str
    call_id: str
    attempts: int = 0
    due: float = 0.0


class EventSender:
    """Call events (``call.started``, ``call.ended``, ``call.transferred``) to each persona's
    ``events_webhook``: queued by :meth:`send` (never blocks), delivered in order per process by one task,
    retried with backoff; failures are logged and counted. ``close`` gives pending events a last try."""

    def __init__(self, http: aiohttp.ClientSession, *, retry_delays_s: tuple[float, ...] = EVENT_RETRY_DELAYS_S,
                 timeout_s: float = EVENT_TIMEOUT_S) -> None:
        self.http = http
        self.retry_delays_s = retry_delays_s
        self.timeout_s = timeout_s
        self._queue: deque[_Event] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.delivered = 0
        self.failed_attempts = 0
        self.given_up = 0
        self.dropped = 0

    def send(self, url: str, secret: str | None, event_type: str, call_id: str, data: dict) -> None:
        event_id = uuid.uuid4().hex
        document = {"id": event_id, "type": event_type,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "data": data}
        if len(self._queue) >= MAX_QUEUED_EVENTS:
            self.dropped += 1
            log.error("call_event_dropped", event_type=event_type, call_id=call_id, queued=len(self._queue),
                      reason="event queue full (the receiver has been failing for a long time)")
            return
        self._queue.append(_Event(url, secret, encode(document), event_type, event_id, call_id))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="call-events")

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            event = min(self._queue, key=lambda e: e.due)     # fresh events first, retries when due
            wait = event.due - loop.time()
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            self._queue.remove(event)
            if not await self._attempt(event):
                if event.attempts <= len(self.retry_delays_s):
                    event.due = loop.time() + self.retry_delays_s[event.attempts - 1]
                    self._queue.append(event)    # the others are not held up behind it
                else:
                    self.given_up += 1
                    log.error("call_event_given_up", event_type=event.event_type, event_id=event.event_id,
                              call_id=event.call_id, url=event.url, attempts=event.attempts)

    async def _attempt(self, event: _Event) -> bool:
        event.attempts += 1
        started = time.monotonic()
        try:
            async with self.http.post(event.url, data=event.body, headers=headers_for(event.body, event.secret),
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                problem = None if ok else f"HTTP {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if ok:
            self.delivered += 1
            log.info("call_event_delivered", event_type=event.event_type, call_id=event.call_id,
                     attempts=event.attempts, elapsed_ms=elapsed_ms)
        else:
            self.failed_attempts += 1
            log.warning("call_event_failed", event_type=event.event_type, call_id=event.call_id, url=event.url,
                        attempt=event.attempts, problem=problem, elapsed_ms=elapsed_ms)
        return ok

    async def close(self, timeout_s: float = 5.0) -> None:
        """Give what is queued until ``timeout_s`` to go out (due now, not after its backoff); log the rest."""
        for event in self._queue:
            event.due = 0.0
        self._wake.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                self._task.cancel()
        for event in self._queue:
            log.error("call_event_not_delivered", event_type=event.event_type, call_id=event.call_id,
                      url=event.url, attempts=event.attempts, reason="server stopping")
        self.given_up += len(self._queue)
        self._queue.clear()
