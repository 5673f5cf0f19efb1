"""The aiohttp application: routes, startup and shutdown (every live call is ended cleanly)."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import structlog
from aiohttp import web

from .call import CallServices, EngineFactory
from .config import Settings
from .dialplan import Dialplan, Persona
from .engines.chain import ChainEngine
from .engines.realtime import RealtimeEngine
import importlib

log = structlog.get_logger("voicebot.server")

SERVICES = web.AppKey("services", CallServices)

# Each carrier module in voicebot/telephony exposes add_routes(app, services).
CARRIER_MODULES = ("twilio", "telnyx", "signalwire", "plivo", "exotel",
                   "vonage", "jambonz", "asterisk", "audiosocket", "freeswitch")


def stepfun_engines(settings: Settings, services: CallServices) -> EngineFactory:
    def make(persona: Persona, sink, call_log, *, kind: str, conversation: list, opening: str | None):
        if kind == "chain":
            return ChainEngine(persona, settings.stepfun, sink, call_log, http=services.http,
                               conversation=conversation, opening=opening)
        return RealtimeEngine(persona, settings.stepfun, sink, call_log)
    return make


async def _open_http(app: web.Application) -> None:
    app[SERVICES].http = aiohttp.ClientSession()


async def _close_http(app: web.Application) -> None:
    if app[SERVICES].http is not None:
        await app[SERVICES].http.close()


async def _healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response({"status": "ok", "calls": len(services.calls)})


async def _end_all_calls(app: web.Application) -> None:
    calls = list(app[SERVICES].calls)
    if calls:
        log.info("shutdown_ending_calls", calls=len(calls))
    for call in calls:
        call.hang_up("server shutting down")
    await asyncio.gather(*(call.finished() for call in calls), return_exceptions=True)


def create_app(settings: Settings, dialplan: Dialplan, *, make_engine: EngineFactory | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_message_bytes)
    services = CallServices(settings=settings, dialplan=dialplan, make_engine=make_engine or (lambda *a, **k: None))
    if make_engine is None:
        services.make_engine = stepfun_engines(settings, services)
    app[SERVICES] = services
    app.on_startup.append(_open_http)
    app.on_cleanup.append(_close_http)
    for name in CARRIER_MODULES:
        importlib.import_module(f"voicebot.telephony.{name}").add_routes(app, services)
    app.router.add_get("/healthz", _healthz)
    app.on_shutdown.append(_end_all_calls)
    return app


def with_stepfun_base_url(settings: Settings, base_url: str) -> Settings:
    return dataclasses.replace(settings, stepfun=dataclasses.replace(settings.stepfun, base_url=base_url))
