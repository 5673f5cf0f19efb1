"""Plivo's side of a call: a bidirectional ``<Stream>`` (telephony-protocols.md §3).

Plivo connects to the stream URL (the XML element's text; the query string is kept), sends ``start``
(``start{callId, streamId, accountId, tracks, mediaFormat{encoding, sampleRate}}`` and the XML's
``extraHeaders`` as the ``extra_headers`` text) and then one ``media`` per 20 ms and a ``dtmf``
(``dtmf{track, digit, timestamp}``) per key pressed, numbered by ``sequenceNumber``. It names no phone numbers: ``to``, ``persona`` and the stream ``token`` travel in
``extraHeaders`` (letters and digits only). What the server may send: ``playAudio``
(``media{contentType, sampleRate, payload}``: ``audio/x-l16`` at 8000/16000 or ``audio/x-mulaw`` at 8000),
``checkpoint`` (``streamId``, ``name``) and ``clearAudio`` (``streamId``) -- exactly those fields.
``playedStream`` answers a checkpoint once the audio before it has played; ``clearAudio`` empties the
buffer and is answered with ``clearedAudio``, and checkpoints still pending then are never answered.
The call ends with the socket closing.
"""

from __future__ import annotations

import os
import re
import secrets
import time

import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import CallResult, ClearPlayback, Message, ProtocolViolation, QueueMark, \
    ServerEvent, Step
from voicebot.simulator.jsonwire import JsonCarrierProtocol, dumps, new_uuid, simulate, ws_url

PLAYBACK_FORMATS = {("audio/x-l16", 8000), ("audio/x-l16", 16000), ("audio/x-mulaw", 8000)}


class PlivoProtocol(JsonCarrierProtocol):
    name = "plivo"
    seq_key, seq_as_text, stream_key = "sequenceNumber", False, "streamId"
    server_schema = {
        "playAudio": {"event": str, "media": {"contentType": str, "sampleRate": (int, str), "payload": str}},
        "checkpoint": {"event": str, "streamId": str, "name": str},
        "clearAudio": {"event": str, "streamId": str},
    }

    def __init__(self, base_url: str, *, to: str | None, from_: str = "+15005550006", secret: str | None = None,
                 secret_in: str = "extra_headers", content_type: str = "audio/x-l16;rate=8000",
                 extra_headers: dict[str, str] | None = None, query: str = "", path: str = "/plivo/media") -> None:
        if secret_in not in ("extra_headers", "path"):
            raise ValueError("secret_in is 'extra_headers' or 'path'")
        url = ws_url(base_url, path) + (f"/{secret}" if secret and secret_in == "path" else "")
        super().__init__(url + (f"?{query}" if query else ""), call_id=new_uuid(), stream_id=new_uuid())
        headers = {**({"to": to.lstrip("+")} if to else {}), **({"from": from_.lstrip("+")} if from_ else {}),
                   **({"token": secret} if secret and secret_in == "extra_headers" else {}), **(extra_headers or {})}
        self.extra_headers = ",".join(f"{k}={v}" for k, v in headers.items())
        bad = [f"{k}={v}" for k, v in headers.items() if not re.fullmatch(r"[A-Za-z0-9]+", k + v)]
        if bad or len(self.extra_headers) > 512:
            raise ValueError(f"Plivo extraHeaders take letters and digits only, 512 bytes in all: {bad}")
        encoding, _, rate = content_type.partition(";rate=")
        self.media_format = {"encoding": encoding, "sampleRate": int(rate or 8000)}
        self.codec = WireCodec(encoding, self.media_format["sampleRate"])
        self._playback_codecs = {fmt: WireCodec(*fmt) for fmt in PLAYBACK_FORMATS}
        self.account_id = "MA" + secrets.token_hex(10).upper()

    def opening_messages(self) -> list[Message]:
        return [dumps({"event": "start", "sequenceNumber": self.next_seq(), "start": {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": self.account_id,
            "tracks": ["inbound"], "mediaFormat": self.media_format}, "extra_headers": self.extra_headers})]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        return [self.numbered("media", media={"track": "inbound", "timestamp": str(int(time.time() * 1000)),
                                              "chunk": index + 1, "payload": self.payload(self.codec, pcm)},
                              extra_headers=self.extra_headers)]

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [self.numbered("dtmf", dtmf={"track": "inbound", "digit": digit,
                                            "timestamp": str(int(time.time() * 1000))})]

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        if cleared:
            return []            # Plivo answers a checkpoint only when the audio before it really played
        return [self.numbered("playedStream", name=name)]

    def cleared(self) -> list[Message]:
        return [self.numbered("clearedAudio")]

    def closing_messages(self) -> list[Message]:
        return []                # Plivo just closes the socket

    def on_server_message(self, event: str, obj: dict) -> list[ServerEvent]:
        if event == "playAudio":
            media = obj["media"]
            fmt = (media["contentType"], int(media["sampleRate"]) if str(media["sampleRate"]).isdigit() else 0)
            if fmt not in self._playback_codecs:
                raise ProtocolViolation(f"playAudio: {media['contentType']} at {media['sampleRate']} Hz is not "
                                        "a format Plivo plays (audio/x-l16 at 8000/16000, audio/x-mulaw at 8000)")
            return [self.play("playAudio", media["payload"], self._playback_codecs[fmt])]
        self.check_stream_id(event, "streamId", obj["streamId"])
        return [QueueMark(obj["name"])] if event == "checkpoint" else [ClearPlayback()]


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, auth_token: str | None = None, **options) -> CallResult:
    """One simulated Plivo call against our server at ``base_url``.

    ``options`` that :class:`PlivoProtocol` takes (``secret`` -- default $PLIVO_STREAM_SECRET --,
    ``secret_in``, ``content_type``, ``extra_headers``, ``query``) configure Plivo; the rest go to
    ``SimulatedCall``. ``auth_token`` (Twilio's, passed by ``voicebot simulate``) is not used."""
    options.setdefault("secret", os.environ.get("PLIVO_STREAM_SECRET"))
    return await simulate(PlivoProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
