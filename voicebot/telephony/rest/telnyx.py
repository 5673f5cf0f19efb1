"""Telnyx Call Control v2: hang-up, transfer and DTMF on a live call; outbound calls and their webhooks.

``POST {api_base_url}/v2/calls/{call_control_id}/actions/{hangup|transfer|send_dtmf}`` with a JSON body
(``{}``, ``{"to": "+1…" | "sip:…"}``, ``{"digits": "1w2"}``) and ``Authorization: Bearer $TELNYX_API_KEY``;
``{"data": {"result": "ok"}}`` on success. Errors are ``{"errors": [{"code", "title", "detail"}]}``; a hang-up
answered 422 with code 90018 (the call has already ended) has done what it was asked. The base URL comes from
``carriers.telnyx.call_control.api_base_url`` (default ``https://api.telnyx.com``).

Outbound calls (campaigns): ``POST /v2/calls`` from the Call Control application
``carriers.telnyx.call_control.connection_id``, streaming to our ``stream_url`` (RTP bidirectional, the stream
token $TELNYX_STREAM_TOKEN as ``stream_auth_token``), events to ``webhook_url``, the signed attempt token as
``client_state`` (base64; echoed in every event and in the stream's ``start``) and, with answering-machine
detection, ``answering_machine_detection: greeting_end``: ``call.machine.detection.ended`` says human or machine,
and for a machine ``call.machine.greeting.ended`` follows when its greeting is over, beep or not (``detect_beep``
would send it only when a beep is heard, leaving a beepless voicemail without a verdict).
``GET /v2/calls/{call_control_id}`` gives ``is_alive`` for reconciling; Telnyx has no search by number.

Webhooks are signed with Telnyx's account key: ``telnyx-signature-ed25519`` is base64 Ed25519 over
``f"{telnyx-timestamp}|{raw body}"``, checked with $TELNYX_PUBLIC_KEY (the base64 of the 32-byte public key, as
the portal shows it). A timestamp more than 5 minutes off, or an event id already received, is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from ... import jsoncodec
from ...config import Settings
from ..telnyx import decode_client_state
from .base import (ApiConfig, CallControl, CallControlError, CallbackRefused, CallProgress, Configured, DialRequest,
                   SeenCallbacks, Target, header, call_control_fields, check_fresh, configured, missing_env, optional_url)

DEFAULT_API_BASE_URL = "https://api.telnyx.com"
API_KEY_ENV = "TELNYX_API_KEY"
PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
STREAM_TOKEN_ENV = "TELNYX_STREAM_TOKEN"
CALL_ALREADY_ENDED = "90018"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"

# call.hangup's hangup_cause → carrier-neutral progress (anything else: failed)
HANGUP_CAUSES = {"normal_clearing": "completed", "time_limit": "completed", "user_busy": "busy",
                 "timeout": "no-answer", "no_answer": "no-answer", "originator_cancel": "canceled"}
# call.machine.greeting.ended's result → AMD verdict
GREETING_ENDS = {"beep_detected": "machine_end_beep", "ended": "machine_end_silence", "not_sure": "machine_end_other"}
DETECTION_RESULTS = {"human": "human", "not_sure": "unknown"}     # "machine": wait for the greeting to end


def public_key(text: str | None) -> tuple[Ed25519PublicKey | None, str | None]:
    """(the key, None) from $TELNYX_PUBLIC_KEY's text, or (None, what is wrong with it)."""
    if not text:
        return None, f"{PUBLIC_KEY_ENV} is not set (webhooks cannot be verified)"
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, f"{PUBLIC_KEY_ENV} is not base64"
    if len(raw) != 32:
        return None, f"{PUBLIC_KEY_ENV} decodes to {len(raw)} bytes, not the 32 of an Ed25519 public key"
    return Ed25519PublicKey.from_public_bytes(raw), None


