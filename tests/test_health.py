"""/healthz (alive) and /readyz (takes calls: its database answers and it is not draining), on a real server;
PostgreSQL really stopped under it. Draining's /readyz: test_drain.py, test_drain_serve.py."""

from __future__ import annotations

import os

import aiohttp
import pytest

from voicebot.emulator.app import Emulator, start_emulator

from conftest import start_voice_server
from drain_checks import persona, readyz
from pg_server import PostgresServer


@pytest.fixture
async def emulator():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    yield emulator
    await runner.cleanup()


async def serving(tmp_path, emulator, **overrides):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "drain.yaml").write_text(persona())
    return await start_voice_server(tmp_path, plans, emulator, **overrides)


async def test_healthz_keeps_its_answer_and_readyz_says_ready(tmp_path, emulator):
    runner, settings, _app = await serving(tmp_path, emulator)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(settings.public_url + "/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok", "calls": 0, "pid": os.getpid()}
        assert await readyz(settings.public_url) == (200, {"status": "ready"})
    finally:
        await runner.cleanup()


async def test_readyz_fails_while_postgresql_is_down_and_healthz_does_not(tmp_path, emulator):
    postgres = PostgresServer()
    postgres.start()
    try:
        url = await postgres.create_database("readyz")
        runner, settings, _app = await serving(tmp_path, emulator, database_url=url)
        try:
            assert await readyz(settings.public_url) == (200, {"status": "ready"})
            postgres.stop()
            status, body = await readyz(settings.public_url)
            assert status == 503 and body["status"] == "not ready"
            (reason,) = body["reasons"]
            assert reason.startswith("database unreachable: ")
            assert postgres.password not in reason                   # never the URL's password
            async with aiohttp.ClientSession() as http:
                async with http.get(settings.public_url + "/healthz") as response:
                    assert response.status == 200                    # alive: not to be restarted for it
        finally:
            await runner.cleanup()
    finally:
        postgres.stop()
