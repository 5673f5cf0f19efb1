"""Twilio request signatures (X-Twilio-Signature) and our short-lived per-call stream tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from urllib.parse import urlsplit, urlunsplit
from collections.abc import Iterable, Mapping


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> str:
    """base64(HMAC-SHA1(auth_token, url + sorted(name + value)))."""
    items = params.items() if isinstance(params, Mapping) else params
    payload = url + "".join(name + value for name, value in sorted(items))
    digest = hmac.new(auth_token.encode(), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    # Twilio signs sometimes with, sometimes without, the default port.
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{_userinfo(parts)}{host}:{default}")
    elif parts.port == default:
        other = parts._replace(netloc=f"{_userinfo(parts)}{host}")
    else:
        return [url]
    return [url, urlunsplit(other)]


def _userinfo(parts) -> str:
    if parts.username is None:
        return ""
    return parts.username + (f":{parts.password}" if parts.password is not None else "") + "@"


def validate_signature(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]],
                       signature: str | None) -> bool:
    if not signature or not auth_token:
        return False
    items = list(params.items() if isinstance(params, Mapping) else params)
    return any(hmac.compare_digest(compute_signature(auth_token, candidate, items), signature)
               for candidate in _port_variants(url))


STREAM_SECRET_ENV = "VOICEBOT_STREAM_SECRET"
MIN_STREAM_SECRET_BYTES = 16
_server_secret: bytes | None = None


def stream_token_secret() -> bytes:
    """The key stream tokens are signed with. ``$VOICEBOT_STREAM_SECRET`` when set (several servers behind
    one public URL must share it); otherwise one random key per server, made on first use: ``voicebot serve
    --workers`` makes it before the workers fork, so a token issued by one worker opens a stream on another."""
    global _server_secret
    configured = os.environ.get(STREAM_SECRET_ENV)
    if configured:
        if len(configured.encode()) < MIN_STREAM_SECRET_BYTES:
            raise ValueError(f"{STREAM_SECRET_ENV} is too short: use at least {MIN_STREAM_SECRET_BYTES} random "
                             "characters")
        return configured.encode()
    if _server_secret is None:
        _server_secret = os.urandom(32)
    return _server_secret


class StreamTokens:
    """HMAC-signed tokens binding a media stream to the webhook that created it.

    A token is ``<expiry>.<b64 hmac(call_sid, to, from, expiry)>``: short-lived, and only valid for the
    call whose parameters it was issued with, so a leaked TwiML document cannot open other streams.
    """

    def __init__(self, secret: bytes, ttl_s: float = 60.0) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, expiry: int, call_sid: str, to: str, from_: str) -> str:
        msg = f"{expiry}\x00{call_sid}\x00{to}\x00{from_}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, msg, hashlib.sha256).digest()).decode().rstrip("=")

    def issue(self, call_sid: str, to: str, from_: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        return f"{expiry}.{self._mac(expiry, call_sid, to, from_)}"

    def check(self, token: str | None, call_sid: str, to: str, from_: str, now: float | None = None) -> str | None:
        """None when valid, else the reason it is not."""
        if not token:
            return "missing token"
        expiry_text, _, mac = token.partition(".")
        if not (expiry_text.isascii() and expiry_text.isdigit()) or not mac:    # int() refuses "²", a digit
            return "malformed token"
        expiry = int(expiry_text)
        if not hmac.compare_digest(self._mac(expiry, call_sid, to, from_), mac):
            return "token does not match this call"
        if expiry < (time.time() if now is None else now):
            return "token expired"
        return None
