"""A local Plivo Voice API: hang-up, transfer and DTMF on a live call.

Under ``/v1/Account/{auth_id}/Call/{call_uuid}/`` (trailing slash required), HTTP Basic auth_id:auth_token for
that account (else 401), JSON bodies (``Content-Type: application/json``, else 400), a known live call (else
404 "not found"):

* ``DELETE …/Call/{uuid}/`` → 204, no body;
* ``POST …/Call/{uuid}/`` ``{"legs": "aleg" | "bleg" | "both", "aleg_url", "aleg_method": "GET" | "POST"}`` → 202
  ``{"message": "call transferred", "api_id"}``. Then, as Plivo does, the new Plivo XML is fetched from
  ``aleg_url`` (a POST form, or query, with ``CallUUID``, ``From``, ``To``, ``CallStatus``, ``Direction``) and read:
  ``<Response><Dial>`` with one ``<Number>`` (digits, no +) or ``<User>`` (sip: URI) is a transfer to that
  target, anything else a redirect; a fetch that fails or answers no XML leaves an update with ``error``. New
  XML replaces the running ``<Stream>``, so the update ends the media stream;
* ``POST …/Call/{uuid}/DTMF/`` ``{"digits", "leg"?}`` (0-9 * # A-D, w/W pauses) → 202 ``{"message": "digits sent"}``.

Errors are ``{"api_id": …, "error": "…"}``.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from aiohttp import web

from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi, basic_credentials, dialled

DIGITS = re.compile(r"[0-9A-D*#wW]+")
NUMBER = re.compile(r"[1-9][0-9]{6,14}")


class PlivoError(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


def _number(value: str) -> str:
    if not NUMBER.fullmatch(value):
        raise ValueError(f"<Number> must hold a number in digits (no +), got {value!r}")
    return "+" + value


def _user(value: str) -> str:
    if not value.lower().startswith("sip:"):
        raise ValueError(f"<User> must hold a sip: URI, got {value!r}")
    return value


def dial_target(document: str) -> tuple[str | None, str | None]:
    """(target, None), (None, why the XML fails) or (None, None) for XML that dials no single target."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        return None, f"invalid XML: {exc}"
    if root.tag != "Response":
        return None, f"root element must be <Response>, not <{root.tag}>"
    return dialled(root, {"Number": _number, "User": _user})


class FakePlivoApi(FakeCarrierApi):
    carrier = "plivo"

    def __init__(self, auth_id: str, auth_token: str) -> None:
        self.auth_id = auth_id
        self.auth_token = auth_token
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        call = "/v1/Account/{auth_id}/Call/{call_uuid}/"
        router.add_delete(call, self.hang_up)
        router.add_post(call, self.transfer)
        router.add_post(call + "DTMF/", self.send_dtmf)

    @staticmethod
    def answer(status: int, body: dict | None = None) -> web.Response:
        if body is None:
            return web.Response(status=status)
        return web.json_response({"api_id": str(uuid.uuid4()), **body}, status=status)

    async def checked(self, request: web.Request, *, with_body: bool) -> tuple[FakeCall, dict]:
        credentials = basic_credentials(request)
        account = request.match_info["auth_id"]
        if (credentials is None or credentials[0] != account or account != self.auth_id
                or credentials[1] != self.auth_token):
            raise PlivoError(401, "Authentication failed: check your auth_id and auth_token")
        body: dict = {}
        if with_body:
            if request.content_type != "application/json":
                raise PlivoError(400, f"expected a JSON body (Content-Type application/json), got {request.content_type!r}")
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise PlivoError(400, "the request body is not a JSON object")
        call = self.calls.get(request.match_info["call_uuid"])
        if call is None or not call.live:
            raise PlivoError(404, "not found")
        return call, body

    async def hang_up(self, request: web.Request) -> web.Response:
        try:
            call, _ = await self.checked(request, with_body=False)
        except PlivoError as error:
            return self.answer(error.status, {"error": error.error})
        self.apply(call, "hang_up", ends_stream=True)
        return self.answer(204)

    async def transfer(self, request: web.Request) -> web.Response:
        try:
            call, body = await self.checked(request, with_body=True)
            legs = body.get("legs", "aleg")
            if legs not in ("aleg", "bleg", "both"):
                raise PlivoError(400, f"legs must be aleg, bleg or both, got {legs!r}")
            if legs != "aleg":
                raise PlivoError(400, "this call has no bridged leg (bleg) to transfer")
            url, method = body.get("aleg_url"), body.get("aleg_method", "POST")
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise PlivoError(400, f"aleg_url must be an absolute http(s) URL when legs is aleg, got {url!r}")
            if method not in ("GET", "POST"):
                raise PlivoError(400, f"aleg_method must be GET or POST, got {method!r}")
        except PlivoError as error:
            return self.answer(error.status, {"error": error.error})
        self.later(self.fetch_xml(call, url, method))
        return self.answer(202, {"message": "call transferred"})

    async def fetch_xml(self, call: FakeCall, url: str, method: str) -> None:
        params = {"CallUUID": call.call_id, "From": (call.from_ or "").lstrip("+"), "To": (call.to or "").lstrip("+"),
                  "CallStatus": "in-progress", "Direction": "inbound", "Event": "Transfer"}
        url, form = self.instructions_request(url, method, params)
        document, error = await self.fetch(url, method, form)
        target = None
        if document is not None:
            target, error = dial_target(document)
        self.apply(call, "transfer" if target is not None else "redirect", ends_stream=True, target=target,
                   document=document, error=error)

    async def send_dtmf(self, request: web.Request) -> web.Response:
        try:
            call, body = await self.checked(request, with_body=True)
            digits, leg = body.get("digits"), body.get("leg", "aleg")
            if not isinstance(digits, str) or not DIGITS.fullmatch(digits):
                raise PlivoError(400, f"digits must be 0-9, *, #, A-D with w/W pauses, got {digits!r}")
            if leg not in ("aleg", "bleg"):
                raise PlivoError(400, f"leg must be aleg or bleg, got {leg!r}")
        except PlivoError as error:
            return self.answer(error.status, {"error": error.error})
        self.apply(call, "send_dtmf", ends_stream=False, digits=digits)
        return self.answer(202, {"message": "digits sent"})
