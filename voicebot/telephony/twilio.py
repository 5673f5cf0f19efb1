"""Twilio: the Voice webhook (TwiML), the Media Streams wire protocol and its authentication."""

from __future__ import annotations

import base64
import binascii
import json
from xml.sax.saxutils import quoteattr

import numpy as np
import structlog
from aiohttp import web

from .. import jsoncodec, latency, metrics
from ..audio.codecs import UnsupportedCodec, WireCodec
from .base import Audio, CallMeta, CarrierSession, Dtmf, MarkPlayed, ProtocolError, Started, Stopped, decode_audio
from .twilio_auth import StreamTokens, stream_token_secret, validate_signature

log = structlog.get_logger("voicebot.twilio")

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"


def _field(msg: dict, key: str, kind: type, where: str):
    value = msg.get(key)
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    return value


class TwilioSession(CarrierSession):
    carrier = "twilio"
    supports_marks = True
    max_chunk_ms = None     # Twilio buffers media messages of any length

    def __init__(self, send_text, send_bytes, *, tokens: StreamTokens, upgrade_signed: bool) -> None:
        super().__init__(send_text, send_bytes)
        self._tokens = tokens
        self._upgrade_signed = upgrade_signed
        self.stream_sid: str | None = None
        self.codec: WireCodec | None = None
        self._prefix = ""
        self._mark_prefix = ""
        self._clear = ""

    def handle_text(self, text: str):
        if latency.ENABLED:
            latency.arrival, latency.arrival_side = latency.clock(), "carrier"
        try:
            msg = jsoncodec.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"frame is not JSON ({exc.msg} at char {exc.pos}): {text[:60]!r}") from None
        if not isinstance(msg, dict):
            raise ProtocolError(f"frame is JSON but not an object: {text[:60]!r}")
        event = msg.get("event")
        if event == "media":
            if self.stream_sid is None:
                raise ProtocolError("media before start")
            media = _field(msg, "media", dict, "media")
            if media.get("track", "inbound") != "inbound":
                return []
            if latency.ENABLED:
                latency.count("carrier_frames_in")
            payload = _field(media, "payload", str, "media.media")
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)   # b64decode(validate=True), cheaper
            except (binascii.Error, ValueError):
                raise ProtocolError(f"media chunk {media.get('chunk')!r}: payload is not valid base64") from None
            return [Audio(decode_audio(self.codec, audio, "media"))]
        if event == "mark":
            return [MarkPlayed(_field(_field(msg, "mark", dict, "mark"), "name", str, "mark.mark"))]
        if event == "start":
            start = _field(msg, "start", dict, "start")
            stream_sid = _field(start, "streamSid", str, "start.start")
            call_sid = _field(start, "callSid", str, "start.start")
            params = start.get("customParameters") or {}
            if not isinstance(params, dict):
                raise ProtocolError("start.start: customParameters is not an object")
            self.codec = self.codec_for(start.get("mediaFormat") or {})
            self.stream_sid = stream_sid
            sid = json.dumps(stream_sid)
            self._prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
            self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
            self._clear = '{"event":"clear","streamSid":' + sid + '}'
            params = {str(k): str(v) for k, v in params.items()}
            return [Started(CallMeta(carrier="twilio", call_id=call_sid, stream_id=stream_sid,
                                     from_number=params.get("From"), to_number=params.get("To"),
                                     params=params))]
        if event == "connected":
            return []
        if event == "dtmf":
            return [Dtmf(str(_field(_field(msg, "dtmf", dict, "dtmf"), "digit", str, "dtmf.dtmf")))]
        if event == "stop":
            return [Stopped("stop message")]
        raise ProtocolError(f"unknown event {event!r}")

    def codec_for(self, media_format: dict) -> WireCodec:
        try:
            return WireCodec(str(media_format.get("encoding", "audio/x-mulaw")),
                             int(media_format.get("sampleRate", 8000)))
        except (UnsupportedCodec, ValueError, TypeError) as exc:
            raise ProtocolError(f"start.start: unusable mediaFormat {media_format}: {exc}") from None

    def authorize(self, meta: CallMeta) -> str | None:
        if self._upgrade_signed:
            return None
        return self._tokens.check(meta.params.get("token"), meta.call_id, meta.to_number or "",
                                  meta.from_number or "")

    def send_audio(self, frame: np.ndarray) -> None:
        self.send_text(self._prefix + base64.b64encode(self.codec.encode(frame)).decode() + '"}}')

    def send_mark(self, name: str) -> None:
        self.send_text(self._mark_prefix + json.dumps(name) + "}}")

    def send_clear(self) -> None:
        self.send_text(self._clear)


