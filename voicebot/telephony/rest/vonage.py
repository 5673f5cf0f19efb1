"""Vonage Voice API: hang-up, transfer and DTMF on a live call.

* ``PUT {api_base_url}/v1/calls/{uuid}`` ``{"action": "hangup"}`` → 204;
* ``PUT …/v1/calls/{uuid}`` ``{"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "connect",
  "endpoint": [{"type": "phone", "number": "15551230000"}]}]}}`` (``{"type": "sip", "uri": "sip:…"}`` for a SIP URI;
  ``from`` is the number the caller dialled, when known) → 204;
* ``PUT …/v1/calls/{uuid}/dtmf`` ``{"digits": "1p2"}`` → 200 (Vonage's pause is ``p``, our ``w``).

Each request carries ``Authorization: Bearer <JWT>``, RS256-signed with the application's private key
(``VONAGE_APPLICATION_ID``, ``VONAGE_PRIVATE_KEY_PATH``), claims ``application_id``, ``iat``, ``exp``, ``jti``. The
signing needs PyJWT and cryptography (``pip install 'voicebot[vonage]'``); without them the actions are off and
``missing`` says so. Errors are RFC 7807 problems (``type``, ``title``, ``detail``, ``instance``). The base URL
comes from ``carriers.vonage.call_control.api_base_url`` (default ``https://api.nexmo.com``).
"""

from __future__ import annotations

import os
import time
import uuid

from yarl import URL

from ...config import Settings
from .base import (
    ApiConfig,
    CallControl,
    Configured,
    Target,
    call_control_fields,
    configured,
    missing_env,
    optional_url,
    parse_target,
)

DEFAULT_API_BASE_URL = "https://api.nexmo.com"
APPLICATION_ID_ENV = "VONAGE_APPLICATION_ID"
PRIVATE_KEY_PATH_ENV = "VONAGE_PRIVATE_KEY_PATH"
JWT_TTL_S = 300
EXTRA_HINT = "pip install 'voicebot[vonage]'"


def load_private_key(path: str):
    """(the RSA private key, None) or (None, why it cannot be used). The key's text never appears in the reason."""
    try:
        import jwt  # noqa: F401  (signing needs it; checked here so the reason names what is missing)
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:
        return None, f"signing Vonage's JWT needs PyJWT and cryptography ({exc.name} is not installed): {EXTRA_HINT}"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        return None, f"{PRIVATE_KEY_PATH_ENV} {path!r} cannot be read: {exc.strerror or type(exc).__name__}"
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None, f"{PRIVATE_KEY_PATH_ENV} {path!r} is not an unencrypted PEM private key"
    if not isinstance(key, RSAPrivateKey):
        return None, f"{PRIVATE_KEY_PATH_ENV} {path!r} is not an RSA key (Vonage signs with RS256)"
    return key, None


class VonageCallControl(CallControl):
    carrier = "vonage"
    request_id_headers = ("X-Request-Id",)

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        fields = call_control_fields(settings, cls.carrier)
        base_url = optional_url(fields, "api_base_url") or DEFAULT_API_BASE_URL
        fields.reject_unknown()
        key = None
        problem = missing_env(os.environ, APPLICATION_ID_ENV, PRIVATE_KEY_PATH_ENV)
        if problem is None:
            key, problem = load_private_key(os.environ[PRIVATE_KEY_PATH_ENV])
        config = ApiConfig(base_url, os.environ.get(APPLICATION_ID_ENV), key)
        return configured(config, {"hang_up": problem, "transfer": problem, "send_dtmf": problem})

    def auth_headers(self) -> dict[str, str]:
        import jwt

        now = int(time.time())
        claims = {"application_id": self.config.user, "iat": now, "exp": now + JWT_TTL_S, "jti": str(uuid.uuid4())}
        return {"Authorization": "Bearer " + jwt.encode(claims, self.config.secret, algorithm="RS256")}

    def _call_url(self, call_id: str) -> URL:
        return URL(self.config.base_url) / "v1" / "calls" / call_id

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "PUT", self._call_url(meta.call_id), ok=(200, 204),
                            json_body={"action": "hangup"})

    async def _transfer(self, meta, target: Target) -> None:
        endpoint = ({"type": "phone", "number": target.digits} if target.kind == "number"
                    else {"type": "sip", "uri": target.value})
        connect = {"action": "connect", "endpoint": [endpoint]}
        caller_id = _number_or_none(meta.to_number)
        if caller_id is not None and target.kind == "number":
            connect["from"] = caller_id.digits
        await self._request("transfer", meta.call_id, "PUT", self._call_url(meta.call_id), ok=(200, 204),
                            json_body={"action": "transfer", "destination": {"type": "ncco", "ncco": [connect]}})

    async def _send_dtmf(self, meta, digits: str) -> None:
        await self._request("send_dtmf", meta.call_id, "PUT", self._call_url(meta.call_id) / "dtmf",
                            json_body={"digits": digits.replace("w", "p")})

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        if isinstance(body, dict) and (body.get("title") or body.get("detail")):
            kind = str(body.get("type") or "")
            code = kind.rsplit("#", 1)[-1].rsplit("/", 1)[-1] or None
            return code, ": ".join(str(body[key]) for key in ("title", "detail") if body.get(key))
        return None, text.strip()

    def request_id(self, headers, body) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("instance"), str):
            return body["instance"]
        return super().request_id(headers, body)


def _number_or_none(text: str | None) -> Target | None:
    try:
        target = parse_target(text or "")
    except ValueError:
        return None
    return target if target.kind == "number" else None
