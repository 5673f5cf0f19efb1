"""HTTP body limits by route group (voicebot/http_limits.py), over real HTTP on the real server app: carrier
webhooks and the admin API's commands take 64 KiB, the admin routes that carry a file (a campaign's contacts,
a do-not-call import) take an upload's size. Past a limit: 413 in JSON naming it, a log line, nothing applied."""

from __future__ import annotations

import aiohttp
import pytest
import structlog

from voicebot import http_limits
from voicebot.api import common as api_common
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

from campaign_files import DEFINITION
from carrier_wire import ALL_CARRIER_SECRETS
from conftest import AUTH_TOKEN, EN
from test_api_campaigns import TOKEN, app_for, call
from test_limits_media import assert_undisturbed

LIMIT = http_limits.MAX_BODY_BYTES


@pytest.fixture(autouse=True)
def all_carrier_secrets(monkeypatch):
    for name, value in ALL_CARRIER_SECRETS.items():
        monkeypatch.setenv(name, value)


def webhook_form(padding: int) -> dict[str, str]:
    """A voice webhook's form, as Twilio and SignalWire post it, padded with one long field."""
    return {"CallSid": "CA" + "5" * 32, "AccountSid": "AC" + "5" * 32, "From": "+15005550006", "To": EN,
            "CallStatus": "ringing", "Direction": "inbound", "Padding": "x" * padding}


def refused_as_too_large(logs: list[dict], path: str, limit: int) -> bool:
    return [(e["event"], e["path"], e["limit"]) for e in logs if e["event"] == "http_body_too_large"] == \
        [("http_body_too_large", path, limit)]


@pytest.mark.parametrize("path", ["/twilio/voice", "/signalwire/voice"])
async def test_a_webhook_body_over_64_kib_is_refused_413_in_json_and_logged_and_calls_go_on(stack, caller_en, path):
    async with aiohttp.ClientSession() as http:
        with structlog.testing.capture_logs() as logs:
            async with http.post(stack.url + path, data=webhook_form(LIMIT)) as resp:
                assert resp.status == 413
                assert await resp.json() == {"error": f"request body over the {LIMIT}-byte limit of {path}"}
        assert refused_as_too_large(logs, path, LIMIT)
        # Just under the limit the body is read, and the request judged on its merits (unsigned: 403).
        async with http.post(stack.url + path, data=webhook_form(LIMIT - 1024)) as resp:
            assert resp.status == 403
    assert not stack.app[SERVICES].calls                       # no call came of either
    result = await simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
                                        script=[Say(caller_en, after_bot_done=True, pause_s=0.4),
                                                Hangup(after_bot_done=True, pause_s=0.5)])
    assert_undisturbed(result)


@pytest.fixture
async def admin(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    monkeypatch.setattr(api_common, "MAX_UPLOAD_BYTES", 512 * 1024)      # an upload's limit, made small here
    return await aiohttp_client(app_for(tmp_path))


async def test_an_admin_command_over_64_kib_is_refused_413_and_changes_nothing(admin):
    with structlog.testing.capture_logs() as logs:
        body = await call(admin, "POST", "/api/dnc", 413, json={"phone": "+12125550187", "note": "x" * LIMIT})
    assert body == {"error": f"request body over the {LIMIT}-byte limit of /api/dnc"}
    assert refused_as_too_large(logs, "/api/dnc", LIMIT)
    assert (await call(admin, "GET", "/api/dnc", 200))["numbers"] == []
    await call(admin, "POST", "/api/dnc", 201, json={"phone": "+12125550187", "note": "x" * 60_000})


async def test_files_may_be_as_large_as_an_upload_and_no_larger(admin):
    def numbers(count: int, first: int = 0) -> bytes:
        return "".join(f"+1212{300 + n // 10000:03d}{n % 10000:04d}\n" for n in range(first, first + count)).encode()

    under, over = numbers(30_000), numbers(45_000, first=30_000)          # 390 KB and 585 KB
    assert LIMIT < len(under) < 512 * 1024 < len(over)
    assert (await call(admin, "POST", "/api/dnc/import", 200, data=under))["added"] == 30_000
    with structlog.testing.capture_logs() as logs:
        body = await call(admin, "POST", "/api/dnc/import", 413, data=over)
    assert body == {"error": f"request body over the {512 * 1024}-byte limit of /api/dnc/import"}
    assert refused_as_too_large(logs, "/api/dnc/import", 512 * 1024)
    assert len((await call(admin, "GET", "/api/dnc", 200))["numbers"]) == 30_000

    def contacts(count: int) -> str:
        return "phone,first_name,appointment,clinic\n" + "".join(
            f"+1646{200 + n // 10000:03d}{n % 10000:04d},Pat {n},Monday 10:00,Downtown\n" for n in range(count))

    with structlog.testing.capture_logs() as logs:
        await call(admin, "POST", "/api/campaigns", 413,
                   json={"definition": DEFINITION.format(name="too-many"), "contacts": contacts(15_000)})
    assert refused_as_too_large(logs, "/api/campaigns", 512 * 1024)
    assert (await call(admin, "GET", "/api/campaigns", 200))["campaigns"] == []
    created = await call(admin, "POST", "/api/campaigns", 201,
                         json={"definition": DEFINITION.format(name="enough"), "contacts": contacts(5_000)})
    assert created["contacts"] == 5_000
