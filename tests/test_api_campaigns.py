"""``/api/campaigns`` and ``/api/dnc`` over real HTTP on the real server app: the bearer token, creation from the
YAML and CSV texts (refusals with row numbers), state changes (409 when not allowed), status, exports, the
do-not-call list; on SQLite, and once on a throwaway PostgreSQL server."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.dialplan import load_dialplan
from voicebot.server import create_app
from voicebot.store import Store

from campaign_files import CONTACTS, CONTACTS_MISSING_NAMES, DEFINITION, GOOD, write_dialplan
from pg_server import PostgresServer

TOKEN = "admin-token-7d01c2e5aa"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = (("GET", "/api/campaigns"), ("POST", "/api/campaigns"), ("GET", "/api/campaigns/dental-reminders"),
          ("POST", "/api/campaigns/dental-reminders/start"), ("POST", "/api/campaigns/dental-reminders/cancel"),
          ("GET", "/api/campaigns/dental-reminders/export"), ("GET", "/api/dnc"), ("POST", "/api/dnc"),
          ("DELETE", "/api/dnc/+12125550187"), ("POST", "/api/dnc/import"))


def app_for(tmp_path: Path, database_url: str | None = None):
    settings = Settings(source=str(tmp_path / "config.yaml"),
                        database_url=database_url or f"sqlite:///{tmp_path / 'voicebot.db'}",
                        recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    return create_app(settings, load_dialplan(write_dialplan(tmp_path)))


@pytest.fixture
async def server(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    return await aiohttp_client(app_for(tmp_path))


async def call(client, method: str, path: str, status: int, *, headers=AUTH, **kwargs):
    async with client.request(method, path, headers=headers, **kwargs) as resp:
        text = await resp.text()
        assert resp.status == status, (method, path, text)
        return (await resp.json()) if resp.content_type == "application/json" else text


def definition(name: str = "dental-reminders") -> str:
    return DEFINITION.format(name=name)


async def created(client, name: str = "dental-reminders") -> dict:
    return await call(client, "POST", "/api/campaigns", 201,
                      json={"definition": definition(name), "contacts": CONTACTS})


# -- authentication --------------------------------------------------------------------------------------------

async def test_every_route_asks_for_the_bearer_token(server):
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            body = await call(server, method, path, 401, headers=headers)
            assert "bearer token" in body["error"]


async def test_without_a_configured_token_every_route_answers_503(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.delenv("VOICEBOT_ADMIN_TOKEN", raising=False)
    client = await aiohttp_client(app_for(tmp_path))
    for method, path in ROUTES:
        body = await call(client, method, path, 503)
        assert "VOICEBOT_ADMIN_TOKEN" in body["error"]


# -- campaigns ---------------------------------------------------------------------------------------------------

async def test_create_refuses_bad_input_with_located_messages(server):
    body = await call(server, "POST", "/api/campaigns", 400,
                      json={"definition": definition(), "contacts": CONTACTS_MISSING_NAMES})
    assert "row 3" in body["error"] and "row 5" in body["error"] and "row 2" not in body["error"]
    body = await call(server, "POST", "/api/campaigns", 400,
                      json={"definition": definition().replace("calls_per_second: 2", "calls_per_second: fast"),
                            "contacts": CONTACTS})
    assert body["error"] == "request:definition: calls_per_second: expected a number, got str 'fast'"
    body = await call(server, "POST", "/api/campaigns", 400, json={"definition": "name: [unclosed",
                                                                   "contacts": CONTACTS})
    assert body["error"].startswith("request:definition: not YAML")
    body = await call(server, "POST", "/api/campaigns", 400, json={"definition": definition()})
    assert body["error"] == "contacts: is required"
    body = await call(server, "POST", "/api/campaigns", 400, json={"definition": definition(), "contacts": CONTACTS,
                                                                   "contacts_path": "/etc/passwd"})
    assert body["error"].startswith("contacts_path: unknown field")
    body = await call(server, "POST", "/api/campaigns", 400, data=b"not json", headers=AUTH)
    assert body["error"].startswith("body: expected a JSON object")
    body = await call(server, "POST", "/api/campaigns", 400, data=b"[" * 5000, headers=AUTH)   # RecursionError: 500
    assert body["error"].startswith("body: expected a JSON object")
    body = await call(server, "POST", "/api/campaigns", 400, json={"definition": "name: 2026-13-45\n",
                                                                   "contacts": CONTACTS})     # PyYAML's ValueError
    assert body["error"].startswith("request:definition: not YAML") and "month must be in 1..12" in body["error"]
    assert await call(server, "GET", "/api/campaigns", 200) == {"campaigns": []}


async def test_create_status_state_changes_and_export(server):
    body = await created(server)
    assert (body["name"], body["contacts"]) == ("dental-reminders", 4)
    assert [(s["row"], s["value"]) for s in body["skipped"]] == [(4, "555-12"), (5, "2125550101")]
    body = await call(server, "POST", "/api/campaigns", 409,
                      json={"definition": definition(), "contacts": CONTACTS})
    assert "exists already" in body["error"]

    status = await call(server, "GET", "/api/campaigns/dental-reminders", 200)
    assert (status["state"], status["contacts"], status["pending"]) == ("created", 4, 4)
    [listed] = (await call(server, "GET", "/api/campaigns", 200))["campaigns"]
    moments = ("next_window_opening",)      # now, at each answer
    assert {k: v for k, v in listed.items() if k not in moments} == {k: v for k, v in status.items() if k not in moments}

    assert (await call(server, "POST", "/api/campaigns/dental-reminders/pause", 409))["error"] == \
        "cannot pause campaign 'dental-reminders': it is created (it can: start, cancel)"
    assert (await call(server, "POST", "/api/campaigns/dental-reminders/start", 200))["state"] == "running"
    assert (await call(server, "POST", "/api/campaigns/dental-reminders/start", 409))["error"].endswith(
        "it is running (it can: pause, cancel)")
    assert (await call(server, "POST", "/api/campaigns/dental-reminders/pause", 200))["state"] == "paused"
    assert (await call(server, "POST", "/api/campaigns/dental-reminders/resume", 200))["state"] == "running"
    assert "no such action" in (await call(server, "POST", "/api/campaigns/dental-reminders/restart", 404))["error"]
    assert (await call(server, "POST", "/api/campaigns/nope/start", 404))["error"] == "no campaign 'nope'"
    assert (await call(server, "GET", "/api/campaigns/nope", 404))["error"] == "no campaign 'nope'"

    await call(server, "POST", "/api/dnc", 201, json={"phone": "+44 20 7946 0000"})
    text = await call(server, "GET", "/api/campaigns/dental-reminders/export", 200, params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["phone", "outcome", "attempts", "note", "call_ids", "first_name", "appointment",
                             "clinic"]
    assert {r["phone"]: (r["first_name"], r["outcome"], r["attempts"]) for r in rows} == \
        {phone: (name, "pending", "0") for phone, name in GOOD.items()}
    listed = await call(server, "GET", "/api/campaigns/dental-reminders/export", 200, params={"format": "json"})
    assert sorted(r["phone"] for r in listed) == sorted(GOOD) and listed[0]["call_ids"] == []
    body = await call(server, "GET", "/api/campaigns/dental-reminders/export", 400, params={"format": "xlsx"})
    assert body["error"] == "format: expected one of csv, json, got 'xlsx'"
    assert (await call(server, "GET", "/api/campaigns/nope/export", 404, params={"format": "csv"}))["error"] == \
        "no campaign 'nope'"

    assert (await call(server, "POST", "/api/campaigns/dental-reminders/cancel", 200))["state"] == "canceled"
    assert (await call(server, "POST", "/api/campaigns/dental-reminders/resume", 409))["error"] == \
        "cannot resume campaign 'dental-reminders': it is canceled"


async def test_a_contact_list_larger_than_other_requests_may_be(server):
    rows = "\n".join(f"+1212{200 + n // 10000:03d}{n % 10000:04d},Pat {n},Monday 10:00,Downtown" for n in range(5000))
    contacts = "phone,first_name,appointment,clinic\n" + rows + "\n"
    assert len(contacts) > 3 * 64 * 1024       # the server's limit for other requests: 64 KiB
    body = await call(server, "POST", "/api/campaigns", 201, json={"definition": definition(), "contacts": contacts})
    assert body["contacts"] == 5000 and body["skipped"] == []
    text = await call(server, "GET", "/api/campaigns/dental-reminders/export", 200, params={"format": "csv"})
    exported = list(csv.reader(io.StringIO(text)))
    assert len(exported) == 5001 and exported[-1] == ["+12122004999", "pending", "0", "", "", "Pat 4999",
                                                      "Monday 10:00", "Downtown"]
    numbers = "\n".join(f"+1212{300 + n // 10000:03d}{n % 10000:04d}" for n in range(20000)).encode()
    assert (await call(server, "POST", "/api/dnc/import", 200, data=numbers))["added"] == 20000
    assert len((await call(server, "GET", "/api/dnc", 200))["numbers"]) == 20000


# -- do-not-call -------------------------------------------------------------------------------------------------

async def test_the_do_not_call_list(server):
    assert await call(server, "POST", "/api/dnc", 201, json={"phone": "(212) 555-0187", "note": "asked"}) == \
        {"phone": "+12125550187", "added": True}
    assert await call(server, "POST", "/api/dnc", 201, json={"phone": "020 7946 0000", "region": "GB"}) == \
        {"phone": "+442079460000", "added": True}
    assert await call(server, "POST", "/api/dnc", 200, json={"phone": "+12125550187", "note": "again"}) == \
        {"phone": "+12125550187", "added": False}
    assert "'555-12'" in (await call(server, "POST", "/api/dnc", 400, json={"phone": "555-12"}))["error"]
    assert (await call(server, "POST", "/api/dnc", 400, json={"phone": 2125550187}))["error"] == \
        "phone: expected a string, got int"
    body = await call(server, "POST", "/api/dnc/import", 200, data="phone\n+1 202 555 0143\nnope\n".encode())
    assert body == {"added": 1, "listed_already": 0,
                    "skipped": [{"row": 3, "value": "nope", "problem": body["skipped"][0]["problem"]}]}
    numbers = (await call(server, "GET", "/api/dnc", 200))["numbers"]
    assert {n["phone"]: (n["source"], n["note"]) for n in numbers} == {
        "+12125550187": ("api", "asked"), "+442079460000": ("api", None), "+12025550143": ("import", None)}
    assert await call(server, "DELETE", "/api/dnc/+12125550187", 200) == {"phone": "+12125550187", "removed": True}
    assert (await call(server, "DELETE", "/api/dnc/%2B12125550187", 404))["error"] == \
        "+12125550187 is not on the do-not-call list"
    assert "UTF-8" in (await call(server, "POST", "/api/dnc/import", 400, data="José\n".encode("latin-1")))["error"]


# -- PostgreSQL --------------------------------------------------------------------------------------------------

async def test_on_postgresql(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    postgres = PostgresServer()
    postgres.start()
    try:
        url = await postgres.create_database("campaigns_api")
        client = await aiohttp_client(app_for(tmp_path, url))
        await created(client)
        await call(client, "POST", "/api/campaigns", 409, json={"definition": definition(), "contacts": CONTACTS})
        await call(client, "POST", "/api/dnc", 201, json={"phone": "+33142685300"})
        assert await call(client, "POST", "/api/dnc/import", 200, data=b"+33 1 42 68 53 00\n+1 202 555 0143\n") == \
            {"added": 1, "listed_already": 1, "skipped": []}
        assert (await call(client, "POST", "/api/campaigns/dental-reminders/start", 200))["state"] == "running"
        listed = await call(client, "GET", "/api/campaigns/dental-reminders/export", 200, params={"format": "json"})
        assert [(r["phone"], r["first_name"], r["clinic"]) for r in listed] == [
            ("+12125550101", "Ana", "Downtown"), ("+12025550143", "Ben", "Uptown"),
            ("+442079460000", "Dee", "London"), ("+33142685300", "Eve", "Paris")]
        store = await Store.open(url, migrate=False)
        try:
            assert (await store.get_campaign("dental-reminders")).state == "running"
        finally:
            await store.close()
        await client.close()
    finally:
        postgres.stop()
