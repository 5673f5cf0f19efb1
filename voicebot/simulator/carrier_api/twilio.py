"""A local Twilio REST API (Calls resource, 2010-04-01) — and SignalWire's Compatibility API, which copies it.

``POST {prefix}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, form-encoded, HTTP Basic
AccountSid:AuthToken. Checked as Twilio does: credentials for that account (else 401, code 20003), a known
CallSid (else 404, code 20404), ``Status`` only ``completed`` or ``canceled`` (``canceled`` leaves an answered
call alone), ``Twiml`` at most 4000 characters (32018), well-formed (12100) with a ``<Response>`` root (12102),
not together with ``Url`` (an absolute http(s) URL, else 21205), and no new instructions for a call that has
ended (21220); other invalid values get this fake's code 20001. Parameters the resource does not take are
ignored, as Twilio ignores them. The answer is the call resource as JSON, with a
``Twilio-Request-Id`` header.

Instructions given by ``Url`` are fetched after the answer, as Twilio does: a form POST with the call's
parameters, signed with ``X-Twilio-Signature``; a failed fetch leaves an update with ``error`` set (Twilio
would play its application-error message and hang up). New instructions end the call's media stream
(``ends_stream``), as does a hang-up.

Outbound calls (:mod:`.callees` says who answers): ``POST …/Calls.json`` takes ``To`` (E.164, else 21211; missing
21201), ``From`` (one of the fake's ``owned_numbers``, else 21210; missing 21213), ``Url`` (absolute http(s), else
21205; this fake needs it), ``Method``, ``StatusCallback`` (+ ``Method``, ``Event`` from initiated, ringing,
answered, completed), ``Timeout`` (1-600), ``MachineDetection`` (Enable or DetectMessageEnd) and ``AsyncAmd`` with
its ``AsyncAmdStatusCallback`` (other invalid values: 20001) and answers 201 with the queued call. Status callbacks
go, signed, for the events asked (``completed`` always): ``CallStatus``, ``SequenceNumber`` from 0,
``Timestamp``, ``CallbackSource=call-progress-events``, ``CallDuration`` and ``SipResponseCode`` at the end; the
async AMD verdict goes to ``AsyncAmdStatusCallback`` (``AnsweredBy``, ``MachineDetectionDuration``). An answered
call fetches ``Url`` with a signed form POST (``Direction=outbound-api``, ``CallStatus=in-progress``, no
``AnsweredBy`` with async AMD) and connects to the ``<Connect><Stream>`` it gets. ``GET …/Calls/{Sid}.json`` and
``GET …/Calls.json?To=&From=&StartTime>=`` show the calls placed.

:class:`FakeSignalWireApi` is the same under ``/api/laml`` with SignalWire's differences: its documented call
update takes no ``Twiml`` (ignored), a completed call answers code 10000, and webhooks are signed with the
project's signing key in ``X-SignalWire-Signature``.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime, timezone
from email.utils import format_datetime, formatdate
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from voicebot.simulator.caller import CarrierProtocol
from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi, basic_credentials, dialled
from voicebot.simulator.carrier_api.callees import Callee, DialledCall, Dialling
from voicebot.simulator.twilio import TwilioProtocol
from voicebot.telephony.twilio_auth import compute_signature

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
MAX_TWIML_CHARS = 4000
INVALID_PARAMETER = 20001      # this fake's code for other invalid values (Twilio's varies by field)
UPDATE_FIELDS = ("Url", "Method", "Status", "FallbackUrl", "FallbackMethod", "StatusCallback", "StatusCallbackMethod",
                 "Twiml", "TimeLimit")


def parse_twiml(document: str) -> tuple[ET.Element | None, tuple[int, str] | None]:
    """(the <Response> element, None), or (None, (Twilio error code, message)) for a document Twilio cannot run."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        return None, (12100, f"Document parse failure: {exc}")
    if root.tag != "Response":
        return None, (12102, f"The root element must be Response, not <{root.tag}>")
    return root, None


def _number(value: str) -> str:
    if not E164.fullmatch(value):
        raise ValueError(f"<Number> must hold an E.164 number, got {value!r}")
    return value


def _sip(value: str) -> str:
    if not value.lower().startswith(("sip:", "sips:")):
        raise ValueError(f"<Sip> must hold a sip: URI, got {value!r}")
    return value