def twiml_stream(stream_url: str, params: dict[str, str]) -> str:
    parameters = "".join(f"\n      <Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response>\n  <Connect>\n'
            f'    <Stream url={quoteattr(stream_url)}>{parameters}\n    </Stream>\n  </Connect>\n</Response>\n')


def twiml_reject() -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n<Response>\n  <Reject reason="rejected"/>\n</Response>\n'


def twiml_hangup() -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n<Response>\n  <Hangup/>\n</Response>\n'


class TwilioRoutes:
    def __init__(self, services) -> None:
        self.services = services
        settings = services.settings
        self.tokens = StreamTokens(stream_token_secret(), ttl_s=settings.twilio.stream_token_ttl_s)
        self.stream_url = settings.public_ws_url + MEDIA_PATH

    def _signature_ok(self, url: str, params, signature: str | None) -> str | None:
        twilio = self.services.settings.twilio
        if not twilio.validate_signatures:
            return None
        if not twilio.auth_token:
            return "TWILIO_AUTH_TOKEN is not set, so no signature can be checked"
        if not signature:
            return "X-Twilio-Signature header missing"
        if not validate_signature(twilio.auth_token, url, params, signature):
            return "X-Twilio-Signature does not match"
        return None

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = [(k, v) for k, v in form.items() if isinstance(v, str)]
        url = self.services.settings.public_url + request.path_qs
        problem = self._signature_ok(url, params, request.headers.get("X-Twilio-Signature"))
        if problem is not None:
            log.warning("twilio_webhook_refused", reason=problem, url=url, call_sid=form.get("CallSid"))
            metrics.stream_refused("twilio", "auth")
            return web.Response(status=403, text=problem + "\n")
        call_sid, to, from_ = str(form.get("CallSid", "")), str(form.get("To", "")), str(form.get("From", ""))
        attempt = request.query.get("attempt")
        if attempt is not None:
            return await self._campaign_call(attempt, call_sid, to, from_)
        persona = self.services.dialplan.lookup(to)
        if persona is None:
            log.warning("no_persona_for_number", to=to, call_sid=call_sid)
            metrics.stream_refused("twilio", "no_persona")
            return web.Response(text=twiml_reject(), content_type="text/xml")
        log.info("twilio_call_incoming", call_sid=call_sid, to=to, persona=persona.name)
        params = {"From": from_, "To": to, "CallSid": call_sid, "token": self.tokens.issue(call_sid, to, from_)}
        return web.Response(text=twiml_stream(self.stream_url, params), content_type="text/xml")

    async def _campaign_call(self, attempt: str, call_sid: str, to: str, from_: str) -> web.Response:
        """A call we placed for a campaign (its Url carries the signed attempt): its stream takes the attempt on,
        and the stream's start finds the campaign, the contact and the persona."""
        campaigns = self.services.campaigns
        if campaigns is None or campaigns.attempt_of(attempt) is None:
            log.warning("twilio_campaign_call_refused", call_sid=call_sid, to=to,
                        reason="no campaigns here" if campaigns is None else "attempt token is not genuine")
            metrics.stream_refused("twilio", "no_persona" if campaigns is None else "auth")
            return web.Response(text=twiml_hangup(), content_type="text/xml")
        log.info("twilio_campaign_call_answered", call_sid=call_sid, to=to, attempt_id=campaigns.attempt_of(attempt))
        params = {"From": from_, "To": to, "CallSid": call_sid, "token": self.tokens.issue(call_sid, to, from_),
                  "attempt": attempt}
        return web.Response(text=twiml_stream(self.stream_url, params), content_type="text/xml")

    async def media(self, request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature")
        twilio = self.services.settings.twilio
        upgrade_signed = (not twilio.validate_signatures) or bool(
            signature and twilio.auth_token and validate_signature(twilio.auth_token, self.stream_url, {}, signature))
        return await self.services.answer.websocket(request, TwilioSession, tokens=self.tokens,
                                                    upgrade_signed=upgrade_signed)


def add_routes(app: web.Application, services) -> None:
    routes = TwilioRoutes(services)
    app.router.add_post(VOICE_PATH, routes.voice)
    app.router.add_get(MEDIA_PATH, routes.media)
