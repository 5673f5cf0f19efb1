"""Twilio's REST Calls resource (API 2010-04-01): hang-up and transfer of a live call.

``POST {api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, form-encoded, HTTP Basic
``TWILIO_ACCOUNT_SID``:``TWILIO_AUTH_TOKEN``. Hang-up: ``Status=completed``. Transfer: new TwiML for the call,
``<Response><Dial><Number>+1…</Number></Dial></Response>`` (``<Sip>`` for a SIP URI); the running
``<Connect><Stream>`` then ends (Twilio sends ``stop`` and closes the socket) and Twilio dials the target.

No send_dtmf: any new TwiML replaces the stream, and Twilio has no REST action that plays digits into a call
while it stays connected to us; the digits are played in-band, as DTMF tones in the bot's audio.

Outbound calls (campaigns): ``POST …/Calls.json`` with ``To``, ``From``, ``Url`` (our Voice webhook, which answers
the ``<Connect><Stream>``), ``StatusCallback`` for the four progress events and, with answering-machine detection,
``MachineDetection=DetectMessageEnd`` run asynchronously (``AsyncAmd``: the call is connected to us at once and the
verdict comes to ``AsyncAmdStatusCallback`` after the greeting). ``GET …/Calls/{Sid}.json`` and ``GET Calls.json``
filtered by ``To``, ``From`` and ``StartTime>=`` reconcile a dial whose outcome we lost. Callbacks are signed as
the Voice webhook is (X-Twilio-Signature over our public URL and the form); a callback whose signed ``Timestamp``
is more than 5 minutes off, or that was already received (call, sequence number, kind), is refused.

SignalWire's Compatibility (LaML) API is the same resource under another base URL: :mod:`.signalwire`
configures this class for it (for call control; campaigns dial through Twilio or Telnyx).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from yarl import URL

from ...config import Settings
from ..twilio_auth import validate_signature
from .base import (ApiConfig, CallControl, CallControlError, CallbackRefused, CallProgress, Configured, DialRequest,
                   SeenCallbacks, Target, header, basic_auth, check_fresh, configured, missing_env)

API_VERSION = "2010-04-01"
ACCOUNT_SID_ENV = "TWILIO_ACCOUNT_SID"
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
# Twilio's CallStatus → carrier-neutral progress; None: nothing to record from a callback.
CALL_STATUS = {"queued": None, "initiated": None, "ringing": "ringing", "in-progress": "answered",
               "completed": "completed", "busy": "busy", "no-answer": "no-answer", "failed": "failed",
               "canceled": "canceled"}
NO_REST_DTMF = ("{product}'s REST API cannot play digits into a call that stays on our media stream: "
                "play them in-band as DTMF tones")


def dial_twiml(target: Target) -> str:
    """TwiML (and cXML) that connects the call to ``target``."""
    noun = "Number" if target.kind == "number" else "Sip"
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial><{noun}>{escape(target.value)}</{noun}>'
            f'</Dial></Response>')


class TwilioCallControl(CallControl):
    carrier = "twilio"
    product = "Twilio"
    request_id_headers = ("Twilio-Request-Id",)
    dials = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._seen = SeenCallbacks()

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        twilio = settings.twilio
        credentials = missing_env({ACCOUNT_SID_ENV: twilio.account_sid or "", AUTH_TOKEN_ENV: twilio.auth_token or ""},
                                  ACCOUNT_SID_ENV, AUTH_TOKEN_ENV)
        config = ApiConfig(twilio.api_base_url, twilio.account_sid, twilio.auth_token)
        return configured(config, {"hang_up": credentials, "transfer": credentials,
                                   "send_dtmf": NO_REST_DTMF.format(product=cls.product)}, dial=credentials)

    def auth_headers(self) -> dict[str, str]:
        return basic_auth(self.config.user, self.config.secret)

    def _calls_url(self) -> URL:
        return URL(self.config.base_url) / API_VERSION / "Accounts" / self.config.user / "Calls.json"

    def _call_url(self, call_id: str) -> URL:
        return URL(self.config.base_url) / API_VERSION / "Accounts" / self.config.user / "Calls" / f"{call_id}.json"

    # -- outbound calls ----------------------------------------------------------------------------------
    async def _dial(self, request: DialRequest) -> str:
        if request.media_url is None:
            raise self._error("dial", request.to, "no Voice webhook URL (media_url) for the answered call")
        form = [("To", request.to), ("From", request.from_), ("Url", request.media_url), ("Method", "POST"),
                ("StatusCallback", request.callback_url), ("StatusCallbackMethod", "POST"),
                *(("StatusCallbackEvent", event) for event in STATUS_EVENTS),
                ("Timeout", str(request.ring_timeout_s))]
        if request.machine_detection:
            form += [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                     ("AsyncAmdStatusCallback", request.callback_url), ("AsyncAmdStatusCallbackMethod", "POST")]
        body = await self._request("dial", request.to, "POST", self._calls_url(), form=form, ok=(201,))
        sid = body.get("sid") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid:
            raise self._error("dial", request.to, f"the answer names no call sid: {str(body)[:200]!r}")
        return sid

    async def call_status(self, carrier_call_id: str) -> CallProgress | None:
        try:
            body = await self._request("call_status", carrier_call_id, "GET", self._call_url(carrier_call_id))
        except CallControlError as exc:
            if exc.status == 404:
                return None
            raise
        return self._resource_progress(body)

    async def find_call(self, to: str, from_: str, since: datetime) -> list[CallProgress]:
        query = {"To": to, "From": from_, "StartTime>=": since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        body = await self._request("find_call", to, "GET", self._calls_url().with_query(query))
        calls = body.get("calls") if isinstance(body, dict) else None
        return [self._resource_progress(call) for call in calls or [] if isinstance(call, dict)]

    @staticmethod
    def _resource_progress(call: dict) -> CallProgress:
        """A Calls resource (JSON) as progress: queued/initiated are "dialed" here."""
        status = call.get("status")
        duration = call.get("duration")
        return CallProgress(
            carrier_call_id=str(call.get("sid")),
            status=CALL_STATUS.get(status) or ("dialed" if status in ("queued", "initiated") else "failed"),
            answered_by=call.get("answered_by") or None,
            duration_s=float(duration) if duration not in (None, "") else None,
            detail=None if status in CALL_STATUS else f"unknown status {status!r}",
            at=_rfc2822(call.get("date_updated")) or datetime.now(timezone.utc))

    def read_callback(self, url: str, headers: Mapping[str, str], body: bytes, *,
                      now: datetime | None = None) -> CallProgress | None:
        now = now or datetime.now(timezone.utc)
        form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        signature = header(headers, "X-Twilio-Signature")
        if not validate_signature(self.config.secret or "", url, form, signature):
            raise CallbackRefused("X-Twilio-Signature " + ("missing" if not signature else
                                  "does not match the URL and form (not Twilio's, or signed for another URL)"))
        fields = dict(form)
        sid = fields.get("CallSid")
        if not sid or fields.get("AccountSid") != self.config.user:
            raise CallbackRefused(f"callback for account {fields.get('AccountSid')!r} / call {sid!r}, not ours")
        token = dict(parse_qsl(urlsplit(url).query)).get("attempt")
        at = _rfc2822(fields.get("Timestamp"))
        if at is not None:
            check_fresh(at, now, "callback Timestamp")
        answered_by = fields.get("AnsweredBy") or None
        if "CallStatus" not in fields and answered_by is not None:      # the async AMD verdict
            if not self._seen.first((sid, "amd"), now):
                raise CallbackRefused(f"AMD callback for {sid} already received (a replay)")
            return CallProgress(sid, "answered", answered_by=answered_by, attempt_token=token, at=at or now,
                                detail=f"machine detection took {fields.get('MachineDetectionDuration')} ms")
        status_text = fields.get("CallStatus")
        if status_text not in CALL_STATUS:
            raise CallbackRefused(f"callback CallStatus {status_text!r} is not one of Twilio's")
        sequence = _int(fields.get("SequenceNumber"))
        if not self._seen.first((sid, "status", sequence, status_text), now):
            raise CallbackRefused(f"status callback {sequence} ({status_text}) for {sid} already received (a replay)")
        status = CALL_STATUS[status_text]
        if status is None:
            return None
        duration = _int(fields.get("CallDuration"))
        sip = fields.get("SipResponseCode")
        return CallProgress(sid, status, answered_by=answered_by, sequence=sequence, attempt_token=token,
                            duration_s=float(duration) if duration is not None and 0 <= duration <= MAX_DURATION_S
                            else None, at=at or now,
                            detail=f"SIP {sip}" if sip and status in ("failed", "busy", "no-answer") else None)

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "POST", self._call_url(meta.call_id), form={"Status": "completed"})

    async def _transfer(self, meta, target: Target) -> None:
        documents = self.config.documents    # None: the TwiML travels in the request
        form = ({"Twiml": dial_twiml(target)} if documents is None
                else {"Url": documents.url(self.carrier, meta.call_id, target), "Method": "POST"})
        await self._request("transfer", meta.call_id, "POST", self._call_url(meta.call_id), form=form)

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        # {"code": 20404, "message": "…", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}
        if isinstance(body, dict) and body.get("message"):
            code = body.get("code")
            return (str(code) if code is not None else None), str(body["message"])
        return None, text.strip()


MAX_DURATION_S = 7 * 24 * 3600     # a CallDuration beyond it (or negative) is not a call's: read as unknown


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _rfc2822(text: object) -> datetime | None:
    """Twilio's dates ("Fri, 04 Dec 2026 18:20:33 +0000"); None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return parsedate_to_datetime(text).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return None
