"""A local Telnyx Call Control v2 API: the hang-up, transfer and send_dtmf actions on a call.

``POST /v2/calls/{call_control_id}/actions/{hangup|transfer|send_dtmf}``, JSON body, ``Authorization: Bearer
<API key>``. Checked as Telnyx does: the key (else 401 with code 10009), a JSON object body (else 400, 10015), a
known call (else 404, 10005) that is still live (else 422 with code 90018, "Call has already ended"), and each
action's fields: ``to`` required and ``+E.164`` or a ``sip:`` URI (10004 missing, 10016 not E.164), ``digits``
from 0-9 A-D * # w W (``duration_millis`` 100-500), ``client_state`` base64 and ``command_id`` text where given
(other invalid values: 422 with the generic code 10015).
Success is ``{"data": {"result": "ok"}}``; every answer has an ``x-request-id`` header and errors are
``{"errors": [{"code", "title", "detail", "source"?, "meta": {"url"}}]}``.

A hang-up ends the media stream. A transfer bridges the caller to the target; this fake does not assume
Telnyx then ends our stream (``ends_stream`` False): the server closes its end after a transfer.

Outbound calls (:mod:`.callees` says who answers): ``POST /v2/calls`` takes ``connection_id`` (one of the fake's
``connection_ids``), ``to`` and ``from`` (+E.164; missing: 10004, else 10016), ``stream_url`` (ws/wss), ``stream_track``,
``stream_bidirectional_mode``, ``stream_auth_token``, ``webhook_url`` (+ ``_method``), ``client_state`` (base64),
``timeout_secs`` (5-600) and ``answering_machine_detection`` (other invalid values: 422, 10015), and answers
``{"data": {"call_control_id", "call_leg_id", "call_session_id", "is_alive": false, "record_type": "call"}}``.
Webhooks go to ``webhook_url``, signed with the fake's Ed25519 key (``public_key_b64`` is what the portal would
show as the account's public key): ``{"data": {"record_type": "event", "id", "event_type", "occurred_at",
"payload": {call_control_id, call_leg_id, call_session_id, connection_id, client_state, from, to, direction,
state, …}}, "meta": {"attempt", "delivered_to"}}`` for ``call.initiated``, ``call.answered``,
``call.machine.detection.ended`` (``result`` human or machine), ``call.machine.greeting.ended`` (``result``
beep_detected) and ``call.hangup`` (``hangup_cause``, ``hangup_source``, ``sip_hangup_cause``, ``start_time``,
``end_time``). An answered call connects to ``stream_url`` with the stream token and ``client_state`` in
``start``. ``GET /v2/calls/{call_control_id}`` gives ``is_alive`` and ``call_duration``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voicebot.simulator.caller import CarrierProtocol
from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi
from voicebot.simulator.carrier_api.callees import Callee, DialledCall, Dialling
from voicebot.simulator.telnyx import TelnyxProtocol

TARGET = re.compile(r"\+[1-9][0-9]{1,14}|sips?:[^\s<>\"]+", re.IGNORECASE)
DIGITS = re.compile(r"[0-9A-D*#wW]+")
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
AMD_MODES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled")
HANGUP_CAUSES = {"completed": "normal_clearing", "busy": "user_busy", "no-answer": "timeout",
                 "canceled": "originator_cancel"}


def iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


class TelnyxError(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.pointer = status, code, title, detail, pointer


def invalid(detail: str, pointer: str) -> TelnyxError:
    """A field with a value Telnyx does not take (Telnyx's generic 10015; its per-field codes vary)."""
    return TelnyxError(422, "10015", "Bad Request", detail, pointer)


class FakeTelnyxApi(Dialling, FakeCarrierApi):
    carrier = "telnyx"

    def __init__(self, api_key: str, *, connection_ids: Iterable[str] = (), default_callee: Callee | None = None) -> None:
        self.api_key = api_key
        self.connection_ids = set(connection_ids)      # the Call Control applications a dial may use
        self._signing_key = Ed25519PrivateKey.generate()
        self.public_key_b64 = base64.b64encode(self._signing_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)).decode()
        self.init_dialling(default_callee)
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/calls/{call_control_id}/actions/{action}", self.action)
        router.add_post("/v2/calls", self.dial)
        router.add_get("/v2/calls/{call_control_id}", self.call_status)

    def authenticate(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise TelnyxError(401, "10009", "Authentication failed",
                              "The required authentication headers were either invalid or not included in the request.")

    @staticmethod
    def answer(status: int, body: dict) -> web.Response:
        return web.json_response(body, status=status, headers={"x-request-id": str(uuid.uuid4())})

    def error(self, error: TelnyxError) -> web.Response:
        item = {"code": error.code, "title": error.title, "detail": error.detail,
                "meta": {"url": f"https://developers.telnyx.com/docs/overview/errors/{error.code}"}}
        if error.pointer:
            item["source"] = {"pointer": error.pointer}
        return self.answer(error.status, {"errors": [item]})

    async def action(self, request: web.Request) -> web.Response:
        try:
            self.authenticate(request)
            handler = {"hangup": self.hang_up, "transfer": self.transfer,
                       "send_dtmf": self.send_dtmf}.get(request.match_info["action"])
            if handler is None:
                raise TelnyxError(404, "10005", "Resource not found", "The requested resource or URL could not be found.")
            body = self.body(await request.text())
            call = self.calls.get(request.match_info["call_control_id"])
            if call is None:
                raise TelnyxError(404, "10005", "Resource not found", "The requested resource or URL could not be found.")
            if not call.live:
                raise TelnyxError(422, "90018", "Call has already ended",
                                  "This call is no longer active and can't receive commands.")
            self.common_fields(body)
            handler(call, body)
        except TelnyxError as error:
            return self.error(error)
        return self.answer(200, {"data": {"result": "ok"}})

    @staticmethod
    def body(text: str) -> dict:
        try:
            body = json.loads(text) if text.strip() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TelnyxError(400, "10015", "Bad Request", "The request failed because it was not well-formed.")
        return body

    @staticmethod
    def common_fields(body: dict) -> None:
        state = body.get("client_state")
        if state is not None:
            try:
                base64.b64decode(state, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise invalid("client_state must be a valid Base-64 encoded string.", "/client_state") from None
        if "command_id" in body and not isinstance(body["command_id"], str):
            raise invalid("command_id must be a string.", "/command_id")

    def hang_up(self, call: FakeCall, body: dict) -> None:
        self.apply(call, "hang_up", ends_stream=True)

    def transfer(self, call: FakeCall, body: dict) -> None:
        to = body.get("to")
        if to is None:
            raise TelnyxError(422, "10004", "Missing required parameter", "The 'to' parameter is required.", "/to")
        if not isinstance(to, str) or not TARGET.fullmatch(to):
            raise TelnyxError(422, "10016", "Phone number must be in +E.164 format",
                              f"'to' must be a +E.164 number or a SIP URI, got {to!r}.", "/to")
        self.apply(call, "transfer", ends_stream=False, target=to, document=json.dumps(body))

    def send_dtmf(self, call: FakeCall, body: dict) -> None:
        digits = body.get("digits")
        if digits is None:
            raise TelnyxError(422, "10004", "Missing required parameter", "The 'digits' parameter is required.",
                              "/digits")
        if not isinstance(digits, str) or not DIGITS.fullmatch(digits):
            raise invalid(f"Valid digits are 0-9, A-D, *, and #, with w and W pauses; got {digits!r}.", "/digits")
        duration = body.get("duration_millis", 250)
        if not isinstance(duration, int) or isinstance(duration, bool) or not 100 <= duration <= 500:
            raise invalid(f"duration_millis ranges from 100 to 500, got {duration!r}.", "/duration_millis")
        self.apply(call, "send_dtmf", ends_stream=False, digits=digits)

    # -- outbound calls --------------------------------------------------------------------------------------
    async def dial(self, request: web.Request) -> web.Response:
        try:
            self.authenticate(request)
            body = self.body(await request.text())
            self.common_fields(body)
            dial = self.read_dial(body)
        except TelnyxError as error:
            return self.error(error)
        call = DialledCall("v3:" + uuid.uuid4().hex, dial["to"], dial["from"], self.callee_for(dial["to"]), dial,
                           self.now())
        call.ids.update(call_leg_id=str(uuid.uuid4()), call_session_id=str(uuid.uuid4()))
        self.place(call, dial["timeout_secs"])
        return self.answer(200, {"data": {"call_control_id": call.call_id, **call.ids, "is_alive": False,
                                          "record_type": "call"}})

    def read_dial(self, body: dict) -> dict:
        for name in ("connection_id", "to", "from"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise TelnyxError(422, "10004", "Missing required parameter", f"The '{name}' parameter is required.",
                                  f"/{name}")
        if body["connection_id"] not in self.connection_ids:
            raise invalid(f"connection_id {body['connection_id']!r} is not a Call Control application of this "
                          "account.", "/connection_id")
        for name in ("to", "from"):
            if not E164.fullmatch(body[name]):
                raise TelnyxError(422, "10016", "Phone number must be in +E.164 format",
                                  f"'{name}' must be a +E.164 number, got {body[name]!r}.", f"/{name}")
        stream_url, webhook_url = body.get("stream_url"), body.get("webhook_url")
        if stream_url is not None and (urlsplit(str(stream_url)).scheme not in ("ws", "wss")
                                       or not urlsplit(str(stream_url)).netloc):
            raise invalid(f"stream_url must be a ws:// or wss:// URL, got {stream_url!r}.", "/stream_url")
        if webhook_url is not None and urlsplit(str(webhook_url)).scheme not in ("http", "https"):
            raise invalid(f"webhook_url must be an http(s) URL, got {webhook_url!r}.", "/webhook_url")
        choices = {"stream_track": ("inbound_track", "outbound_track", "both_tracks"),
                   "stream_bidirectional_mode": ("mp3", "rtp"), "webhook_url_method": ("POST", "GET"),
                   "answering_machine_detection": AMD_MODES}
        for name, allowed in choices.items():
            if name in body and body[name] not in allowed:
                raise invalid(f"{name} must be one of {', '.join(allowed)}, got {body[name]!r}.", f"/{name}")
        timeout = body.get("timeout_secs", 30)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 5 <= timeout <= 600:
            raise invalid(f"timeout_secs ranges from 5 to 600, got {timeout!r}.", "/timeout_secs")
        amd = body.get("answering_machine_detection", "disabled")
        return {**body, "timeout_secs": timeout, "machine_detection": amd != "disabled", "amd": amd}

    async def call_status(self, request: web.Request) -> web.Response:
        try:
            self.authenticate(request)
            call = self.dialled.get(request.match_info["call_control_id"])
            if call is None:
                raise TelnyxError(404, "10005", "Resource not found", "The requested resource or URL could not be found.")
        except TelnyxError as error:
            return self.error(error)
        return self.answer(200, {"data": {
            "call_control_id": call.call_id, **call.ids, "client_state": call.request.get("client_state"), "is_alive": call.live, "call_duration": call.duration_s,
            "record_type": "call", "start_time": iso(call.created),
            "end_time": None if call.live else iso(datetime.now(timezone.utc))}})

    # -- what Telnyx sends about a placed call ---------------------------------------------------------------
    async def report(self, call: DialledCall, event: str, **details) -> None:
        dial = call.request
        if event == "ringing":
            return                        # Telnyx has no ringing event
        payload = {"call_control_id": call.call_id, **call.ids, "connection_id": dial["connection_id"], "client_state": dial.get("client_state"),
                   "from": call.from_, "to": call.to, "direction": "outgoing"}
        if event == "initiated":
            kind, payload["state"] = "call.initiated", "bridging"
        elif event == "answered":
            kind, payload["state"] = "call.answered", "answered"
        elif event == "machine":
            kind, payload["result"] = "call.machine.detection.ended", "machine"
        elif event == "amd" and not details["greeting"]:
            kind, payload["result"] = "call.machine.detection.ended", details["answered_by"]
        elif event == "amd":
            kind, payload["result"] = "call.machine.greeting.ended", "beep_detected"
        else:
            status = details["status"]
            kind = "call.hangup"
            payload.update(state="hangup", hangup_cause=HANGUP_CAUSES.get(status, "not_found" if call.sip == 404
                                                                                   else "unspecified"),
                           hangup_source="callee" if status != "completed" else "unknown",
                           sip_hangup_cause=str(call.sip or 200),
                           start_time=iso(call.created), end_time=iso(datetime.now(timezone.utc)))
        if kind == "call.machine.greeting.ended" and dial.get("amd") == "detect":
            return                        # plain detect gives no greeting verdict
        url = dial.get("webhook_url")
        if url is None:
            return
        body = json.dumps({"data": {"record_type": "event", "id": str(uuid.uuid4()), "event_type": kind,
                                    "occurred_at": iso(datetime.now(timezone.utc)), "payload": payload},
                           "meta": {"attempt": 1, "delivered_to": url}})
        timestamp = str(int(time.time()))
        signature = base64.b64encode(self._signing_key.sign(f"{timestamp}|{body}".encode())).decode()
        await self.deliver(call, url, kind, body, {"Content-Type": "application/json", "telnyx-timestamp": timestamp,
                                                   "telnyx-signature-ed25519": signature})

    def media_protocol(self, call: DialledCall) -> CarrierProtocol:
        dial = call.request
        return TelnyxProtocol("", stream_url=dial["stream_url"], to=call.to, from_=call.from_,
                              token=dial.get("stream_auth_token"), call_control_id=call.call_id,
                              client_state=dial.get("client_state"),
                              bidirectional_codec=dial.get("stream_bidirectional_codec"))
