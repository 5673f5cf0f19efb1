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
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid

from aiohttp import web

from voicebot.simulator.carrier_api.base import FakeCall, FakeCarrierApi

TARGET = re.compile(r"\+[1-9][0-9]{1,14}|sips?:[^\s<>\"]+", re.IGNORECASE)
DIGITS = re.compile(r"[0-9A-D*#wW]+")


class TelnyxError(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.pointer = status, code, title, detail, pointer


def invalid(detail: str, pointer: str) -> TelnyxError:
    """A field with a value Telnyx does not take (Telnyx's generic 10015; its per-field codes vary)."""
    return TelnyxError(422, "10015", "Bad Request", detail, pointer)


class FakeTelnyxApi(FakeCarrierApi):
    carrier = "telnyx"

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        super().__init__()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/calls/{call_control_id}/actions/{action}", self.action)

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
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise TelnyxError(401, "10009", "Authentication failed",
                                  "The required authentication headers were either invalid or not included in the request.")
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
