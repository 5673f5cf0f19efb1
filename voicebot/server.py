"""The aiohttp application: routes, startup and shutdown (every live call is ended cleanly)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import os
import time
import tracemalloc

import aiohttp
import structlog
from aiohttp import web

from . import api, latency, metrics, resources
from .campaigns import callbacks as campaign_callbacks, service as campaign_service
from .answer import Answerer
from .call import CallServices, EngineFactory
from .config import Settings
from .dialplan import Dialplan, Persona
from .engines.chain import ChainEngine
from .engines.realtime import RealtimeEngine
from .telephony import rest
from .telephony.base import CarrierSession
from .webhooks import EventSender

log = structlog.get_logger("voicebot.server")

SERVICES = web.AppKey("services", CallServices)
LATENCY_PROBE = web.AppKey("latency_probe", asyncio.Task)
MEMORY_BASELINE = web.AppKey("memory_baseline", dict)
# GET /debug/runtime and /debug/memory (loopback peers only): what the process holds, for the soak benchmark.
DEBUG_RUNTIME = os.environ.get("VOICEBOT_DEBUG_RUNTIME", "").strip().lower() in ("1", "true", "yes")

# Each carrier module in voicebot/telephony exposes add_routes(app, services).
CARRIER_MODULES = ("twilio", "telnyx", "signalwire", "plivo", "exotel",
                   "vonage", "jambonz", "asterisk", "audiosocket", "freeswitch")


def stepfun_engines(settings: Settings, services: CallServices) -> EngineFactory:
    def make(persona: Persona, sink, call_log, *, kind: str, conversation: list, opening: str | None,
             tools: list | None = None):
        if kind == "chain":
            return ChainEngine(persona, settings.stepfun, sink, call_log, http=services.http,
                               conversation=conversation, opening=opening, tools=tools)
        return RealtimeEngine(persona, settings.stepfun, sink, call_log, tools=tools, greet=opening == "greeting")
    return make


async def _open_http(app: web.Application) -> None:
    services = app[SERVICES]
    services.http = aiohttp.ClientSession()
    services.events = EventSender(services.http)
    controls = {name: rest.call_control_for(name, services.settings, services.http) for name in CARRIER_MODULES}
    services.controls = {name: control for name, control in controls.items() if control is not None}


def session_classes() -> dict[str, type[CarrierSession]]:
    """Each carrier's wire-protocol session class, by carrier name."""
    found: dict[str, type[CarrierSession]] = {}
    for name in CARRIER_MODULES:
        module = importlib.import_module(f"voicebot.telephony.{name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, CarrierSession) and value.carrier == name:
                found[name] = value
    return found


async def _close_http(app: web.Application) -> None:
    services = app[SERVICES]
    if services.events is not None:
        await services.events.close()
    if services.http is not None:
        await services.http.close()


async def _healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response({"status": "ok", "calls": len(services.calls), "pid": os.getpid()})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text format: this process's metrics, or every worker's with ``--workers N``. Open by default
    like most exporters (no label carries a phone number, call id or free text); VOICEBOT_METRICS_TOKEN
    makes it ask for ``Authorization: Bearer <token>``."""
    refusal = metrics.scrape_refusal(request.headers.get("Authorization"))
    if refusal is not None:
        log.warning("metrics_scrape_refused", reason=refusal, peer=request.remote)
        return web.Response(status=401, text=refusal + "\n", headers={"WWW-Authenticate": 'Bearer realm="voicebot"'})
    body = await asyncio.to_thread(metrics.exposition)    # multiprocess mode reads every worker's file
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def _debug_latency(request: web.Request) -> web.Response:
    """The latency histograms (VOICEBOT_LATENCY=1 only); ``?reset=1`` starts a new window after reading."""
    body = latency.snapshot()
    body["calls"] = len(request.app[SERVICES].calls)
    if request.query.get("reset") in ("1", "true"):
        latency.reset()
    return web.json_response(body)


def _from_loopback(request: web.Request) -> bool:
    return request.remote in ("127.0.0.1", "::1")


async def _debug_runtime(request: web.Request) -> web.Response:
    """What this process holds (:mod:`voicebot.resources`: asyncio tasks by coroutine, descriptors, sockets,
    threads, RSS) and the calls in progress with their age; ``?gc=1`` collects garbage first, for an idle
    figure without what the collector has not reached yet; ``?trim=1`` then has the C allocator return the memory
    it keeps free (RSS before and after: how much of it was not live data); ``?detail=1`` adds what each
    descriptor is."""
    if not _from_loopback(request):
        return web.json_response({"error": "loopback only"}, status=403)
    if request.query.get("gc") in ("1", "true"):
        gc.collect()
    trimmed_from = None
    if request.query.get("trim") in ("1", "true"):
        trimmed_from = resources.rss_bytes()
        started = time.perf_counter()
        resources.trim_heap()
        trim_ms = round((time.perf_counter() - started) * 1000, 1)
    snapshot = resources.snapshot(exclude=asyncio.current_task())
    asking = request.transport.get_extra_info("socket") if request.transport is not None else None
    if asking is not None:
        snapshot.fds.pop(asking.fileno(), None)      # the connection asking is not what the process holds
    body = snapshot.summary()
    if trimmed_from is not None:
        body["rss_before_trim_bytes"] = trimmed_from
        body["trim_ms"] = trim_ms
    if request.query.get("detail") in ("1", "true"):
        body["fd_list"] = {str(fd): what for fd, what in sorted(snapshot.fds.items())}
    services = request.app[SERVICES]
    now = time.monotonic()
    body["calls"] = [{"call_id": call.call_id, "carrier_call_id": call.meta.call_id,
                      "age_s": round(now - call.started_t, 1), "engine": call.engine.name,
                      "closing": call.closing, "ended": call.ended} for call in list(services.calls)]
    body["stepfun_base_url"] = services.settings.stepfun.base_url
    body["stepfun_embedded"] = services.settings.stepfun.embedded
    return web.json_response(body)


async def _debug_memory(request: web.Request) -> web.Response:
    """Where Python memory grew since the previous call, by allocation site (tracemalloc: start the server
    with ``PYTHONTRACEMALLOC=<frames>``): the ``?top=`` (20) sites that grew most. The first call, and any
    with ``?reset=1``, only takes the baseline."""
    if not _from_loopback(request):
        return web.json_response({"error": "loopback only"}, status=403)
    if not tracemalloc.is_tracing():
        return web.json_response({"error": "tracemalloc is off: start the server with PYTHONTRACEMALLOC=5"},
                                 status=409)
    gc.collect()
    # Seconds of work with a large heap: in a thread, so that calls are served meanwhile (taking the snapshot
    # itself still holds the interpreter).
    snapshot = await asyncio.to_thread(
        lambda: tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),)))
    state = request.app[MEMORY_BASELINE]
    previous, state["snapshot"] = state.get("snapshot"), snapshot
    traced, peak = tracemalloc.get_traced_memory()
    body: dict = {"traced_bytes": traced, "peak_bytes": peak, "rss_bytes": resources.rss_bytes()}
    if previous is None or request.query.get("reset") in ("1", "true"):
        body["baseline"] = True
        return web.json_response(body)
    top = int(request.query.get("top", "20"))
    stats = await asyncio.to_thread(snapshot.compare_to, previous, "traceback")
    body["growth_bytes"] = sum(stat.size_diff for stat in stats)
    body["top"] = [{"size_diff": stat.size_diff, "count_diff": stat.count_diff, "size": stat.size,
                    "traceback": stat.traceback.format()} for stat in stats[:top]]
    return web.json_response(body)


async def _heap_trim(app: web.Application):
    """The heap's free memory handed back every ``VOICEBOT_MALLOC_TRIM_S`` (60 s; 0: never), see
    :func:`voicebot.resources.trim_heap_every`."""
    interval, problem = resources.trim_interval_s()
    if problem:
        log.error("heap_trim_setting_invalid", problem=problem, using_s=interval)
    task = asyncio.create_task(resources.trim_heap_every(interval), name="heap-trim") if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _start_latency_probe(app: web.Application) -> None:
    latency.watch_gc()
    app[LATENCY_PROBE] = asyncio.create_task(latency.loop_lag_probe())


async def _stop_latency_probe(app: web.Application) -> None:
    app[LATENCY_PROBE].cancel()


async def _end_all_calls(app: web.Application) -> None:
    calls = list(app[SERVICES].calls)
    if calls:
        log.info("shutdown_ending_calls", calls=len(calls))
    for call in calls:
        call.hang_up("server shutting down", "failed")
    await asyncio.gather(*(call.finished() for call in calls), return_exceptions=True)


def install_event_loop() -> str:
    """Use uvloop for the next ``asyncio.run`` when it is installed (``pip install voicebot[fast]``) and
    ``VOICEBOT_UVLOOP`` is not ``0``; returns the loop's name. At 100 calls it saves about a tenth of the
    server's CPU (benchmarks/RESULTS.md)."""
    if os.environ.get("VOICEBOT_UVLOOP", "1").strip() == "0":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def create_app(settings: Settings, dialplan: Dialplan, *, make_engine: EngineFactory | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_message_bytes)
    services = CallServices(settings=settings, dialplan=dialplan, make_engine=make_engine or (lambda *a, **k: None))
    if make_engine is None:
        services.make_engine = stepfun_engines(settings, services)
    services.answer = Answerer(services)
    app[SERVICES] = services
    app.on_startup.append(_open_http)
    app.on_cleanup.append(_close_http)
    app.cleanup_ctx.append(_heap_trim)
    for name in CARRIER_MODULES:
        importlib.import_module(f"voicebot.telephony.{name}").add_routes(app, services)
        rest.capabilities_of(name, settings)     # a wrong call_control section stops the server here
    rest.add_routes(app, settings)
    app.router.add_get("/healthz", _healthz)
    if metrics.ENABLED:
        app.router.add_get("/metrics", _metrics)
    api.setup(app, services)
    if DEBUG_RUNTIME:
        app[MEMORY_BASELINE] = {}
        app.router.add_get("/debug/runtime", _debug_runtime)
        app.router.add_get("/debug/memory", _debug_memory)
    if latency.ENABLED:
        app.router.add_get("/debug/latency", _debug_latency)
        app.on_startup.append(_start_latency_probe)
        app.on_cleanup.append(_stop_latency_probe)
    app.on_shutdown.append(_end_all_calls)
    campaign_callbacks.add_routes(app, services)
    campaign_service.setup(app, services)      # after _end_all_calls: the calls' last results are flushed after it
    return app


def with_embedded_emulator(settings: Settings, base_url: str) -> Settings:
    return dataclasses.replace(settings, stepfun=dataclasses.replace(settings.stepfun, base_url=base_url,
                                                                     embedded=True))


async def start_server(settings: Settings, dialplan: Dialplan, *, host: str | None = None,
                       port: int | None = None):
    """Start the voice server (and the embedded emulator when neither a key nor a base URL of our own is set:
    StepFunSettings.endpoint). Returns (runners, settings, url)."""
    from .emulator.app import Emulator, start_emulator

    runners = []
    if settings.stepfun.emulated:
        # Nobody reads the embedded emulator's event logs: counters only, few closed sessions kept, so that
        # its memory stays flat however long the server runs.
        emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(record=False, retain_sessions=20))
        runners.append(emu_runner)
        base = f"http://127.0.0.1:{emulator.port}/step_plan/v1"
        settings = with_embedded_emulator(settings, base)
        log.warning("stepfun_emulator_in_use",
                    message="NO STEP_API_KEY SET: calls are answered by the embedded StepFun EMULATOR, "
                            "not the real StepFun API", emulator_url=base)
    endpoint = settings.stepfun.endpoint()
    log.info("stepfun_endpoint", kind=endpoint.kind, url=endpoint.url, reason=endpoint.reason,
             key_present=bool(settings.stepfun.api_key))
    app = create_app(settings, dialplan)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host if host is not None else settings.host,
                       settings.port if port is None else port, reuse_port=settings.workers > 1)
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{'127.0.0.1' if bound[0] in ('0.0.0.0', '::') else bound[0]}:{bound[1]}"
    runners.insert(0, runner)
    return runners, settings, url