DIAL_NOUNS = {"Number": _number, "Sip": _sip}
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
SIP_CODES = {"busy": 486, "no-answer": 487, "canceled": 487}


def _absolute(url: str | None) -> bool:
    parts = urlsplit(url or "")
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class DialRefused(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class FakeTwilioApi(Dialling, FakeCarrierApi):
    carrier = "twilio"
    path_prefix: ClassVar[str] = ""
    accepted_fields: ClassVar[tuple[str, ...]] = UPDATE_FIELDS
    ended_code: ClassVar[int] = 21220
    ended_message: ClassVar[str] = "Call is not in-progress. Cannot redirect."
    signature_header: ClassVar[str] = "X-Twilio-Signature"

    def __init__(self, account_sid: str, auth_token: str, *, signing_key: str | None = None,
                 owned_numbers: Iterable[str] = (), default_callee: Callee | None = None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.signing_key = signing_key if signing_key is not None else auth_token
        self.owned_numbers = set(owned_numbers)    # the From numbers a dial may use
        self.init_dialling(default_callee)
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        calls = self.path_prefix + "/2010-04-01/Accounts/{account_sid}/Calls"
        router.add_post(calls + "/{call_sid}.json", self.update_call)
        router.add_get(calls + "/{call_sid}.json", self.fetch_call)
        router.add_post(calls + ".json", self.create_call)
        router.add_get(calls + ".json", self.list_calls)

    def refused(self, request: web.Request) -> web.Response | None:
        """Twilio's 401 unless the request carries this account's credentials."""
        account_sid = request.match_info["account_sid"]
        credentials = basic_credentials(request)
        if (credentials is None or credentials[0] != account_sid or account_sid != self.account_sid
                or credentials[1] != self.auth_token):
            return self.error(401, 20003, "Authenticate", **{"WWW-Authenticate": 'Basic realm="Twilio API"'})
        return None

    # -- the vendor's answers ------------------------------------------------------------------------------
    def error(self, status: int, code: int, message: str, **headers: str) -> web.Response:
        body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}
        return web.json_response(body, status=status, headers={**self.request_id(), **headers})

    def request_id(self) -> dict[str, str]:
        return {"Twilio-Request-Id": "RQ" + secrets.token_hex(16)}

    def resource(self, call: FakeCall) -> web.Response:
        now = formatdate(usegmt=True)
        body = {"sid": call.call_id, "account_sid": self.account_sid, "to": call.to, "from": call.from_,
                "status": "in-progress" if call.live else "completed", "direction": "inbound",
                "api_version": "2010-04-01", "date_updated": now, "parent_call_sid": None,
                "uri": f"{self.path_prefix}/2010-04-01/Accounts/{self.account_sid}/Calls/{call.call_id}.json"}
        return web.json_response(body, headers=self.request_id())

    # -- the resource --------------------------------------------------------------------------------------
    async def update_call(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["call_sid"])
        if call is None:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        form = {key: value for key, value in (await request.post()).items()
                if key in self.accepted_fields and isinstance(value, str)}
        status, twiml, url = form.get("Status"), form.get("Twiml"), form.get("Url")
        if status is not None and status not in ("completed", "canceled"):
            return self.error(400, INVALID_PARAMETER, f"Invalid Status {status!r}: expected completed or canceled")
        if twiml is not None and url is not None:
            return self.error(400, INVALID_PARAMETER, "Twiml and Url cannot both be given")
        if (twiml is not None or url is not None) and status is None and not call.live:
            return self.error(400, self.ended_code, self.ended_message)
        if twiml is not None:
            if len(twiml) > MAX_TWIML_CHARS:
                return self.error(400, 32018, f"Twiml size exceeded maximum allowed value of {MAX_TWIML_CHARS} characters")
            _, problem = parse_twiml(twiml)
            if problem is not None:
                return self.error(400, *problem)
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return self.error(400, 21205, f"Url is not a valid URL: {url!r}")
            method = form.get("Method", "POST").upper()
            if method not in ("GET", "POST"):
                return self.error(400, INVALID_PARAMETER, f"Invalid Method {method!r}: expected GET or POST")

        if status == "completed" and call.live:
            self.apply(call, "hang_up", ends_stream=True)
        elif twiml is not None:
            self.new_instructions(call, twiml)
        elif url is not None:
            self.later(self.fetch_instructions(call, url, method))
        return self.resource(call)

    def new_instructions(self, call: FakeCall, document: str | None, error: str | None = None) -> None:
        """The call runs new instructions: our stream ends; a ``<Dial>`` is a transfer."""
        target = None
        if document is not None:
            root, problem = parse_twiml(document)
            target, error = dialled(root, DIAL_NOUNS) if root is not None else (None, f"{problem[0]} {problem[1]}")
        self.apply(call, "transfer" if target is not None else "redirect", ends_stream=True, target=target,
                   document=document, error=error)

    async def fetch_instructions(self, call: FakeCall, url: str, method: str) -> None:
        params = {"CallSid": call.call_id, "AccountSid": self.account_sid, "From": call.from_ or "",
                  "To": call.to or "", "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        url, form = self.instructions_request(url, method, params)
        headers = {self.signature_header: compute_signature(self.signing_key, url, form or {})}
        document, error = await self.fetch(url, method, form, headers)
        self.new_instructions(call, document, error)

    # -- outbound calls --------------------------------------------------------------------------------------
    async def create_call(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        form = parse_qsl(await request.text(), keep_blank_values=True)
        try:
            dial = self.read_dial(dict(form), [value for key, value in form if key == "StatusCallbackEvent"])
        except DialRefused as exc:
            return self.error(exc.status, exc.code, str(exc))
        call = DialledCall("CA" + secrets.token_hex(16), dial["To"], dial["From"], self.callee_for(dial["To"]),
                           dial, self.now())
        self.place(call, dial["Timeout"])
        return web.json_response(self.call_json(call), status=201, headers=self.request_id())

    def read_dial(self, form: dict[str, str], events: list[str]) -> dict:
        """The create request's parameters as Twilio reads them, or DialRefused."""
        to, from_, url = form.get("To"), form.get("From"), form.get("Url")
        if not to:
            raise DialRefused(400, 21201, "No 'To' number is specified")
        if not E164.fullmatch(to):
            raise DialRefused(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            raise DialRefused(400, 21213, "No 'From' number is specified")
        if from_ not in self.owned_numbers:
            raise DialRefused(400, 21210, f"The source phone number provided, {from_}, is not yet verified for "
                                          "your account")
        if not _absolute(url):
            raise DialRefused(400, 21205, f"Url is not a valid URL: {url!r}")
        method = form.get("Method", "POST").upper()
        callback = form.get("StatusCallback")
        if method not in ("GET", "POST") or form.get("StatusCallbackMethod", "POST").upper() not in ("GET", "POST"):
            raise DialRefused(400, INVALID_PARAMETER, "Method and StatusCallbackMethod must be GET or POST")
        if callback is not None and not _absolute(callback):
            raise DialRefused(400, INVALID_PARAMETER, f"StatusCallback is not a valid URL: {callback!r}")
        wrong = [event for event in events if event not in STATUS_EVENTS]
        if wrong:
            raise DialRefused(400, INVALID_PARAMETER, f"StatusCallbackEvent {wrong[0]!r} is not one of "
                                                      f"{', '.join(STATUS_EVENTS)}")
        timeout = form.get("Timeout", "60")
        if not timeout.isdigit() or not 1 <= int(timeout) <= 600:
            raise DialRefused(400, INVALID_PARAMETER, f"Timeout must be 1 to 600 seconds, got {timeout!r}")
        detection, async_amd = form.get("MachineDetection"), form.get("AsyncAmd", "false")
        if detection is not None and detection not in MACHINE_DETECTION:
            raise DialRefused(400, INVALID_PARAMETER, f"MachineDetection must be Enable or DetectMessageEnd, "
                                                      f"got {detection!r}")
        if async_amd not in ("true", "false"):
            raise DialRefused(400, INVALID_PARAMETER, f"AsyncAmd must be true or false, got {async_amd!r}")
        amd_callback = form.get("AsyncAmdStatusCallback")
        if async_amd == "true" and not _absolute(amd_callback):
            raise DialRefused(400, INVALID_PARAMETER, "AsyncAmd=true needs an absolute AsyncAmdStatusCallback URL")
        return {"To": to, "From": from_, "Url": url, "Method": method, "StatusCallback": callback,
                "StatusCallbackEvent": set(events) | {"completed"}, "Timeout": int(timeout),
                "machine_detection": detection is not None and async_amd == "true",
                "AsyncAmdStatusCallback": amd_callback, "form": form}

    def call_json(self, call: DialledCall) -> dict:
        return {"sid": call.call_id, "account_sid": self.account_sid, "to": call.to, "from": call.from_,
                "status": call.status, "direction": "outbound-api", "api_version": "2010-04-01",
                "date_created": format_datetime(call.created, usegmt=True),
                "date_updated": formatdate(usegmt=True), "start_time": format_datetime(call.created, usegmt=True), "duration": str(call.duration_s) if not call.live else None,
                "answered_by": call.answered_by, "parent_call_sid": None,
                "uri": f"{self.path_prefix}/2010-04-01/Accounts/{self.account_sid}/Calls/{call.call_id}.json"}

    async def fetch_call(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        call = self.dialled.get(request.match_info["call_sid"])
        if call is None:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self.call_json(call), headers=self.request_id())

    async def list_calls(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        query = request.query
        since = query.get("StartTime>=")
        try:
            since_at = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
        except ValueError:
            return self.error(400, INVALID_PARAMETER, f"StartTime>= is not a date: {since!r}")
        if since_at is not None and since_at.tzinfo is None:
            since_at = since_at.replace(tzinfo=timezone.utc)
        calls = [self.call_json(call) for call in self.dialled.values()
                 if query.get("To", call.to) == call.to and query.get("From", call.from_) == call.from_
                 and (since_at is None or call.created >= since_at)]
        return web.json_response({"calls": calls, "page": 0, "page_size": 50, "next_page_uri": None,
                                  "uri": request.path_qs}, headers=self.request_id())

    # -- what Twilio sends about a placed call ---------------------------------------------------------------
    async def report(self, call: DialledCall, event: str, **details) -> None:
        dial = call.request
        if event in ("amd", "machine"):
            if event == "amd":
                await self.callback(call, dial["AsyncAmdStatusCallback"], details["answered_by"], {
                    "CallSid": call.call_id, "AccountSid": self.account_sid, "AnsweredBy": details["answered_by"],
                    "MachineDetectionDuration": str(int((self.now() - call.answered_at) * 1000))})
            return
        status = details.get("status", call.status)
        if event == "ended":
            event = "completed"
        if dial["StatusCallback"] is None or event not in dial["StatusCallbackEvent"]:
            return
        fields = {"CallSid": call.call_id, "AccountSid": self.account_sid, "From": call.from_, "To": call.to,
                  "Direction": "outbound-api", "ApiVersion": "2010-04-01", "CallStatus": status,
                  "Timestamp": formatdate(usegmt=True), "CallbackSource": "call-progress-events",
                  "SequenceNumber": str(call.sequence)}
        call.sequence += 1
        if event == "completed":
            fields["CallDuration"] = str(call.duration_s)
            if call.sip is not None:
                fields["SipResponseCode"] = str(call.sip)
        await self.callback(call, dial["StatusCallback"], status, fields)

    async def callback(self, call: DialledCall, url: str, event: str, fields: dict[str, str]) -> None:
        headers = {"X-Twilio-Signature": compute_signature(self.signing_key, url, fields),
                   "User-Agent": "TwilioProxy/1.1", "Content-Type": "application/x-www-form-urlencoded"}
        await self.deliver(call, url, event, fields, headers)

    def media_protocol(self, call: DialledCall) -> CarrierProtocol:
        # Twilio's request for the answered call's instructions: to the Url as given (query included)
        return TwilioProtocol(call.request["Url"], webhook_path="", to=call.to, from_=call.from_,
                              auth_token=self.signing_key, account_sid=self.account_sid, call_sid=call.call_id,
                              extra_params={"Direction": "outbound-api", "CallStatus": "in-progress"})


class FakeSignalWireApi(FakeTwilioApi):
    carrier = "signalwire"
    path_prefix = "/api/laml"
    accepted_fields = tuple(name for name in UPDATE_FIELDS if name != "Twiml")
    ended_code = 10000
    ended_message = "An attempt was made to update a completed call."
    signature_header = "X-SignalWire-Signature"

    def request_id(self) -> dict[str, str]:
        return {}
