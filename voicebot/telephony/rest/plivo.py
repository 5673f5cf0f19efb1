"""Plivo's Voice API: hang-up, transfer and DTMF on a live call.

Under ``{api_base_url}/v1/Account/{auth_id}/Call/{call_uuid}/`` (HTTP Basic ``PLIVO_AUTH_ID``:``PLIVO_AUTH_TOKEN``,
JSON bodies, trailing slashes as Plivo writes them):

* hang-up: ``DELETE …/Call/{uuid}/`` → 204;
* transfer: ``POST …/Call/{uuid}/`` ``{"legs": "aleg", "aleg_url": …, "aleg_method": "POST"}`` → 202. Plivo then
  fetches new Plivo XML for the call from ``aleg_url``: a signed, expiring URL on our own server
  (:mod:`.documents`) that answers ``<Response><Dial><Number>15551230000</Number></Dial></Response>`` (or
  ``<User>sip:…</User>``);
* DTMF: ``POST …/Call/{uuid}/DTMF/`` ``{"digits": "1w2", "leg": "aleg"}`` → 202.

Errors are ``{"api_id": …, "error": "…"}`` (no error codes); ``api_id`` identifies the request. The base URL comes
from ``carriers.plivo.call_control.api_base_url`` (default ``https://api.plivo.com``).
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

from yarl import URL

from ...config import Settings
from ..twilio_auth import stream_token_secret
from .base import ApiConfig, CallControl, Configured, basic_auth, Target, call_control_fields, configured, missing_env, optional_url
from .documents import TransferDocuments

DEFAULT_API_BASE_URL = "https://api.plivo.com"
AUTH_ID_ENV = "PLIVO_AUTH_ID"
AUTH_TOKEN_ENV = "PLIVO_AUTH_TOKEN"


def dial_xml(target: Target) -> str:
    """Plivo XML that connects the call to ``target`` (numbers without their +, as Plivo writes them)."""
    noun = f"<Number>{target.digits}</Number>" if target.kind == "number" else f"<User>{escape(target.value)}</User>"
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{noun}</Dial></Response>'


class PlivoCallControl(CallControl):
    carrier = "plivo"
    document_renderer = staticmethod(dial_xml)

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        fields = call_control_fields(settings, cls.carrier)
        base_url = optional_url(fields, "api_base_url") or DEFAULT_API_BASE_URL
        fields.reject_unknown()
        problem = missing_env(os.environ, AUTH_ID_ENV, AUTH_TOKEN_ENV)
        config = ApiConfig(base_url, os.environ.get(AUTH_ID_ENV), os.environ.get(AUTH_TOKEN_ENV),
                           documents=TransferDocuments(settings.public_url, stream_token_secret()))
        return configured(config, {"hang_up": problem, "transfer": problem, "send_dtmf": problem})

    def auth_headers(self) -> dict[str, str]:
        return basic_auth(self.config.user, self.config.secret)

    def _call_url(self, call_id: str, *more: str) -> URL:
        url = URL(self.config.base_url) / "v1" / "Account" / self.config.user / "Call" / call_id
        for part in more:
            url = url / part
        return url / ""

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "DELETE", self._call_url(meta.call_id), ok=(200, 204))

    async def _transfer(self, meta, target: Target) -> None:
        document = self.config.documents.url(self.carrier, meta.call_id, target)
        await self._request("transfer", meta.call_id, "POST", self._call_url(meta.call_id), ok=(200, 202),
                            json_body={"legs": "aleg", "aleg_url": document, "aleg_method": "POST"})

    async def _send_dtmf(self, meta, digits: str) -> None:
        await self._request("send_dtmf", meta.call_id, "POST", self._call_url(meta.call_id, "DTMF"), ok=(200, 202),
                            json_body={"digits": digits, "leg": "aleg"})

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        if isinstance(body, dict) and body.get("error"):
            error = body["error"]
            return None, error if isinstance(error, str) else str(error)
        return None, text.strip()

    def request_id(self, headers, body) -> str | None:
        return body.get("api_id") if isinstance(body, dict) else None
