"""The softphone page as served (no browser): behind the sign-in, the dialplan's personas to pick from, the link's
persona and engine chosen, and no inline script for the CSP to block."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from voicebot.config import Settings
from voicebot.console import auth
from voicebot.dialplan import load_dialplan
from voicebot.server import create_app

from conftest import PERSONAS

TOKEN = "console-token-phone-31c7"


@pytest.fixture
async def client(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    settings = Settings(source=str(tmp_path / "config.yaml"), database_url=f"sqlite:///{tmp_path / 'v.db'}",
                        recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    return await aiohttp_client(create_app(settings, load_dialplan(plans)))


async def test_the_page_needs_the_sign_in_and_keeps_the_whole_link_for_after_it(client):
    link = "/console/phone?persona=test-zh&engine=chain&autostart=1"
    async with client.get(link, allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    assert urlsplit(location).path == "/console/login" and parse_qs(urlsplit(location).query)["next"] == [link]
    async with client.post("/console/login", data={"token": TOKEN, "next": link}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == link


async def test_personas_engines_and_the_link_s_choice(client):
    client.session.cookie_jar.update_cookies({auth.COOKIE: auth.session_value(TOKEN)})
    async with client.get("/console/phone?persona=test-zh&engine=chain&autostart=1") as resp:
        assert resp.status == 200
        html = await resp.text()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    personas = re.findall(r'<option value="([^"]*)" data-engine="[a-z]+"( selected)?', html)
    assert [name for name, _ in personas][:3] == ["test-en", "test-no-barge", "test-short"]
    assert [name for name, selected in personas if selected] == ["test-zh"]
    assert re.search(r'<option value="chain" selected>', html)
    assert 'data-autostart="1"' in html and 'data-stream="/console/phone/stream"' in html
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/console/static/phone.js" defer>']
    for name in ("phone.js", "phone-worklet.js", "phone.css"):
        async with client.get(f"/console/static/{name}") as resp:
            assert resp.status == 200, name
