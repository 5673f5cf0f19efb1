"""The admin API over real HTTP on the real server app: bearer token, call lists and pages, one call in full,
its recording (a real WAV), and bad requests answered 400 naming the parameter."""

from __future__ import annotations

import io
import wave
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import structlog

from voicebot.api import DATABASE
from voicebot.audio.wav import write_wav
from voicebot.config import Settings
from voicebot.dialplan import Dialplan
from voicebot.server import SERVICES, create_app
from voicebot.store import Store, StoreError

from records import T0, full_record

TOKEN = "admin-token-0c5e9a77d1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings_in(tmp_path: Path, **changes) -> Settings:
    fields = dict(source=str(tmp_path / "config.yaml"), database_url=f"sqlite:///{tmp_path / 'voicebot.db'}",
                  recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    return Settings(**{**fields, **changes})


@pytest.fixture
async def server(aiohttp_client, monkeypatch, tmp_path):
    """The voice server's app with the admin API on, over loopback HTTP."""
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    (tmp_path / "recordings").mkdir()
    client = await aiohttp_client(create_app(settings_in(tmp_path), Dialplan(personas=[])))
    return client


async def saved(client, *records) -> None:
    """Hand records to the server's writer, as calls do, and wait until they are written."""
    writer = client.app[SERVICES].records
    for record in records:
        writer.put(record)
    await writer.idle()


async def get_json(client, path: str, status: int = 200, headers=AUTH, **params):
    async with client.get(path, params=params, headers=headers) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


def tone_wav(path: Path, seconds: float = 1.0) -> bytes:
    """A stereo 8 kHz recording: a 440 Hz caller on the left, a 660 Hz bot on the right."""
    t = np.arange(int(8000 * seconds)) / 8000
    left = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    right = (8000 * np.sin(2 * np.pi * 660 * t)).astype(np.int16)
    write_wav(path, np.stack([left, right], axis=1), 8000)
    return path.read_bytes()


# -- authentication --------------------------------------------------------------------------------------------

async def test_every_route_asks_for_the_bearer_token(server):
    await saved(server, full_record(1))
    for path in ("/api/calls", f"/api/calls/{full_record(1).id}", f"/api/calls/{full_record(1).id}/recording"):
        for headers, problem in (({}, "missing bearer token"),
                                 ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token"),
                                 ({"Authorization": "Bearer "}, "missing bearer token"),
                                 ({"Authorization": "Bearer admin-token-0c5e9a77d2"}, "wrong bearer token"),
                                 ({"Authorization": f"Bearer {TOKEN}x"}, "wrong bearer token")):
            async with server.get(path, headers=headers) as resp:
                assert resp.status == 401, (path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
                assert (await resp.json())["error"].startswith(problem)
    assert (await get_json(server, f"/api/calls/{full_record(1).id}"))["id"] == full_record(1).id


async def test_without_a_configured_token_the_api_is_off_and_says_so(aiohttp_client, monkeypatch, tmp_path):
    monkeypatch.delenv("VOICEBOT_ADMIN_TOKEN", raising=False)
    with structlog.testing.capture_logs() as logs:
        client = await aiohttp_client(create_app(settings_in(tmp_path), Dialplan(personas=[])))
    assert [e["event"] for e in logs].count("admin_api_disabled") == 1
    for path in ("/api/calls", "/api/calls/0000000000000001", "/api/calls/0000000000000001/recording"):
        for headers in ({}, AUTH):
            body = await get_json(client, path, status=503, headers=headers)
            assert body == {"error": "admin API disabled: set VOICEBOT_ADMIN_TOKEN"}
    async with client.get("/healthz") as resp:      # the rest of the server is unaffected
        assert resp.status == 200


# -- list and show ---------------------------------------------------------------------------------------------

async def test_the_list_pages_through_every_call_newest_first(server):
    records = [full_record(n) for n in range(25)]
    await saved(server, *records)
    ids, cursor, pages = [], None, 0
    while True:
        body = await get_json(server, "/api/calls", limit="10", **({"cursor": cursor} if cursor else {}))
        pages += 1
        ids += [c["id"] for c in body["calls"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and ids == [r.id for r in reversed(records)]
    first = body["calls"][-1]           # the oldest call, as a summary: no transcript, a link to its recording
    assert first["id"] == records[0].id and "transcript" not in first and "tools" not in first
    assert first["started_at"] == records[0].started_at.isoformat() and first["persona"] == records[0].persona
    assert first["recording_url"] == f"/api/calls/{records[0].id}/recording"


async def test_the_list_filters_by_persona_outcome_and_time(server):
    records = [full_record(n) for n in range(60)]
    await saved(server, *records)
    body = await get_json(server, "/api/calls", persona="acme-zh", outcome="transferred",
                          since=(T0 + timedelta(seconds=10)).isoformat(),
                          until=(T0 + timedelta(seconds=50)).isoformat().replace("+00:00", "Z"))
    expected = [r.id for r in reversed(records) if r.persona == "acme-zh" and r.outcome == "transferred"
                and 10 <= (r.started_at - T0).total_seconds() < 50]
    assert expected and [c["id"] for c in body["calls"]] == expected and body["next_cursor"] is None
    # Without an offset a time is UTC.
    naive = (T0 + timedelta(seconds=55)).replace(tzinfo=None).isoformat()
    assert [c["id"] for c in (await get_json(server, "/api/calls", since=naive))["calls"]] == \
        [r.id for r in reversed(records[55:])]


async def test_the_list_filters_by_carrier_and_by_number_in_any_format(server):
    records = [full_record(n) for n in range(30)]
    await saved(server, *records)
    body = await get_json(server, "/api/calls", carrier="telnyx", limit="100")
    assert [c["id"] for c in body["calls"]] == [r.id for r in reversed(records) if r.carrier == "telnyx"]
    for typed in ("+1 555 010 0017", "(555) 010-0017", "5550100017"):      # from_number +15550100017
        body = await get_json(server, "/api/calls", number=typed)
        assert [c["id"] for c in body["calls"]] == [records[17].id], typed
    body = await get_json(server, "/api/calls", number="765-0199", carrier="asterisk", limit="100")   # to_number
    assert [c["id"] for c in body["calls"]] == [r.id for r in reversed(records) if r.carrier == "asterisk"]
    assert (await get_json(server, "/api/calls", status=400, number="%"))["error"].startswith(
        "number: expected digits")
    assert (await get_json(server, "/api/calls", number="555%0017"))["calls"] == []     # % is no LIKE wildcard


async def test_one_call_in_full_with_its_transcript(server):
    record = full_record(8)
    await saved(server, record)
    body = await get_json(server, f"/api/calls/{record.id}")
    assert body == {**record.to_dict(), "recording_url": f"/api/calls/{record.id}/recording"}
    assert body["transcript"][2] == {"role": "assistant", "text": "Your order", "t_ms": 7100, "interrupted": True,
                                     "heard_ms": 640,
                                     "full_text": "Your order A-1093 has shipped and arrives on Sunday."}
    missing = await get_json(server, "/api/calls/ffffffffffffffff", status=404)
    assert missing == {"error": "no call ffffffffffffffff"}


@pytest.mark.parametrize("params, named", [
    ({"limit": "ten"}, "limit: expected a whole number, got 'ten'"),
    ({"limit": "0"}, "limit: must be ≥ 1"),
    ({"since": "yesterday"}, "since: expected an ISO 8601 date or time"),
    ({"until": "2025-13-40"}, "until: expected an ISO 8601 date or time"),
    ({"since": "2025-03-14T10:00:00Z", "until": "2025-03-14T09:00:00Z"}, "until: must be later than since"),
    ({"outcome": "hung_up"}, "outcome: expected one of completed, caller_hung_up"),
    ({"cursor": "bm90IG91cnM"}, "cursor: not a cursor this server handed out"),
    ({"persona": ""}, "persona: is empty"),
    ({"persona_name": "acme-en"}, "persona_name: unknown parameter (known: persona, since, until"),
])
async def test_bad_list_parameters_are_answered_400_naming_the_parameter(server, params, named):
    body = await get_json(server, "/api/calls", status=400, **params)
    assert body["error"].startswith(named), body


async def test_a_limit_above_the_cap_is_cut_to_it(server):
    body = await get_json(server, "/api/calls", limit="100000")
    assert body == {"calls": [], "next_cursor": None, "limit": 500}


# -- recordings ------------------------------------------------------------------------------------------------

async def test_the_recording_is_served_as_the_wav_it_is(server, tmp_path):
    folder = tmp_path / "recordings"
    wav = tone_wav(folder / "CA1.wav")
    relative = full_record(1, recording_path="CA1.wav")                   # relative to recordings_dir
    absolute = full_record(2, recording_path=str(folder / "CA1.wav"))
    await saved(server, relative, absolute)
    for record in (relative, absolute):
        async with server.get(f"/api/calls/{record.id}/recording", headers=AUTH) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
            body = await resp.read()
        assert body == wav
        with wave.open(io.BytesIO(body)) as parsed:
            assert (parsed.getnchannels(), parsed.getframerate(), parsed.getnframes()) == (2, 8000, 8000)
            samples = np.frombuffer(parsed.readframes(8000), "<i2").reshape(-1, 2)
        spectrum = np.abs(np.fft.rfft(samples[:, 1]))                 # the bot's channel: its 660 Hz tone
        assert np.argmax(spectrum) == 660


async def test_a_missing_or_absent_recording_is_a_clear_404(server, tmp_path):
    gone = full_record(3, recording_path=str(tmp_path / "recordings" / "CA3.wav"))     # never written
    none = full_record(4, recording_path=None)
    await saved(server, gone, none)
    assert await get_json(server, f"/api/calls/{gone.id}/recording", status=404) == \
        {"error": f"the recording of call {gone.id} is gone (CA3.wav no longer exists)"}
    assert await get_json(server, f"/api/calls/{none.id}/recording", status=404) == \
        {"error": f"call {none.id} has no recording"}
    assert await get_json(server, "/api/calls/ffffffffffffffff/recording", status=404) == \
        {"error": "no call ffffffffffffffff"}


async def test_nothing_outside_recordings_dir_is_served(server, tmp_path):
    secret = tmp_path / "secret.wav"
    tone_wav(secret)
    (tmp_path / "recordings" / "link.wav").symlink_to(secret)
    attempts = [full_record(5, recording_path="../secret.wav"), full_record(6, recording_path=str(secret)),
                full_record(7, recording_path="link.wav")]
    await saved(server, *attempts)
    for record in attempts:
        body = await get_json(server, f"/api/calls/{record.id}/recording", status=403)
        assert body == {"error": f"the recording of call {record.id} is not inside recordings_dir; not served"}


# -- the server's lifecycle ------------------------------------------------------------------------------------

async def test_the_server_opens_the_database_for_calls_and_closes_it_with_nothing_lost(tmp_path):
    from aiohttp import web

    app = create_app(settings_in(tmp_path), Dialplan(personas=[]))
    runner = web.AppRunner(app)
    await runner.setup()                                       # on_startup: store opened, writer started
    writer = app[SERVICES].records
    assert writer is app[DATABASE].records and writer is not None
    assert app[DATABASE].spool_path == tmp_path / "voicebot.db.spool.jsonl"
    for n in range(20):
        writer.put(full_record(n))
    await runner.cleanup()                                     # on_cleanup: drained, then closed
    assert app[SERVICES].records is None
    store = await Store.open(f"sqlite:///{tmp_path / 'voicebot.db'}")
    try:
        records, _ = await store.list_calls()
        assert len(records) == 20
    finally:
        await store.close()


async def test_a_database_that_cannot_be_reached_stops_the_server_from_starting(tmp_path):
    from aiohttp import web

    from pg_server import free_port

    url = f"postgresql://voicebot:pw-7731@127.0.0.1:{free_port()}/voicebot"
    runner = web.AppRunner(create_app(settings_in(tmp_path, database_url=url), Dialplan(personas=[])))
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(StoreError, match=r"cannot open the database postgresql://voicebot:\*\*\*@127.0.0.1"):
            await runner.setup()
    await runner.cleanup()
    failure = next(e for e in logs if e["event"] == "database_unavailable")
    assert "voicebot:***@127.0.0.1" in failure["error"] and "pw-7731" not in repr(logs)
