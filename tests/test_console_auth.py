"""Console sign-in over real HTTP on the real server app: the admin token once, then an HttpOnly SameSite=Strict
cookie that is not the token; CSRF on every POST; no open redirects; the console off without a token."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from voicebot.config import Settings
from voicebot.console import auth, signed_in_only
from voicebot.dialplan import Dialplan
from voicebot.server import create_app

TOKEN = "console-token-5b0e1d"


@pytest.fixture
async def server(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    settings = Settings(source=str(tmp_path / "config.yaml"), database_url=f"sqlite:///{tmp_path / 'v.db'}",
                        recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    return await aiohttp_client(create_app(settings, Dialplan(personas=[])))


async def sign_in(client, token: str = TOKEN, **headers):
    return await client.post("/console/login", data={"token": token, "next": "/console/records"},
                             allow_redirects=False, headers=headers)


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]*)"', html).group(1)


async def test_the_right_token_sets_a_strict_httponly_cookie_that_is_not_the_token(server):
    async with server.get("/console/login") as resp:
        assert resp.status == 200 and 'name="token"' in await resp.text()
    async with await sign_in(server) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/records"
        header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
    value = server.session.cookie_jar.filter_cookies(server.make_url("/"))[auth.COOKIE].value
    assert TOKEN not in value and value == auth.session_value(TOKEN)
    async with server.get("/console/login", allow_redirects=False) as resp:     # already signed in
        assert resp.status == 303


async def test_a_wrong_token_or_a_cross_site_form_signs_nobody_in(server):
    for token in ("", "console-token-5b0e1e", TOKEN + "x"):
        async with await sign_in(server, token) as resp:
            assert resp.status == 401 and "Wrong admin token" in await resp.text()
            assert "Set-Cookie" not in resp.headers
    async with await sign_in(server, Origin="https://evil.example") as resp:
        assert resp.status == 403 and "Set-Cookie" not in resp.headers


async def test_sign_in_only_redirects_inside_the_console(server):
    for next_path in ("//evil.example/x", "https://evil.example/", "/api/calls", "/console/\\evil"):
        async with server.post("/console/login", data={"token": TOKEN, "next": next_path},
                               allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/console/phone", next_path


async def test_sign_out_needs_the_csrf_token(server):
    async with await sign_in(server):
        pass
    async with server.post("/console/logout", allow_redirects=False) as resp:
        assert resp.status == 403
    async with server.post("/console/logout", data={"csrf": "0" * 64}, allow_redirects=False) as resp:
        assert resp.status == 403
    cookie = auth.session_value(TOKEN)
    good = auth._mac(cookie, "voicebot console csrf v1")
    async with server.post("/console/logout", data={"csrf": good}, allow_redirects=False,
                           headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403                                  # the right token from another site
    async with server.post("/console/logout", data={"csrf": good}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/login"
    assert auth.COOKIE not in server.session.cookie_jar.filter_cookies(server.make_url("/"))


async def test_without_a_token_the_console_is_off_and_says_so(server, monkeypatch):
    monkeypatch.delenv("VOICEBOT_ADMIN_TOKEN")
    async with server.get("/console/login") as resp:
        assert resp.status == 503 and "VOICEBOT_ADMIN_TOKEN" in await resp.text()
    async with await sign_in(server) as resp:
        assert resp.status == 503 and "Set-Cookie" not in resp.headers


async def test_a_new_token_signs_every_browser_out(server, monkeypatch):
    async with await sign_in(server):
        pass
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", "rotated-token-77")
    async with server.get("/console/login", allow_redirects=False) as resp:
        assert resp.status == 200                                  # the old cookie no longer counts


async def test_guarded_routes_redirect_pages_and_refuse_data(aiohttp_client, monkeypatch):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)

    @signed_in_only
    async def a_page(request):
        return web.Response(text="page " + auth.csrf_token(request))

    @signed_in_only(kind="data")
    async def some_data(request):
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/console/thing", a_page)
    app.router.add_route("*", "/console/data", some_data)
    client = await aiohttp_client(app)
    async with client.get("/console/thing?x=1", allow_redirects=False) as resp:
        # The whole path and query, quoted: a link's second parameter must not become the login page's own.
        assert resp.status == 303 and resp.headers["Location"] == "/console/login?next=/console/thing?x%3D1"
    async with client.get("/console/data") as resp:
        assert resp.status == 401 and "sign in" in (await resp.json())["error"]
    client.session.cookie_jar.update_cookies({auth.COOKIE: auth.session_value(TOKEN)}, client.make_url("/"))
    async with client.get("/console/thing") as resp:
        csrf = (await resp.text()).split()[1]
    async with client.post("/console/data", json={}) as resp:
        assert resp.status == 403
    async with client.post("/console/data", json={}, headers={auth.CSRF_HEADER: csrf}) as resp:
        assert resp.status == 200
