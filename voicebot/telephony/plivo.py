"""Plivo Audio Streams (``<Stream bidirectional="true">``): wire protocol and shared-secret authentication.

See telephony-protocols.md §3. Plivo → us, camelCase: ``start`` (``start{callId, streamId, accountId,
tracks, mediaFormat{encoding, sampleRate}}`` and ``extra_headers``), ``media``, ``dtmf``,
``playedStream`` (a checkpoint was reached: our mark has played) and ``clearedAudio`` (acknowledges
``clearAudio``; not a played mark: Plivo drops pending checkpoints on a clear). Us → Plivo:
``playAudio`` in the stream's own format (``audio/x-l16`` at 8/16 kHz or ``audio/x-mulaw``),
``checkpoint`` and ``clearAudio``. The call ends when Plivo closes the socket.

Plivo's start names no phone numbers. ``to``/``from`` (digits: Plivo's ``extraHeaders`` allow only letters
and digits, so a missing leading + is added) and ``persona`` come from the Stream XML's ``extraHeaders``
(``extraHeaders="to=15551230001"``) or from the stream URL's query string.

Authentication: a shared secret, $PLIVO_STREAM_SECRET (letters and digits), either as the last segment of
the stream URL (``wss://host/plivo/media/<secret>``, checked before the upgrade: 401) or as
``token=<secret>`` in ``extraHeaders`` (checked at ``start``: close 1008). It is never kept in the call's
parameters.
"""

from __future__ import annotations

import os
import re

import numpy as np
from aiohttp import web

from ..config import Fields
from .base import CallMeta, CarrierEvent, MarkPlayed, MediaRoute, ProtocolError, dtmf, require, secret_matches
from .jsonstream import JsonStreamSession, codec_for, compact, string_params

MEDIA_PATH = "/plivo/media"
SECRET_ENV = "PLIVO_STREAM_SECRET"


def extra_headers(value: object) -> dict[str, str]:
    """Plivo's ``extra_headers``: ``"k1=v1,k2=v2"`` (as written in the XML) or ``;``-separated."""
    if isinstance(value, dict):
        return string_params(value, "start.extra_headers")
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise ProtocolError(f"start.extra_headers is neither text nor an object: {value!r}")
    pairs = [part.partition("=") for part in re.split(r"[,;]", value) if part.strip()]
    return {k.strip(): v.strip() for k, _, v in pairs}


def _e164(number: str | None) -> str | None:
    return "+" + number if number and number.isdigit() else number or None


class PlivoSession(JsonStreamSession):
    carrier = "plivo"
    handlers = {"start": "on_start", "media": "on_media", "dtmf": "on_dtmf", "playedStream": "on_played",
                "clearedAudio": "on_cleared"}

    def __init__(self, send_text, send_bytes, *, expected_secret: str | None, **common) -> None:
        super().__init__(send_text, send_bytes, **common)
        self._expected_secret = expected_secret   # None: nothing (more) to check
        self._given_secret: str | None = None
        self._format: dict = {}

    def on_start(self, msg: dict) -> list[CarrierEvent]:
        start = require(msg, "start", dict, "start")
        media_format = require(start, "mediaFormat", dict, "start.start")
        encoding = require(media_format, "encoding", str, "start.mediaFormat")
        rate = media_format.get("sampleRate", 8000)
        codec = codec_for(encoding, rate, "start.mediaFormat")
        params = {**self.query, **extra_headers(msg.get("extra_headers"))}
        self._given_secret = params.pop("token", None)
        meta = CallMeta(carrier=self.carrier, call_id=require(start, "callId", str, "start.start"),
                        stream_id=require(start, "streamId", str, "start.start"),
                        from_number=_e164(params.get("from")), to_number=_e164(params.get("to")), params=params)
        events = self.begin(meta, codec)
        self._format = {"contentType": "audio/x-mulaw" if codec.encoding == "pcmu" else "audio/x-l16",
                        "sampleRate": codec.rate}
        return events

    def on_media(self, msg: dict) -> list[CarrierEvent]:
        media = require(msg, "media", dict, "media")
        if media.get("track", "inbound") != "inbound":
            return []
        return self.audio(media.get("payload"), f"media chunk {media.get('chunk')!r}")

    def on_dtmf(self, msg: dict) -> list[CarrierEvent]:
        return [dtmf(require(require(msg, "dtmf", dict, "dtmf"), "digit", str, "dtmf.dtmf"), "dtmf.dtmf")]

    def on_played(self, msg: dict) -> list[CarrierEvent]:
        return [MarkPlayed(require(msg, "name", str, "playedStream"))]

    def on_cleared(self, msg: dict) -> list[CarrierEvent]:
        return []     # the clear we asked for is done; it says nothing about what played

    def authorize(self, meta: CallMeta) -> str | None:
        if self._expected_secret is None or secret_matches(self._given_secret, self._expected_secret):
            return None
        return "stream secret missing or wrong (not in the stream URL, and extraHeaders token does not match)"

    def send_audio(self, frame: np.ndarray) -> None:
        self.send_text(compact({"event": "playAudio", "media": {**self._format, "payload": self.encoded(frame)}}))

    def send_mark(self, name: str) -> None:
        self.send_text(compact({"event": "checkpoint", "streamId": self.stream_id, "name": name}))

    def send_clear(self) -> None:
        self.send_text(compact({"event": "clearAudio", "streamId": self.stream_id}))


class PlivoRoute(MediaRoute):
    carrier = "plivo"
    path = MEDIA_PATH
    session_cls = PlivoSession

    def configure(self, fields: Fields) -> None:
        self.secret = os.environ.get(SECRET_ENV) or None

    def auth_problem(self, request: web.Request) -> str | None:
        if self.secret is None:
            return f"{SECRET_ENV} is not set, so no stream secret can be checked"
        in_path = request.match_info.get("secret")
        if in_path is not None and not secret_matches(in_path, self.secret):
            return "the secret in the stream URL does not match"
        return None       # not in the path: extraHeaders must carry it (checked at start)

    def session_kwargs(self, request: web.Request) -> dict:
        in_path = "secret" in request.match_info
        return {**super().session_kwargs(request),
                "expected_secret": self.secret if self.options.auth and not in_path else None}

    @classmethod
    def add_routes(cls, app: web.Application, services) -> None:
        route = cls(services)
        if route.options.enabled:
            app.router.add_get(MEDIA_PATH, route.media)
            app.router.add_get(MEDIA_PATH + "/{secret}", route.media)


add_routes = PlivoRoute.add_routes
