"""Twilio's side of a call: the Voice webhook, ``<Connect><Stream>`` TwiML and the Media Streams protocol.

See docs ``telephony-protocols.md`` §1. Everything the real Twilio checks on what our server sends is
checked here too (JSON text frames only, exactly the documented fields, our streamSid, valid base64);
violations are recorded as protocol errors with Twilio's error codes (31950 binary frame, 31951 bad
message) instead of being acted on. A key the caller presses goes out as ``dtmf``
(``dtmf{track: "inbound_track", digit}``), numbered with the media.
"""

from __future__ import annotations

import base64
import binascii
from binascii import b2a_base64
import json
import secrets
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from voicebot import jsoncodec
from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.simulator.caller import (
    CallResult,
    CallSetupError,
    CarrierProtocol,
    ClearPlayback,
    Message,
    PlayAudio,
    ProtocolViolation,
    QueueMark,
    ServerEvent,
    SimulatedCall,
    Step,
    StreamTarget,
)
from voicebot.telephony.twilio_auth import compute_signature

AUTO = "auto"  # sign with the auth token (when one is given); or pass an explicit value / None to omit

_SERVER_FIELDS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}
_NESTED_FIELDS = {"media": {"payload"}, "mark": {"name"}}


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix + 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def parse_twiml_stream(twiml: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``<Response><Connect><Stream url>`` → (stream url, ``<Parameter>`` name→value, Stream attributes).

    Raises :class:`CallSetupError` naming what came back when there is no bidirectional stream."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise CallSetupError(f"webhook answer is not XML ({exc}): {twiml[:300]!r}") from None
    if root.tag != "Response":
        raise CallSetupError(f"TwiML root is <{root.tag}>, expected <Response>: {twiml[:300]!r}")
    stream = root.find("./Connect/Stream")
    if stream is None:
        verbs = ", ".join(f"<{child.tag}>" for child in root) or "nothing"
        hint = " (<Start><Stream> is one-way: no audio back)" if root.find("./Start/Stream") is not None else ""
        raise CallSetupError(f"TwiML has no <Connect><Stream>{hint}; the <Response> holds {verbs}")
    url = (stream.get("url") or "").strip()
    if not url:
        raise CallSetupError("TwiML <Stream> has no url attribute")
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws"):
        raise CallSetupError(f"TwiML <Stream url={url!r}>: Twilio connects only to wss:// (ws:// allowed for tests)")
    if parts.query:
        raise CallSetupError(f"TwiML <Stream url={url!r}> carries a query string, which Twilio does not pass on; "
                             "use <Parameter> elements")
    params: dict[str, str] = {}
    for p in stream.findall("./Parameter"):
        name = p.get("name")
        if not name:
            raise CallSetupError("TwiML <Parameter> without a name")
        params[name] = p.get("value", "")
    return url, params, dict(stream.attrib)


class TwilioProtocol(CarrierProtocol):
    """Twilio Media Streams, caller side (Twilio is the WebSocket client). One instance per call.

    ``webhook_signature`` / ``stream_signature``: ``AUTO`` signs with ``auth_token`` (nothing when there is
    no token); a string is sent as the header value as is; ``None`` omits the header.
    ``custom_parameters``: replaces the TwiML ``<Parameter>`` values in ``start`` (``{}`` sends none).
    ``stream_url``: connect here instead of the TwiML url (the signature still covers the url used)."""

    name = "twilio"

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", auth_token: str | None = None,
                 account_sid: str | None = None, call_sid: str | None = None, stream_sid: str | None = None,
                 webhook_path: str = "/twilio/voice", extra_params: dict[str, str] | None = None,
                 custom_parameters: dict[str, str] | None = None, stream_url: str | None = None,
                 webhook_signature: str | None = AUTO, stream_signature: str | None = AUTO) -> None:
        self.base_url = base_url.rstrip("/")
        self.to, self.from_ = to, from_
        self._auth_token = auth_token
        self.account_sid = account_sid or new_sid("AC")
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid_value = stream_sid or new_sid("MZ")
        self.webhook_url = self.base_url + webhook_path
        self.extra_params = dict(extra_params or {})
        self._custom_override = custom_parameters
        self._stream_url_override = stream_url
        self._webhook_signature = webhook_signature
        self._stream_signature = stream_signature
        self.twiml: str | None = None
        self.stream_url: str | None = None
        self.stream_attributes: dict[str, str] = {}
        self.custom_parameters: dict[str, str] = {}
        self._seq = 0
        self._media_sid: str | None = None  # the media message from the streamSid to the chunk number

    @property
    def call_id(self) -> str:
        return self.call_sid

    @property
    def stream_id(self) -> str:
        return self.stream_sid_value

    def _signature(self, setting: str | None, url: str, params: dict[str, str]) -> str | None:
        if setting == AUTO:
            return compute_signature(self._auth_token, url, params) if self._auth_token else None
        return setting

    def webhook_params(self) -> dict[str, str]:
        return {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": self.from_, "To": self.to,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", **self.extra_params}

    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        params = self.webhook_params()
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        sig = self._signature(self._webhook_signature, self.webhook_url, params)
        if sig is not None:
            headers["X-Twilio-Signature"] = sig
        try:
            async with http.post(self.webhook_url, data=params, headers=headers, allow_redirects=False) as resp:
                status, body = resp.status, await resp.text(errors="replace")
        except aiohttp.ClientError as exc:
            raise CallSetupError(f"voice webhook POST {self.webhook_url}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise CallSetupError(f"voice webhook POST {self.webhook_url} answered HTTP {status}: {body[:300]!r}")
        self.twiml = body
        url, twiml_params, self.stream_attributes = parse_twiml_stream(body)
        self.stream_url = self._stream_url_override or url
        self.custom_parameters = dict(twiml_params if self._custom_override is None else self._custom_override)
        ws_headers: dict[str, str] = {}
        sig = self._signature(self._stream_signature, self.stream_url, {})
        if sig is not None:
            ws_headers["X-Twilio-Signature"] = sig
        return StreamTarget(self.stream_url, ws_headers)

    # -- caller → server -----------------------------------------------------------------------------

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    @staticmethod
    def _json(obj: object) -> str:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    def opening_messages(self) -> list[Message]:
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        start = {"event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid_value,
                 "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid_value,
                           "callSid": self.call_sid, "tracks": ["inbound"],
                           "customParameters": dict(self.custom_parameters),
                           "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
        return [self._json(connected), self._json(start)]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        # The message _json would make, formatted directly: it is sent 50 times a second per call.
        # Only the stream SID can need JSON escaping; the numbers and the base64 payload cannot.
        if self._media_sid is None:
            self._media_sid = f'","streamSid":{self._json(self.stream_sid_value)},"media":{{"track":"inbound","chunk":"'
        self._seq += 1
        return [f'{{"event":"media","sequenceNumber":"{self._seq}{self._media_sid}{index + 1}","timestamp":"'
                f'{timestamp_ms}","payload":"{b2a_base64(ulaw_encode(pcm), newline=False).decode()}"}}}}']

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        return [self._json({"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid_value,
                            "mark": {"name": name}})]

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [self._json({"event": "dtmf", "streamSid": self.stream_sid_value, "sequenceNumber": self._next_seq(),
                            "dtmf": {"track": "inbound_track", "digit": digit}})]

    def closing_messages(self) -> list[Message]:
        return [self._json({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid_value,
                            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})]

    # -- server → caller -----------------------------------------------------------------------------

    def decode(self, message: Message) -> list[ServerEvent]:
        if isinstance(message, bytes):
            raise ProtocolViolation(f"31950: binary frame of {len(message)} bytes (only JSON text frames are accepted)")
        excerpt = message if len(message) <= 120 else message[:117] + "..."
        try:
            obj = jsoncodec.loads(message)
        except ValueError:
            raise ProtocolViolation(f"31951: not JSON: {excerpt!r}") from None
        if not isinstance(obj, dict):
            raise ProtocolViolation(f"31951: not a JSON object: {excerpt!r}")
        event = obj.get("event")
        if event not in _SERVER_FIELDS:
            raise ProtocolViolation(f"31951: unknown event {event!r} (only media, mark, clear): {excerpt!r}")
        self._check_fields(event, set(obj), _SERVER_FIELDS[event], excerpt)
        if obj["streamSid"] != self.stream_sid_value:
            raise ProtocolViolation(f"31951: {event} for streamSid {obj['streamSid']!r}, "
                                    f"this stream is {self.stream_sid_value}")
        if event == "clear":
            return [ClearPlayback()]
        inner = obj[event]
        if not isinstance(inner, dict):
            raise ProtocolViolation(f"31951: {event}.{event} is not an object: {excerpt!r}")
        self._check_fields(f"{event}.{event}", set(inner), _NESTED_FIELDS[event], excerpt)
        if event == "mark":
            if not isinstance(inner["name"], str):
                raise ProtocolViolation(f"31951: mark.name is not a string: {excerpt!r}")
            return [QueueMark(inner["name"])]
        payload = inner["payload"]
        if not isinstance(payload, str):
            raise ProtocolViolation(f"31951: media.payload is not a string: {excerpt!r}")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolViolation(f"31951: media.payload is not valid base64 ({len(payload)} chars)") from None
        return [PlayAudio(ulaw_decode(raw), len(raw))]

    @staticmethod
    def _check_fields(where: str, got: set[str], want: set[str], excerpt: str) -> None:
        missing, extra = sorted(want - got), sorted(got - want)
        if missing or extra:
            problems = "; ".join(p for p in (f"missing {missing}" if missing else "",
                                             f"extra {extra}" if extra else "") if p)
            raise ProtocolViolation(f"31951: {where} message: {problems}: {excerpt!r}")


async def simulate_twilio_call(base_url: str, *, to: str, from_: str = "+15005550006", auth_token: str | None,
                               script: list[Step], max_duration_s: float = 30.0,
                               custom_parameters: dict[str, str] | None = None, stream_url: str | None = None,
                               webhook_signature: str | None = AUTO, stream_signature: str | None = AUTO,
                               webhook_path: str = "/twilio/voice", noise_dbfs: float | None = -60.0, seed: int = 0,
                               record: bool = True, http_session: aiohttp.ClientSession | None = None,
                               **call_options) -> CallResult:
    """Place one simulated inbound Twilio call against our server at ``base_url`` and run ``script``.

    Raises :class:`CallSetupError` (or :class:`StreamRefused`) when the webhook or the stream is refused.
    Other ``call_options`` go to :class:`SimulatedCall` (``audible_dbfs``, ``utterance_gap_s``, …)."""
    protocol = TwilioProtocol(base_url, to=to, from_=from_, auth_token=auth_token, webhook_path=webhook_path,
                              custom_parameters=custom_parameters, stream_url=stream_url,
                              webhook_signature=webhook_signature, stream_signature=stream_signature)
    call = SimulatedCall(protocol, script, max_duration_s=max_duration_s, noise_dbfs=noise_dbfs, seed=seed,
                         record=record, http_session=http_session, **call_options)
    return await call.run()


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, auth_token: str | None = None, **options) -> CallResult:
    """The carrier-generic entry point used by ``voicebot simulate --carrier twilio``."""
    return await simulate_twilio_call(base_url, to=to, from_=from_, auth_token=auth_token, script=script,
                                      max_duration_s=max_duration_s, **options)
