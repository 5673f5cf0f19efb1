"""The real databases the store tests run on: a SQLite file, and a throwaway PostgreSQL server per test module
with a fresh database per test. Import the fixtures into a test module to use them."""

from __future__ import annotations

import uuid

import pytest

from voicebot.store import Store

from pg_server import PostgresServer


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_url(postgres) -> str:
    return await postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'voicebot.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'voicebot.db'}"
    return await request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(database_url):
    store = await Store.open(database_url)
    try:
        yield store
    finally:
        await store.close()
