"""Telnyx Call Control v2: hang-up, transfer and DTMF on a live call.

``POST {api_base_url}/v2/calls/{call_control_id}/actions/{hangup|transfer|send_dtmf}`` with a JSON body
(``{}``, ``{"to": "+1…" | "sip:…"}``, ``{"digits": "1w2"}``) and ``Authorization: Bearer $TELNYX_API_KEY``;
``{"data": {"result": "ok"}}`` on success. Errors are ``{"errors": [{"code", "title", "detail"}]}``; a hang-up
answered 422 with code 90018 (the call has already ended) has done what it was asked. The base URL comes from
``carriers.telnyx.call_control.api_base_url`` (default ``https://api.telnyx.com``).
"""

from __future__ import annotations

import os

from yarl import URL

from ...config import Settings
from .base import ApiConfig, CallControl, Configured, Target, call_control_fields, configured, missing_env, optional_url

DEFAULT_API_BASE_URL = "https://api.telnyx.com"
API_KEY_ENV = "TELNYX_API_KEY"
CALL_ALREADY_ENDED = "90018"


class TelnyxCallControl(CallControl):
    carrier = "telnyx"
    request_id_headers = ("x-request-id",)

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        fields = call_control_fields(settings, cls.carrier)
        base_url = optional_url(fields, "api_base_url") or DEFAULT_API_BASE_URL
        fields.reject_unknown()
        problem = missing_env(os.environ, API_KEY_ENV)
        return configured(ApiConfig(base_url, None, os.environ.get(API_KEY_ENV)),
                          {"hang_up": problem, "transfer": problem, "send_dtmf": problem})

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.secret}"}

    def _action_url(self, call_id: str, action: str) -> URL:
        return URL(self.config.base_url) / "v2" / "calls" / call_id / "actions" / action

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "POST", self._action_url(meta.call_id, "hangup"), json_body={},
                            done_already=(CALL_ALREADY_ENDED,))

    async def _transfer(self, meta, target: Target) -> None:
        await self._request("transfer", meta.call_id, "POST", self._action_url(meta.call_id, "transfer"),
                            json_body={"to": target.value})

    async def _send_dtmf(self, meta, digits: str) -> None:
        await self._request("send_dtmf", meta.call_id, "POST", self._action_url(meta.call_id, "send_dtmf"),
                            json_body={"digits": digits})

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            message = ": ".join(str(first[key]) for key in ("title", "detail") if first.get(key))
            code = first.get("code")
            return (str(code) if code is not None else None), message
        return None, text.strip()
