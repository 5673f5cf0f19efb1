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

:class:`FakeSignalWireApi` is the same under ``/api/laml`` with SignalWire's differences: its documented call
update takes no ``Twiml`` (ignored), a completed call answers code 10000, and webhooks are signed with the
project's signing key in ``X-SignalWire-Signature``.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from email.utils import formatdate
from typing import ClassVar
from urllib.parse import urlsplit

from aiohttp import web

from voicebot.telephony.twilio_auth import compute_signature
from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi, basic_credentials, dialled

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


class FakeTwilioApi(FakeCarrierApi):
    carrier = "twilio"
    path_prefix: ClassVar[str] = ""
    accepted_fields: ClassVar[tuple[str, ...]] = UPDATE_FIELDS
    ended_code: ClassVar[int] = 21220
    ended_message: ClassVar[str] = "Call is not in-progress. Cannot redirect."
    signature_header: ClassVar[str] = "X-Twilio-Signature"

    def __init__(self, account_sid: str, auth_token: str, *, signing_key: str | None = None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.signing_key = signing_key if signing_key is not None else auth_token
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(self.path_prefix + "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json", self.update_call)

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
        account_sid = request.match_info["account_sid"]
        credentials = basic_credentials(request)
        if (credentials is None or credentials[0] != account_sid or account_sid != self.account_sid
                or credentials[1] != self.auth_token):
            return self.error(401, 20003, "Authenticate", **{"WWW-Authenticate": 'Basic realm="Twilio API"'})
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


class FakeSignalWireApi(FakeTwilioApi):
    carrier = "signalwire"
    path_prefix = "/api/laml"
    accepted_fields = tuple(name for name in UPDATE_FIELDS if name != "Twiml")
    ended_code = 10000
    ended_message = "An attempt was made to update a completed call."
    signature_header = "X-SignalWire-Signature"

    def request_id(self) -> dict[str, str]:
        return {}
