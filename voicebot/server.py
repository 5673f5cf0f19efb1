"""The aiohttp application: routes, health, startup, draining and shutdown (every live call is ended cleanly),
dialplan reloads.

Stopping (SIGTERM, or SIGINT): :class:`Drain`. ``/readyz`` fails at once and new calls are refused the carrier's
way (voicebot/admission.py); calls in progress go on for up to ``server.drain_seconds``, then each hears its
persona's goodbye and ends; then the records, transcripts and recordings are flushed and the process exits 0. A
second stop signal ends the calls at once (still flushing).

Reloading (SIGHUP, or a dialplan file changed): :class:`DialplanWatch`. The dialplans are read and checked as at
startup; an invalid change is logged naming its file and field and the dialplans in use stay. New calls get the
new personas, calls in progress keep the one they started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import os
import signal
import time
import tracemalloc
from datetime import datetime, timedelta, timezone

import aiohttp
import structlog
from aiohttp import web

from . import api, console, http_limits, latency, metrics, resources
from .admission import Admission
from .api.common import DATABASE
from .campaigns import callbacks as campaign_callbacks, service as campaign_service
from .answer import Answerer
from .call import CallServices, EngineFactory
from .config import CARRIER_SECTIONS, ConfigError, Settings, check_serving
from .dialplan import Dialplan, Persona, dialplan_version, load_dialplan
from .engines.chain import ChainEngine
from .engines.realtime import RealtimeEngine
from .stepfun.models import UnknownModel, log_unknown_models
from .store.database import describe_error
from .telephony import rest
from .telephony.base import CarrierSession, read_carrier_options
from .webhooks import EventSender

log = structlog.get_logger("voicebot.server")

SERVICES = web.AppKey("services", CallServices)
LATENCY_PROBE = web.AppKey("latency_probe", asyncio.Task)
MEMORY_BASELINE = web.AppKey("memory_baseline", dict)
# GET /debug/runtime and /debug/memory (loopback peers only): what the process holds, for the soak benchmark.
DEBUG_RUNTIME = os.environ.get("VOICEBOT_DEBUG_RUNTIME", "").strip().lower() in ("1", "true", "yes")

READY_DATABASE_TIMEOUT_S = 2.0   # /readyz: a database slower than this to answer SELECT 1 counts as unreachable
DRAIN_POLL_S = 0.1               # while draining, how often "are the calls over?" is asked (not per frame)
GOODBYE_WINDOW_S = 10.0          # at the drain deadline, the most the goodbyes may take; then calls end at once
CALLS_FINISH_TIMEOUT_S = 5.0     # calls told to end: the most their wrap-up (engine, recording, record) may take
FLUSH_TIMEOUT_S = 15.0           # then (5 s each at most): the campaigns' last results, open connections, the
                                 #   record writer's queue
DIALPLAN_POLL_S = 1.0            # how often the dialplan folder is looked at for changed files


def longest_stop_s(drain_seconds: float) -> float:
    """The most a stop signal can take to end a server with this ``server.drain_seconds``: what a platform's stop
    timeout must cover (Kubernetes terminationGracePeriodSeconds after its preStop, compose stop_grace_period,
    systemd TimeoutStopSec)."""
    return drain_seconds + GOODBYE_WINDOW_S + CALLS_FINISH_TIMEOUT_S + FLUSH_TIMEOUT_S

# Each carrier module in voicebot/telephony exposes add_routes(app, services).
CARRIER_MODULES = ("twilio", *CARRIER_SECTIONS)


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


async def _readyz(request: web.Request) -> web.Response:
    """200 ``{"status": "ready"}`` while this process takes calls; else 503 with the reasons. With ``--workers N``
    each worker answers for itself."""
    reasons = await readiness_problems(request.app)
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})


async def readiness_problems(app: web.Application) -> list[str]:
    """Why this process should get no new calls: draining, or its database unreachable. (Its config and
    dialplans were loaded, or it would not be serving.)"""
    reasons = []
    if app[SERVICES].admission.draining:
        reasons.append("draining: the server is stopping")
    database = app[DATABASE]
    if database.store is None:
        reasons.append("database not open")
    else:
        try:
            await asyncio.wait_for(database.store.ping(), READY_DATABASE_TIMEOUT_S)
        except asyncio.TimeoutError:
            reasons.append(f"database unreachable: no answer within {READY_DATABASE_TIMEOUT_S:g} s")
        except Exception as exc:
            reasons.append(f"database unreachable: {describe_error(exc, database.url)}")
    return reasons


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


class Drain:
    """This process stopping without cutting calls short: see the module's docstring. ``stop`` is what a stop
    signal calls; ``finished`` is set once every call has ended (records queued), for the server to clean up."""

    def __init__(self, services: CallServices) -> None:
        self.services = services
        self.started = False
        self.finished = asyncio.Event()
        self._at_once = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._seen: set = set()           # every call up at some point of the drain

    def stop(self, why: str) -> None:
        """The first stop drains; another one during the drain ends the calls at once."""
        if not self.started:
            self.started = True
            self._task = asyncio.create_task(self._run(why), name="drain")
        elif not self._at_once.is_set():
            log.warning("drain_cut_short", signal=why, calls=len(self.services.calls))
            self._at_once.set()

    def _idle(self) -> bool:
        self._seen.update(self.services.calls)
        return not self.services.calls and not self.services.admission.connections

    async def _until_idle(self, deadline: float) -> None:
        """Until no call is left, ``deadline`` (loop time) has come, or a second stop signal."""
        loop = asyncio.get_running_loop()
        while not self._idle() and not self._at_once.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._at_once.wait(), min(DRAIN_POLL_S, remaining))
            except asyncio.TimeoutError:
                pass

    async def _run(self, why: str) -> None:
        services = self.services
        drain_seconds = services.settings.drain_seconds
        loop = asyncio.get_running_loop()
        began = loop.time()
        services.admission.draining = True      # from here on /readyz fails and new calls are refused
        metrics.set_draining(True)
        log.info("drain_started", signal=why, calls=len(services.calls), drain_seconds=drain_seconds,
                 deadline=(datetime.now(timezone.utc) + timedelta(seconds=drain_seconds)).isoformat(
                     timespec="milliseconds"))
        at_deadline: set = set()      # calls still up at the deadline: told to say goodbye
        at_once: set = set()          # calls ended without one (second signal, drain_seconds 0, goodbye too long)
        try:
            stop_dialing = getattr(services.campaigns, "stop_dialing", None)
            if stop_dialing is not None:
                await stop_dialing()
            await self._until_idle(began + drain_seconds)
            if not self._idle() and not self._at_once.is_set() and drain_seconds > 0:
                at_deadline = set(services.calls)
                for call in at_deadline:
                    call.control.drain_deadline(drain_seconds)
                await self._until_idle(loop.time() + GOODBYE_WINDOW_S)
            at_once = set(services.calls)
            if at_once:
                why_now = ("stopped again during the drain" if self._at_once.is_set()
                           else "drain_seconds is 0" if drain_seconds <= 0
                           else f"goodbye not over within {GOODBYE_WINDOW_S:g} s")
                for call in at_once:
                    call.hang_up(f"server stopping: {why_now}", "drained")
                await asyncio.wait([asyncio.ensure_future(call.finished()) for call in at_once],
                                   timeout=CALLS_FINISH_TIMEOUT_S)
        finally:
            log.info("drain_finished", drained_s=round(loop.time() - began, 2),
                     calls_ended_by_themselves=len(self._seen - at_deadline - at_once),
                     calls_ended_at_deadline=len(at_deadline - at_once), calls_ended_at_once=len(at_once),
                     calls_still_running=len(services.calls))
            self.finished.set()


class DialplanWatch:
    """Reloads the dialplans on SIGHUP (``reload_soon``) and when a file in their folder is added, removed or
    written (its modification time or size, looked at every ``DIALPLAN_POLL_S``): see the module's docstring."""

    def __init__(self, services: CallServices, poll_s: float = DIALPLAN_POLL_S) -> None:
        self.services = services
        self.folder = services.settings.dialplans_dir
        self.poll_s = poll_s
        self._version: dict = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._reloads: set[asyncio.Task] = set()

    async def start(self, _app: web.Application) -> None:
        self._version = await asyncio.to_thread(dialplan_version, self.folder)
        self._task = asyncio.create_task(self._watch(), name="dialplan-watch")

    async def stop(self, _app: web.Application) -> None:
        for task in [self._task, *self._reloads]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._reloads] if t is not None], return_exceptions=True)

    def reload_soon(self, trigger: str) -> None:
        task = asyncio.create_task(self.reload(trigger), name="dialplan-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                version = await asyncio.to_thread(dialplan_version, self.folder)
            except OSError as exc:
                log.warning("dialplan_folder_unreadable", folder=str(self.folder), error=str(exc))
                continue
            if version != self._version:
                await self.reload("file change")

    async def reload(self, trigger: str) -> bool:
        """Read and check the dialplans; take them if valid. False (and the old ones kept) when not."""
        async with self._lock:
            self._version = await asyncio.to_thread(dialplan_version, self.folder)   # what this reload reads
            try:
                new = await asyncio.to_thread(load_dialplan, self.folder)
                check_carrier_personas(self.services.settings, new)
                unknown_models = check_models(self.services.settings, new)
            except ConfigError as exc:
                log.error("dialplan_reload_rejected", trigger=trigger, file=exc.source, field=exc.field_path or None,
                          problem=exc.problem, error=str(exc), kept="the dialplans in use")
                return False
            except Exception as exc:     # a bug reading them must not take the server (or its dialplans) down
                log.error("dialplan_reload_failed", trigger=trigger, error=f"{type(exc).__name__}: {exc}",
                          kept="the dialplans in use", exc_info=True)
                return False
            current = self.services.dialplan
            changes = current.changes_to(new)
            current.replace_with(new)
            log_unknown_models(unknown_models)
            log.info("dialplans_reloaded", trigger=trigger, personas=len(new.personas), **changes)
            return True


def check_carrier_personas(settings: Settings, dialplan: Dialplan) -> None:
    """The personas ``carriers.<name>.persona`` names exist in ``dialplan`` (ConfigError naming the field)."""
    for name in settings.carriers:
        read_carrier_options(settings.carrier_fields(name), dialplan)


async def _end_all_calls(app: web.Application) -> None:
    calls = list(app[SERVICES].calls)
    if calls:
        log.info("shutdown_ending_calls", calls=len(calls))
    for call in calls:
        call.hang_up("server shutting down", "failed")
    await asyncio.gather(*(call.finished() for call in calls), return_exceptions=True)


async def _close_live_feed(services: CallServices) -> None:
    """After the calls ended: the console's live streams end too, rather than hold the shutdown open."""
    services.live.close()


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


DRAIN = web.AppKey("drain", Drain)
DIALPLAN_WATCH = web.AppKey("dialplan_watch", DialplanWatch)


def create_app(settings: Settings, dialplan: Dialplan, *, make_engine: EngineFactory | None = None) -> web.Application:
    app = web.Application(client_max_size=http_limits.MAX_BODY_BYTES, middlewares=[http_limits.refuse_large_bodies])
    services = CallServices(settings=settings, dialplan=dialplan, make_engine=make_engine or (lambda *a, **k: None))
    if make_engine is None:
        services.make_engine = stepfun_engines(settings, services)
    services.answer = Answerer(services)
    services.admission = Admission(settings.max_calls)
    app[SERVICES] = services
    app[DRAIN] = Drain(services)
    watch = app[DIALPLAN_WATCH] = DialplanWatch(services)
    app.on_startup.append(watch.start)
    app.on_cleanup.append(watch.stop)
    app.on_startup.append(_open_http)
    app.on_cleanup.append(_close_http)
    app.cleanup_ctx.append(_heap_trim)
    for name in CARRIER_MODULES:
        importlib.import_module(f"voicebot.telephony.{name}").add_routes(app, services)
        rest.capabilities_of(name, settings)     # a wrong call_control section stops the server here
    rest.add_routes(app, settings)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if metrics.ENABLED:
        app.router.add_get("/metrics", _metrics)
    api.setup(app, services)
    console.setup(app, services)
    if DEBUG_RUNTIME:
        app[MEMORY_BASELINE] = {}
        app.router.add_get("/debug/runtime", _debug_runtime)
        app.router.add_get("/debug/memory", _debug_memory)
    if latency.ENABLED:
        app.router.add_get("/debug/latency", _debug_latency)
        app.on_startup.append(_start_latency_probe)
        app.on_cleanup.append(_stop_latency_probe)
    app.on_shutdown.append(_end_all_calls)
    app.on_shutdown.append(lambda _app: _close_live_feed(services))
    campaign_callbacks.add_routes(app, services)
    campaign_service.setup(app, services)      # after _end_all_calls: the calls' last results are flushed after it
    return app


def check_startup(settings: Settings, dialplan: Dialplan) -> list[UnknownModel]:
    """Every check ``voicebot serve`` makes before it listens, run by ``serve`` and ``voicebot check`` alike:
    what the environment must hold (check_serving, the stream secret) and every carrier's section, read by
    building the application as serve does (not started). Raises ConfigError for the first problem; returns
    the model names StepFun does not document, unless stepfun.strict_models makes the first one an error."""
    from .telephony.twilio_auth import STREAM_SECRET_ENV, stream_token_secret

    check_serving(settings)
    try:
        stream_token_secret()   # made once, before any worker forks: every worker signs and checks with it
    except ValueError as exc:
        raise ConfigError("environment", STREAM_SECRET_ENV, str(exc)) from None
    create_app(settings, dialplan)
    return check_models(settings, dialplan)


def check_models(settings: Settings, dialplan: Dialplan) -> list[UnknownModel]:
    """The model names StepFun does not document, or a ConfigError for the first with stepfun.strict_models."""
    unknown = dialplan.unknown_models
    if unknown and settings.stepfun.strict_models:
        raise ConfigError(unknown[0].source, unknown[0].field,
                          unknown[0].problem + " (stepfun.strict_models is on)")
    return unknown


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


async def run_until_stopped(runners: list[web.AppRunner], *,
                            stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Serve until a stop signal has drained the calls, then clean up (records, transcripts and recordings are
    flushed, the database closed). SIGHUP reloads the dialplans. ``runners``: start_server's, the voice server's
    first."""
    app = runners[0].app
    drain, watch = app[DRAIN], app[DIALPLAN_WATCH]
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, drain.stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, watch.reload_soon, "SIGHUP")
    try:
        await drain.finished.wait()
        log.info("voicebot_stopping")
        for runner in runners:
            await runner.cleanup()
    finally:
        for sig in (*stop_signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("voicebot_stopped")
