"""The admin HTTP API under ``/api`` (bearer token from ``VOICEBOT_ADMIN_TOKEN``), and the database it reads:
``setup()`` opens the store and the record writer when the server starts and closes them after its calls ended.

Each resource is one sibling module with ``add_routes(router)``: calls, campaigns, do-not-call."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from aiohttp import web

from ..store import RecordWriter, Store, StoreError, default_spool_path
from . import calls, campaigns, dnc
from .auth import TOKEN_ENV, bearer_auth
from .common import DATABASE, DIALPLAN, Database, json_errors

log = structlog.get_logger("voicebot.api")
ROUTE_MODULES = (calls, campaigns, dnc)


def setup(app: web.Application, services) -> None:
    """Wire the database and the admin API into the server's app; ``services.records`` takes the calls' records."""
    settings = services.settings
    spool = settings.database_spool or default_spool_path(settings.database_url, Path(settings.source).parent)
    db = Database(url=settings.database_url, spool_path=spool, recordings_dir=settings.recordings_dir)
    app[DATABASE] = db
    app[DIALPLAN] = services.dialplan

    async def database_open(_app: web.Application):
        try:
            db.store = await Store.open(db.url)
        except StoreError as exc:
            log.error("database_unavailable", error=str(exc))
            raise
        try:
            db.records = RecordWriter(db.store, db.spool_path)
            await db.records.start()
            services.records = db.records
            yield       # serving; shutdown has ended every call before the code below runs
        finally:
            services.records = None
            if db.records is not None:
                await db.records.close()
            await db.store.close()

    app.cleanup_ctx.append(database_open)

    token = os.environ.get(TOKEN_ENV) or None
    if token is None:
        log.warning("admin_api_disabled", reason=f"{TOKEN_ENV} is not set; every /api route answers 503")
    api = web.Application(middlewares=[json_errors, bearer_auth(token)])
    for module in ROUTE_MODULES:
        module.add_routes(api.router)
    app.add_subapp("/api/", api)
