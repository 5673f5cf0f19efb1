"""Exotel Voicebot applet (bidirectional stream): wire protocol, chunked playback, authentication.

See telephony-protocols.md §8. Twilio's event set in snake_case (``stream_sid``, ``call_sid``, ``from``,
``to``, ``custom_parameters``, ``media_format``), carrying raw PCM16 little-endian (``audio/x-raw``) at
8 kHz, or 16/24 kHz with ``?sample-rate=`` on the stream URL; caller audio comes in ~100 ms chunks.
Marks (``mark`` echoed back) and ``clear`` work as for Twilio, with ``stream_sid`` in what we send.

Playback: Exotel wants each ``media`` chunk to be a whole multiple of 320 bytes, at least 100 ms of audio
("3.2 KB (100 ms of data)" in its docs, which agree only at 16 kHz: the time is used here) and at most
100 kB. Frames are gathered into ``carriers.exotel.chunk_ms`` chunks; a chunk goes out early only right
before a mark, so the mark's echo still says exactly what has played (with the default 100 ms marks,
every chunk but an utterance's last is full). Exotel buffers, so a chunk must be sent ahead of time:
keep ``playout.lead_ms`` above ``chunk_ms`` (the default 100/100 leaves a 20 ms margin on loopback).

Authentication as Exotel offers it: HTTP Basic credentials in the stream URL
(``wss://<username>:<password>@host/exotel/media``, sent as ``Authorization: Basic``; the username is
``carriers.exotel.username``, the password $EXOTEL_STREAM_PASSWORD), and/or Exotel's source addresses
(``allowed_networks``). Either admits a stream; otherwise the upgrade is answered 401.
"""

from __future__ import annotations

import base64
import ipaddress

import numpy as np
from aiohttp import web

from ..audio import FRAME_MS
from ..audio.codecs import WireCodec
from ..config import Fields
from .base import BasicAuthRoute, ProtocolError
from .jsonstream import SnakeCaseSession, codec_for

MEDIA_PATH = "/exotel/media"
PASSWORD_ENV = "EXOTEL_STREAM_PASSWORD"
RAW_PCM = ("audio/x-raw", "raw", "slin", "audio/x-l16", "l16")


class ExotelSession(SnakeCaseSession):
    carrier = "exotel"
    stream_key = "stream_sid"
    call_key = "call_sid"
    outbound_stream_key = "stream_sid"

    def __init__(self, send_text, send_bytes, *, chunk_ms: int = 100, **common) -> None:
        super().__init__(send_text, send_bytes, **common)
        self._chunk_frames = max(1, chunk_ms // FRAME_MS)
        self._pending: list[bytes] = []

    def codecs(self, media_format: dict) -> tuple[WireCodec, WireCodec | None]:
        encoding = str(media_format.get("encoding", "audio/x-raw"))
        bits = str(media_format.get("bit_rate", "16"))
        if encoding.lower() not in RAW_PCM or bits != "16":
            raise ProtocolError(f"start.media_format: expected 16-bit raw PCM (audio/x-raw), got {encoding!r} "
                                f"with bit_rate {bits!r}")
        return codec_for("l16", media_format.get("sample_rate", 8000), "start.media_format"), None

    def send_audio(self, frame: np.ndarray) -> None:
        self._pending.append(self.playback_codec.encode(frame))
        if len(self._pending) >= self._chunk_frames:
            self._flush()

    def send_mark(self, name: str) -> None:
        self._flush()        # the mark stands right after the audio before it
        super().send_mark(name)

    def send_clear(self) -> None:
        self._pending.clear()
        super().send_clear()

    def _flush(self) -> None:
        if self._pending:
            payload = base64.b64encode(b"".join(self._pending)).decode("ascii")
            self._pending.clear()
            self.send_text(self.message("media", media={"payload": payload}))


def _networks(fields: Fields) -> tuple:
    networks = []
    for i, text in enumerate(fields.get("allowed_networks", list, [])):
        try:
            networks.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError as exc:
            raise fields.error(f"allowed_networks[{i}]", f"expected an address or CIDR network: {exc}") from None
    return tuple(networks)


def _peer_in(peer: str | None, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


class ExotelRoute(BasicAuthRoute):
    carrier = "exotel"
    path = MEDIA_PATH
    session_cls = ExotelSession
    default_username = "exotel"
    password_env = PASSWORD_ENV
    basic_realm = "exotel"

    def configure(self, fields: Fields) -> None:
        super().configure(fields)
        self.networks = _networks(fields)
        self.chunk_ms = fields.get("chunk_ms", int, 100, minimum=20, maximum=1000)
        if self.chunk_ms % FRAME_MS:
            raise fields.error("chunk_ms", f"must be a multiple of {FRAME_MS} (one frame), got {self.chunk_ms}")

    def auth_problem(self, request: web.Request) -> str | None:
        if self.networks and _peer_in(request.remote, self.networks):
            return None
        problem = super().auth_problem(request)
        if problem is not None and self.networks:
            problem += f", and {request.remote} is not in allowed_networks"
        return problem

    def session_kwargs(self, request: web.Request) -> dict:
        return {**super().session_kwargs(request), "chunk_ms": self.chunk_ms}


add_routes = ExotelRoute.add_routes
