"""The web console, served by ``voicebot serve`` under ``/console`` behind the admin token: sign-in, the layout and
static files here; each page is a sibling module with ``add_routes(router)`` (see PAGE_MODULES).

Every console route goes through :func:`signed_in_only`: pages send a browser without the cookie to the login
page, data routes (JSON, event streams, sockets) answer 401; POST routes also need the CSRF token."""

from __future__ import annotations

import functools
import importlib
from urllib.parse import quote
from pathlib import Path

import structlog
from aiohttp import web

from ..api.auth import TOKEN_ENV
from . import auth
from .html import e, page

log = structlog.get_logger("voicebot.console")
STATIC = Path(__file__).parent / "static"
PAGE_MODULES: tuple[str, ...] = ("phone", "records", "campaigns", "live")   # sibling modules, each with add_routes(router, services)


def signed_in_only(handler=None, *, kind: str = "page"):
    """Decorator for a console route: ``kind`` "page" redirects to the login page, "data" answers 401 JSON.
    POST requests must also carry the CSRF token (form field ``csrf`` or the X-CSRF-Token header)."""
    if handler is None:
        return functools.partial(signed_in_only, kind=kind)

    @functools.wraps(handler)
    async def guarded(request: web.Request):
        if auth.admin_token() is None:
            return _disabled(kind)
        if not auth.signed_in(request):
            if kind == "page":
                raise web.HTTPSeeOther(f"/console/login?next={quote(request.path_qs, safe='/')}")
            return web.json_response({"error": "sign in to the console first (/console/login)"}, status=401)
        if request.method == "POST":
            presented = request.headers.get(auth.CSRF_HEADER)
            if presented is None and request.content_type in ("application/x-www-form-urlencoded",
                                                              "multipart/form-data"):
                presented = (await request.post()).get(auth.CSRF_FIELD)
            if not auth.csrf_ok(request, presented if isinstance(presented, str) else None):
                log.warning("console_csrf_refused", path=request.path, remote=request.remote)
                return web.json_response({"error": "missing or wrong CSRF token"}, status=403)
        return await handler(request)

    return guarded


def _disabled(kind: str) -> web.Response:
    message = f"The console is off: set {TOKEN_ENV} for the server, then sign in with it."
    if kind == "page":
        return page("Console disabled", f"<p class=error>{e(message)}</p>", status=503, signed_in=False)
    return web.json_response({"error": message}, status=503)


def _safe_next(value: str | None) -> str:
    """Only a path of this console: an open redirect would let a link sign someone in and send them elsewhere."""
    if value and value.startswith("/console/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/phone"


def _login_form(next_path: str, problem: str = "") -> str:
    error = f'<p class="error" role="alert">{e(problem)}</p>' if problem else ""
    return (f'{error}<form method="post" action="/console/login" id="login">'
            f'<input type="hidden" name="next" value="{e(next_path)}">'
            f'<label>Admin token <input type="password" name="token" autocomplete="current-password" required '
            f'autofocus></label> <button>Sign in</button></form>'
            f'<p class="muted">The token the server was started with ({e(TOKEN_ENV)}).</p>')


async def login_page(request: web.Request) -> web.Response:
    if auth.admin_token() is None:
        return _disabled("page")
    next_path = _safe_next(request.query.get("next"))
    if auth.signed_in(request):
        raise web.HTTPSeeOther(next_path)
    return page("Sign in", _login_form(next_path), signed_in=False, scripts=("login.js",))


async def login(request: web.Request) -> web.Response:
    token = auth.admin_token()
    if token is None:
        return _disabled("page")
    if not auth.same_origin(request):
        return web.json_response({"error": "cross-site sign-in refused"}, status=403)
    form = await request.post()
    next_path = _safe_next(form.get("next") if isinstance(form.get("next"), str) else None)
    presented = form.get("token")
    if not isinstance(presented, str) or not auth.token_matches(presented, token):
        log.warning("console_sign_in_refused", remote=request.remote)
        return page("Sign in", _login_form(next_path, "Wrong admin token."), status=401, signed_in=False)
    log.info("console_signed_in", remote=request.remote)
    response = web.HTTPSeeOther(next_path)
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    auth.set_session(response, token, secure=secure)
    raise response


@signed_in_only
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/console/login")
    auth.clear_session(response)
    raise response


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/phone")


def setup(app: web.Application, services) -> None:
    router = app.router
    router.add_get("/console", home)
    router.add_get("/console/", home)
    router.add_get("/console/login", login_page)
    router.add_post("/console/login", login)
    router.add_post("/console/logout", logout)
    router.add_static("/console/static/", STATIC, append_version=False)
    for name in PAGE_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_routes(router, services)
