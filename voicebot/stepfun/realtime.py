"""Thin client for the StepFun realtime WebSocket (``/realtime?model=…``): connect, send, receive events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .. import latency
from .errors import StepFunError, StepFunUnavailable, error_for_status

log = structlog.get_logger("voicebot.stepfun")

MAX_EVENT_BYTES = 16 * 1024 * 1024   # one append may carry up to 15 MB


class RealtimeConnection:
    """One realtime session. ``send`` only queues, so callers can emit several events within one loop turn."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        self.session_id: str | None = None
        self.close_reason: str | None = None
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._drain())

    @classmethod
    async def connect(cls, ws_base_url: str, api_key: str, model: str, *, timeout_s: float) -> "RealtimeConnection":
        url = f"{ws_base_url}/realtime?model={model}"
        try:
            ws = await connect(url, additional_headers={"Authorization": f"Bearer {api_key}"},
                               open_timeout=timeout_s, max_size=MAX_EVENT_BYTES, ping_interval=20,
                               ping_timeout=20, close_timeout=2, compression=None)
        except InvalidStatus as exc:
            response = exc.response
            body = bytes(response.body or b"")[:300].decode("utf-8", "replace")
            raise error_for_status(response.status_code, f"realtime upgrade refused: {body or 'no body'}",
                                   trace_id=response.headers.get("X-Trace-Id")) from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
            raise StepFunUnavailable(f"realtime connect to {url} failed: {type(exc).__name__}: {exc}") from None
        return cls(ws, url)

    def send(self, event: dict) -> None:
        self._outbox.put_nowait(json.dumps(event, ensure_ascii=False))

    def send_raw(self, text: str, since: float | None = None) -> None:
        """Queue an already-encoded event; ``since`` (latency.ENABLED): when its cause reached us."""
        self._outbox.put_nowait(text if since is None else (text, since))

    async def _drain(self) -> None:
        while (item := await self._outbox.get()) is not None:
            try:
                if type(item) is tuple:
                    await self._ws.send(item[0])
                    latency.record("in", latency.clock() - item[1])
                    latency.count("appends_sent")
                else:
                    await self._ws.send(item)
            except ConnectionClosed:
                return

    async def events(self) -> AsyncIterator[dict]:
        """Server events until the socket closes; ``close_reason`` then says why."""
        try:
            async for text in self._ws:
                if latency.ENABLED:
                    latency.arrival, latency.arrival_side = latency.clock(), "model"
                try:
                    event = json.loads(text)
                except (ValueError, TypeError):
                    log.warning("stepfun_bad_event", problem="not JSON", sample=str(text)[:80])
                    continue
                if isinstance(event, dict):
                    if event.get("type") == "session.created":
                        self.session_id = (event.get("session") or {}).get("id")
                    yield event
        except ConnectionClosed:
            pass
        code, reason = self._ws.close_code, self._ws.close_reason
        self.close_reason = ("connection lost" if code in (None, 1006) else
                             f"closed by StepFun (code {code}{', ' + reason if reason else ''})")

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(self._writer, 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
        await self._ws.close()


__all__ = ["RealtimeConnection", "StepFunError", "websockets"]
