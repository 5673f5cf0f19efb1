"""Who may use the console: the admin token (``VOICEBOT_ADMIN_TOKEN``), entered once on the login page and kept
in a cookie; POST actions also carry a CSRF token.

Nothing is stored on the server. The cookie holds an HMAC of the token (never the token itself), so a new token
signs every browser out; the CSRF token is an HMAC of the cookie, sent back in a form field or the
``X-CSRF-Token`` header. The cookie is HttpOnly and SameSite=Strict, and a POST whose Origin is another site is
refused whatever it carries."""

from __future__ import annotations

import hashlib
import hmac
import os

from aiohttp import web

from ..api.auth import TOKEN_ENV

COOKIE = "voicebot_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SESSION_DAYS = 7


def admin_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    return _mac(token, "voicebot console session v1")


def token_matches(presented: str, token: str) -> bool:
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def signed_in(request: web.Request) -> bool:
    """The request carries the console cookie of the current admin token."""
    token = admin_token()
    cookie = request.cookies.get(COOKIE)
    return bool(token and cookie and hmac.compare_digest(cookie.encode(), session_value(token).encode()))


def csrf_token(request: web.Request) -> str:
    """The CSRF token pages embed for their POST actions ("" when not signed in)."""
    cookie = request.cookies.get(COOKIE)
    return _mac(cookie, "voicebot console csrf v1") if cookie and signed_in(request) else ""


def same_origin(request: web.Request) -> bool:
    """A browser's request came from one of our own pages (no Origin header: not a cross-site browser request)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", "")
    return origin.split("://", 1)[-1] == host


def csrf_ok(request: web.Request, presented: str | None) -> bool:
    expected = csrf_token(request)
    return bool(expected and presented and same_origin(request)
                and hmac.compare_digest(presented.encode(), expected.encode()))


def set_session(response: web.StreamResponse, token: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="Strict", path="/",
                        max_age=SESSION_DAYS * 86400, secure=secure)


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
