"""A local Vonage Voice API: hang-up, transfer and DTMF on a live call.

Every request carries ``Authorization: Bearer <JWT>``: RS256, signed with the application's private key (this
fake holds the public half), claims ``application_id`` (this application), ``iat``, ``exp`` (not past) and
``jti``; otherwise 401. Then a known call (404) that is live (400), and:

* ``PUT /v1/calls/{uuid}`` ``{"action": "hangup" | "mute" | "unmute" | "earmuff" | "unearmuff"}`` → 204;
* ``PUT /v1/calls/{uuid}`` ``{"action": "transfer", "destination": {"type": "ncco", "ncco": [...]}}`` → 204: an NCCO
  whose ``connect`` action has one endpoint, ``{"type": "phone", "number": "<digits, no +>"}`` or ``{"type": "sip",
  "uri": "sip:…"}`` (``from``, when given, digits too), is a transfer to it; other NCCOs are a redirect. Transfers
  by ``url`` are not modelled here (400). The caller's leg joins a new conversation; the WebSocket leg that
  carried our stream stays until we close it, so a transfer does not end the stream here (``ends_stream`` False);
* ``PUT /v1/calls/{uuid}/dtmf`` ``{"digits": "<0-9 * # p>"}`` → 200 ``{"message": "DTMF sent", "uuid"}``.

Errors are RFC 7807 problems: ``{"type": "https://developer.nexmo.com/api-errors#…", "title", "detail",
"instance"}``. JWT checks need PyJWT and cryptography (the ``vonage`` extra).
"""

from __future__ import annotations

import json
import os
import re
import uuid

from aiohttp import web

from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi

NUMBER = re.compile(r"[1-9][0-9]{6,14}")
DIGITS = re.compile(r"[0-9*#p]+")
NCCO_ACTIONS = ("record", "conversation", "connect", "talk", "stream", "input", "notify", "wait")
CONTROL_ACTIONS = ("hangup", "mute", "unmute", "earmuff", "unearmuff")


def new_application_key(path: str) -> str:
    """Write a new RSA private key (PEM, owner-only) to ``path`` as Vonage hands one out; return its public PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class VonageProblem(Exception):
    def __init__(self, status: int, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail


class FakeVonageApi(FakeCarrierApi):
    carrier = "vonage"

    def __init__(self, application_id: str, public_key_pem: str) -> None:
        self.application_id = application_id
        self.public_key_pem = public_key_pem
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/v1/calls/{uuid}", self.update_call)
        router.add_put("/v1/calls/{uuid}/dtmf", self.send_dtmf)

    @staticmethod
    def problem(error: VonageProblem) -> web.Response:
        body = {"type": f"https://developer.nexmo.com/api-errors#{error.kind}", "title": error.title,
                "detail": error.detail, "instance": str(uuid.uuid4())}
        return web.json_response(body, status=error.status)

    def authenticate(self, request: web.Request) -> None:
        import jwt

        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        unauthorized = VonageProblem(401, "unauthorized", "Unauthorized", "You did not provide correct credentials.")
        if scheme != "Bearer" or not token:
            raise unauthorized
        try:
            claims = jwt.decode(token, self.public_key_pem, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "jti"]})
        except jwt.InvalidTokenError:
            raise unauthorized from None
        if claims.get("application_id") != self.application_id:
            raise unauthorized

    async def checked(self, request: web.Request) -> tuple[FakeCall, dict]:
        self.authenticate(request)
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise VonageProblem(400, "bad-request", "Bad Request", "The request body is not a JSON object.")
        call = self.calls.get(request.match_info["uuid"])
        if call is None:
            raise VonageProblem(404, "not-found", "Not Found", f"Call {request.match_info['uuid']} does not exist.")
        if not call.live:
            raise VonageProblem(400, "bad-request", "Bad Request", f"Call {call.call_id} is not active.")
        return call, body

    async def update_call(self, request: web.Request) -> web.Response:
        try:
            call, body = await self.checked(request)
            action = body.get("action")
            if action == "transfer":
                self.transfer(call, body.get("destination"))
            elif action == "hangup":
                self.apply(call, "hang_up", ends_stream=True)
            elif action not in CONTROL_ACTIONS:
                raise VonageProblem(400, "bad-request", "Bad Request",
                                    f"action must be one of {', '.join(CONTROL_ACTIONS)}, transfer; got {action!r}.")
        except VonageProblem as error:
            return self.problem(error)
        return web.Response(status=204)

    def transfer(self, call: FakeCall, destination) -> None:
        if not isinstance(destination, dict) or destination.get("type") != "ncco":
            raise VonageProblem(400, "bad-request", "Bad Request", "destination.type must be ncco.")
        ncco = destination.get("ncco")
        if ncco is None:
            raise VonageProblem(400, "bad-request", "Bad Request", "this fake takes transfers by ncco, not by url.")
        if not isinstance(ncco, list) or not ncco or not all(isinstance(a, dict) for a in ncco):
            raise VonageProblem(400, "bad-request", "Bad Request", "destination.ncco must be a non-empty list of actions.")
        for action in ncco:
            if action.get("action") not in NCCO_ACTIONS:
                raise VonageProblem(400, "bad-request", "Bad Request", f"unknown NCCO action {action.get('action')!r}.")
        connects = [action for action in ncco if action["action"] == "connect"]
        target = self.connect_target(connects[0]) if len(connects) == 1 else None
        self.apply(call, "transfer" if target is not None else "redirect", ends_stream=False, target=target,
                   document=json.dumps(ncco))

    @staticmethod
    def connect_target(connect: dict) -> str:
        endpoints = connect.get("endpoint")
        if not isinstance(endpoints, list) or len(endpoints) != 1 or not isinstance(endpoints[0], dict):
            raise VonageProblem(400, "bad-request", "Bad Request", "connect.endpoint must hold one endpoint.")
        endpoint = endpoints[0]
        caller_id = connect.get("from")
        if caller_id is not None and not (isinstance(caller_id, str) and NUMBER.fullmatch(caller_id)):
            raise VonageProblem(400, "bad-request", "Bad Request", f"connect.from must be digits, got {caller_id!r}.")
        if endpoint.get("type") == "phone":
            number = endpoint.get("number")
            if not isinstance(number, str) or not NUMBER.fullmatch(number):
                raise VonageProblem(400, "bad-request", "Bad Request",
                                    f"phone endpoint number must be E.164 digits without +, got {number!r}.")
            return "+" + number
        if endpoint.get("type") == "sip":
            uri = endpoint.get("uri")
            if not isinstance(uri, str) or not uri.lower().startswith(("sip:", "sips:")):
                raise VonageProblem(400, "bad-request", "Bad Request", f"sip endpoint uri must be a sip: URI, got {uri!r}.")
            return uri
        raise VonageProblem(400, "bad-request", "Bad Request",
                            f"this fake connects phone and sip endpoints, not {endpoint.get('type')!r}.")

    async def send_dtmf(self, request: web.Request) -> web.Response:
        try:
            call, body = await self.checked(request)
            digits = body.get("digits")
            if not isinstance(digits, str) or not DIGITS.fullmatch(digits):
                raise VonageProblem(400, "bad-request", "Bad Request",
                                    f"digits must be 0-9, *, # and p (pause), got {digits!r}.")
        except VonageProblem as error:
            return self.problem(error)
        self.apply(call, "send_dtmf", ends_stream=False, digits=digits)
        return web.json_response({"message": "DTMF sent", "uuid": call.call_id})