def encode_client_state(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


class TelnyxCallControl(CallControl):
    carrier = "telnyx"
    dials = True
    request_id_headers = ("x-request-id",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection_id = self.config.user
        self.public_key, self.key_problem = public_key(os.environ.get(PUBLIC_KEY_ENV))
        self.stream_token = os.environ.get(STREAM_TOKEN_ENV) or None
        self._seen = SeenCallbacks()

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        fields = call_control_fields(settings, cls.carrier)
        base_url = optional_url(fields, "api_base_url") or DEFAULT_API_BASE_URL
        connection_id = fields.get("connection_id", str, None)
        fields.reject_unknown()
        problem = missing_env(os.environ, API_KEY_ENV)
        dial = (problem or missing_env(os.environ, STREAM_TOKEN_ENV) or public_key(os.environ.get(PUBLIC_KEY_ENV))[1]
                or (None if connection_id else "carriers.telnyx.call_control.connection_id is not set"))
        return configured(ApiConfig(base_url, connection_id, os.environ.get(API_KEY_ENV)),
                          {"hang_up": problem, "transfer": problem, "send_dtmf": problem}, dial=dial)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.secret}"}

    def _call_url(self, call_id: str) -> URL:
        return URL(self.config.base_url) / "v2" / "calls" / call_id

    def _action_url(self, call_id: str, action: str) -> URL:
        return self._call_url(call_id) / "actions" / action

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "POST", self._action_url(meta.call_id, "hangup"), json_body={},
                            done_already=(CALL_ALREADY_ENDED,))

    async def _transfer(self, meta, target: Target) -> None:
        await self._request("transfer", meta.call_id, "POST", self._action_url(meta.call_id, "transfer"),
                            json_body={"to": target.value})

    async def _send_dtmf(self, meta, digits: str) -> None:
        await self._request("send_dtmf", meta.call_id, "POST", self._action_url(meta.call_id, "send_dtmf"),
                            json_body={"digits": digits})

    # -- outbound calls ----------------------------------------------------------------------------------
    async def _dial(self, request: DialRequest) -> str:
        if request.media_url is None:
            raise self._error("dial", request.to, "no stream_url (media_url) for the answered call")
        body = {"connection_id": self.connection_id, "to": request.to, "from": request.from_,
                "stream_url": request.media_url, "stream_track": "inbound_track",
                "stream_bidirectional_mode": "rtp", "stream_auth_token": self.stream_token,
                "webhook_url": request.callback_url, "webhook_url_method": "POST",
                "client_state": encode_client_state(request.attempt_token), "timeout_secs": request.ring_timeout_s}
        if request.machine_detection:
            body["answering_machine_detection"] = "greeting_end"
        answer = await self._request("dial", request.to, "POST", URL(self.config.base_url) / "v2" / "calls",
                                     json_body=body)
        data = answer.get("data") if isinstance(answer, dict) else None
        call_id = data.get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise self._error("dial", request.to, f"the answer names no call_control_id: {str(answer)[:200]!r}")
        return call_id

    async def call_status(self, carrier_call_id: str) -> CallProgress | None:
        """Telnyx says only whether the call is alive (and its duration): alive → "ringing" (the least a live
        call has reached; callbacks say more), ended → "completed" when it lasted, else "failed"."""
        try:
            answer = await self._request("call_status", carrier_call_id, "GET", self._call_url(carrier_call_id))
        except CallControlError as exc:
            if exc.status == 404:
                return None
            raise
        data = answer.get("data") if isinstance(answer, dict) else {}
        duration = data.get("call_duration")
        alive = data.get("is_alive")
        status = "ringing" if alive else ("completed" if duration else "failed")
        return CallProgress(carrier_call_id, status, duration_s=None if alive else float(duration or 0),
                            attempt_token=decode_client_state(data.get("client_state")),
                            detail=None if alive else "ended (Telnyx's call status does not say how)")

    async def find_call(self, to: str, from_: str, since: datetime) -> list[CallProgress]:
        return []       # no call search in Call Control: a dial whose answer was lost is known by its webhooks

    def read_callback(self, url: str, headers: Mapping[str, str], body: bytes, *,
                      now: datetime | None = None) -> CallProgress | None:
        now = now or datetime.now(timezone.utc)
        self._verify(headers, body, now)
        try:
            event = jsoncodec.loads(body)
            data = event["data"]
            kind, payload, event_id = data["event_type"], data["payload"], data["id"]
            call_id = payload["call_control_id"]
        except (ValueError, KeyError, TypeError):
            kind = event_id = call_id = None
        if not all(isinstance(value, str) and value for value in (kind, event_id, call_id)):
            raise CallbackRefused("signed, but not a Telnyx call event (data.event_type, data.id, "
                                  "data.payload.call_control_id as text)")
        if not self._seen.first((event_id,), now):
            raise CallbackRefused(f"event {event_id} already received (a replay)")
        at = _iso(data.get("occurred_at")) or now
        token = decode_client_state(payload.get("client_state"))
        progress = {"carrier_call_id": call_id, "attempt_token": token, "at": at}
        if kind == "call.answered":
            return CallProgress(status="answered", **progress)
        if kind == "call.hangup":
            cause = _text(payload.get("hangup_cause"))
            status = HANGUP_CAUSES.get(cause, "failed")
            start, end = _iso(payload.get("start_time")), _iso(payload.get("end_time"))
            # Telnyx's start_time is when the call was placed: this duration includes the ringing
            duration = ((end - start).total_seconds() if status == "completed" and start and end and start <= end
                        else None)
            sip = payload.get("sip_hangup_cause")
            return CallProgress(status=status, duration_s=duration,
                                detail=f"{cause}" + (f" (SIP {sip})" if str(sip).isdigit() and sip != "200" else ""),
                                **progress)
        if kind == "call.machine.detection.ended":
            answered_by = DETECTION_RESULTS.get(_text(payload.get("result")))
            return None if answered_by is None else CallProgress(status="answered", answered_by=answered_by, **progress)
        if kind == "call.machine.greeting.ended":
            answered_by = GREETING_ENDS.get(_text(payload.get("result")), "machine_end_other")
            return CallProgress(status="answered", answered_by=answered_by, **progress)
        return None     # call.initiated, streaming.*, …: nothing to record

    def _verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        if self.public_key is None:
            raise CallbackRefused(self.key_problem)
        signature, timestamp = header(headers, SIGNATURE_HEADER), header(headers, TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise CallbackRefused(f"{SIGNATURE_HEADER} or {TIMESTAMP_HEADER} missing")
        if not timestamp.isdigit():
            raise CallbackRefused(f"{TIMESTAMP_HEADER} {timestamp[:40]!r} is not Unix seconds")
        try:
            self.public_key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
        except (InvalidSignature, binascii.Error, ValueError):
            raise CallbackRefused(f"{SIGNATURE_HEADER} does not verify with {PUBLIC_KEY_ENV} over "
                                  "the timestamp and body (not Telnyx's, or altered)") from None
        check_fresh(datetime.fromtimestamp(int(timestamp), timezone.utc), now, TIMESTAMP_HEADER)

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            message = ": ".join(str(first[key]) for key in ("title", "detail") if first.get(key))
            code = first.get("code")
            return (str(code) if code is not None else None), message
        return None, text.strip()


def _text(value: object) -> str | None:
    """A payload field Telnyx sends as text (a cause, a result); None when it is something else."""
    return value if isinstance(value, str) else None


def _iso(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None
