"""The StepFun emulator's aiohttp application: shared state, fault injection, auth and trace ids.

Endpoint modules are listed in :data:`ROUTE_MODULES`; each exposes
``add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None`` and is called once per
prefix in :data:`PREFIXES` (``/step_plan/v1`` like the real Step Plan API, and ``/v1``). Adding an
endpoint is one line in that tuple. ``GET/POST /debug/faults`` reads and sets :class:`Faults` from outside the
process (same bearer check as the API).

Every HTTP response (WebSocket upgrades and errors included) carries an ``X-Trace-Id`` header. Error
bodies follow the documented shape ``{"error": {"message": ..., "type": ...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import importlib
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from ..stepfun import models

if TYPE_CHECKING:
    from .realtime import RealtimeSession

log = structlog.get_logger("voicebot.emulator")

PREFIXES: tuple[str, ...] = ("/step_plan/v1", "/v1")
ROUTE_MODULES: tuple[str, ...] = (
    "voicebot.emulator.realtime",
    "voicebot.emulator.asr",
    "voicebot.emulator.chat",
    "voicebot.emulator.tts",
    "voicebot.emulator.voices",
)
REALTIME_MODELS: tuple[str, ...] = models.REALTIME_MODELS   # as StepFun documents them
SESSION_LIMIT_S = 30 * 60.0

TRACE_ID = web.RequestKey("trace_id", str) if hasattr(web, "RequestKey") else "voicebot.trace_id"


MID_RESPONSE_FAULTS: tuple[str, ...] = ("reset", "stall", "garbage", "bad_frame")
MID_SPEECH_FAULTS: tuple[str, ...] = ("reset", "stall", "garbage")     # TTS, over SSE and WebSocket


@dataclass
class Faults:
    """Fault injection; tests may change any field at any time (read when the fault can apply)."""

    refuse_realtime_status: int | None = None   # answer the realtime upgrade with this HTTP status
    drop_realtime_after_s: float | None = None  # abort the realtime socket this long after connect
    # This long after connect the realtime server hangs: it sends nothing more and reads nothing (pings
    # included), and the socket stays open: the client's writes back up in its socket, as with a hung server.
    stall_realtime_after_s: float | None = None
    error_event_after_s: float | None = None    # send one `error` (server_error) this long after connect
    response_delay_s: float = 0.0               # wait this long before each response's first delta
    # The next response to stream audio (any session) fails this way after `realtime_fault_after_deltas` of
    # its audio deltas, once (the field is cleared when taken): "reset" (TCP reset), "stall" (the server
    # says and reads nothing more, the socket stays open), "garbage" (malformed messages, then the response
    # goes on) or "bad_frame" (an invalid WebSocket frame, then the server stalls). See realtime.py.
    realtime_fault_once: str | None = None
    realtime_fault_after_deltas: int = 3
    # HTTP endpoints (asr, chat, tts, voices). A "*_once" field applies to the next request, then clears.
    http_delay_s: float = 0.0                   # wait this long before answering any of them
    asr_fail_once: int | None = None            # answer the next ASR request with this HTTP status
    asr_stream_error_once: str | None = None    # next ASR stream: one delta, then an `error` event with this message
    chat_fail_once: int | None = None           # answer the next chat request with this HTTP status
    chat_finish_reason_once: str | None = None  # next chat reply stops after two pieces with this finish_reason
    chat_token_delay_s: float = 0.0             # pause before each streamed chat piece
    tts_http_fail_once: int | None = None       # answer the next /audio/speech with this HTTP status
    tts_ws_fail_once: int | None = None         # refuse the next TTS WebSocket upgrade with this HTTP status
    tts_ws_error_once: int | None = None        # next TTS WebSocket job: tts.response.error with this code
    tts_chunk_delay_s: float = 0.0              # pause before each TTS audio chunk (WebSocket and SSE)
    # The next TTS synthesis (SSE or WebSocket) fails this way after `tts_fault_after_chunks` of its audio
    # chunks, once (cleared when taken): "reset" (TCP reset), "stall" (nothing more is sent; the connection
    # stays open until the client leaves) or "garbage" (malformed events, then the audio goes on). See tts.py.
    tts_fault_once: str | None = None
    tts_fault_after_chunks: int = 2


class Emulator:
    """State of one emulator instance, shared by every endpoint module."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        faults: Faults | None = None,
        api_key: str | None = None,
        realtime_models: Iterable[str] = REALTIME_MODELS,
        session_limit_s: float = SESSION_LIMIT_S,
        retain_sessions: int | None = None,
        record: bool = True,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.speed = speed                        # audio pacing: 1.0 = real time; <= 0 or inf = no pacing
        self.api_key = api_key                    # None: any non-empty bearer key is accepted
        self.realtime_models = set(realtime_models)
        self.session_limit_s = session_limit_s    # realtime sessions get an error and close after this
        self.retain_sessions = retain_sessions    # keep at most this many closed sessions (None: all)
        # False (load tests): sessions keep counters only, not every event exchanged, and only the recent
        # input audio, so memory stays flat however long and many the calls are.
        self.record = record
        self.sessions: list[RealtimeSession] = []
        self.host: str | None = None
        self.port: int | None = None
        self._added = 0
        self._handed_out = 0
        self._changed: asyncio.Event | None = None
        from .voices import VoiceRegistry  # here: voices.py imports this module
        self.voice_registry = VoiceRegistry()     # uploaded files and cloned voices (voices.py)
        self.http_log: list = []                  # an HttpRecord per ASR/chat/TTS/voices request (http_common.py)
        self.asr_requests = 0                     # ASR requests whose audio was accepted, and its total length
        self.asr_audio_ms = 0

    # -- addresses (set by start_emulator) --
    @property
    def base_url(self) -> str:
        """HTTP base URL of the Step Plan prefix, e.g. ``http://127.0.0.1:9000/step_plan/v1``."""
        return f"http://{self._hostport()}{PREFIXES[0]}"

    @property
    def ws_url(self) -> str:
        """WebSocket base URL of the Step Plan prefix, e.g. ``ws://127.0.0.1:9000/step_plan/v1``."""
        return f"ws://{self._hostport()}{PREFIXES[0]}"

    def _hostport(self) -> str:
        if self.port is None:
            raise RuntimeError("emulator is not listening (use start_emulator)")
        host = self.host or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    # -- sessions --
    def add_session(self, session: RealtimeSession) -> None:
        session.ordinal = self._added
        self.sessions.append(session)
        self._added += 1
        if self.retain_sessions is not None:
            closed = [s for s in self.sessions if s.closed]
            for old in closed[: max(0, len(self.sessions) - self.retain_sessions)]:
                self.sessions.remove(old)
        self.notify()

    def notify(self) -> None:
        """Wake everything waiting in :meth:`next_session`."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def next_session(self, timeout: float = 5.0) -> RealtimeSession:
        """The next realtime session not yet returned by this method (waits for it to connect)."""
        async def wait() -> RealtimeSession:
            while True:
                for session in self.sessions:
                    if session.ordinal >= self._handed_out:
                        self._handed_out = session.ordinal + 1
                        return session
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()
        return await asyncio.wait_for(wait(), timeout)


EMULATOR = web.AppKey("emulator", Emulator)


# ---------------------------------------------------------------------------------------------- HTTP helpers

def new_trace_id() -> str:
    return uuid.uuid4().hex


def error_type_for_status(status: int) -> str:
    """The error ``type`` the emulator uses for an HTTP status."""
    if status == 401 or status == 403:
        return "authentication_error"
    if status == 402:
        return "insufficient_balance"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    return "request_params_invalid"


def error_response(status: int, message: str, type: str | None = None) -> web.Response:
    """A documented StepFun error body: ``{"error": {"message": ..., "type": ...}}``."""
    body = {"error": {"message": message, "type": type or error_type_for_status(status)}}
    return web.json_response(body, status=status)


def check_bearer(request: web.Request) -> web.Response | None:
    """``None`` if ``Authorization: Bearer <key>`` is acceptable, else the 401 response to return.

    Any non-empty key passes unless the emulator was given ``api_key``. The key is never logged.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    emulator = request.app.get(EMULATOR)
    expected = emulator.api_key if emulator is not None else None
    if scheme.lower() != "bearer" or not key:
        reason = "missing" if not header else "malformed"
    elif expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
        reason = "invalid"
    else:
        return None
    log.warning("emulator_auth_rejected", path=request.path, reason=reason, trace_id=request.get(TRACE_ID))
    message = ("Incorrect API key provided" if reason == "invalid"
               else "Missing bearer authentication in header 'Authorization'")
    return error_response(401, message, "authentication_error")


@web.middleware
async def _trace_and_errors(request: web.Request, handler):
    request[TRACE_ID] = new_trace_id()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return error_response(exc.status, exc.reason)


async def _add_trace_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Trace-Id", request.get(TRACE_ID) or new_trace_id())


_FAULT_TYPES = {"float": (int, float), "int": (int,), "str": (str,)}


def set_faults(faults: Faults, changes: dict) -> None:
    """Apply ``{field: value}`` to ``faults``, all or nothing; a ValueError names the first bad field."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(Faults)}
    for name, value in changes.items():
        if name not in kinds:
            raise ValueError(f"unknown fault '{name}'; known: {', '.join(sorted(kinds))}")
        annotation = kinds[name]
        if value is None:
            if "None" not in annotation:
                raise ValueError(f"fault '{name}' cannot be null")
            continue
        wanted = _FAULT_TYPES[annotation.split("|")[0].strip()]
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ValueError(f"fault '{name}' is {annotation}, got {type(value).__name__}")
    for name, value in changes.items():
        setattr(faults, name, value)


async def _faults(request: web.Request) -> web.Response:
    """``GET /debug/faults``: the fault fields now; ``POST`` a JSON object of fields to change them (a soak
    test driving an emulator in another process, e.g. the one ``voicebot serve`` embeds)."""
    denied = check_bearer(request)
    if denied is not None:
        return denied
    emulator = request.app[EMULATOR]
    if request.method == "POST":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault fields")
            set_faults(emulator.faults, changes)
        except ValueError as exc:        # json.JSONDecodeError is one
            return error_response(400, str(exc), "request_params_invalid")
        log.info("emulator_faults_set", **changes)
    return web.json_response(dataclasses.asdict(emulator.faults))


def create_app(emulator: Emulator | None = None) -> web.Application:
    """The emulator's aiohttp application (a fresh :class:`Emulator` unless one is given)."""
    emulator = emulator if emulator is not None else Emulator()
    app = web.Application(middlewares=[_trace_and_errors], client_max_size=64 * 1024 * 1024)
    app[EMULATOR] = emulator
    app.on_response_prepare.append(_add_trace_header)
    app.router.add_route("GET", "/debug/faults", _faults)
    app.router.add_route("POST", "/debug/faults", _faults)
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        for prefix in PREFIXES:
            module.add_routes(app, emulator, prefix)
    return app


# ---------------------------------------------------------------------------------------------- running

SHUTDOWN_TIMEOUT_S = 2.0   # what open connections get to finish when the emulator stops

async def start_emulator(host: str = "127.0.0.1", port: int = 0,
                         emulator: Emulator | None = None) -> tuple[web.AppRunner, Emulator]:
    """Serve the emulator in the running loop; ``emulator.host``/``.port`` get the bound address.

    Stop it with ``await runner.cleanup()``.
    """
    emulator = emulator if emulator is not None else Emulator()
    # Stopping does not wait on the clients: a realtime session stays open as long as its client keeps it (aiohttp
    # would wait 60 s for it, longer than any process supervisor gives a Ctrl-C).
    runner = web.AppRunner(create_app(emulator), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    emulator.host, emulator.port = host, int(bound[1])
    log.info("emulator_listening", host=host, port=emulator.port, base_url=emulator.base_url)
    return runner, emulator


async def _serve_forever(host: str, port: int, emulator: Emulator | None) -> None:
    """Serve until SIGINT or SIGTERM. The handlers are our own: a process started with SIGINT ignored (what a
    shell does to background jobs, and so what CI runners and supervisors may pass on) would otherwise never
    stop on Ctrl-C, and SIGTERM (docker stop, systemd) would kill it without closing its sessions."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner, _ = await start_emulator(host, port, emulator)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_emulator(host: str = "127.0.0.1", port: int = 9000, *, emulator: Emulator | None = None) -> None:
    """Blocking: serve the emulator until interrupted (Ctrl-C)."""
    started = time.monotonic()
    try:
        asyncio.run(_serve_forever(host, port, emulator))
    except KeyboardInterrupt:
        pass
    log.info("emulator_stopped", uptime_s=round(time.monotonic() - started, 1))


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``voicebot emulator`` (may extend a sub-command parser)."""
    parser = parser or argparse.ArgumentParser(prog="voicebot emulator",
                                               description="Offline StepFun-compatible API emulator")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind, 0 = any (default 9000)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="audio pacing relative to real time (default 1.0)")
    parser.add_argument("--api-key", default=None,
                        help="accept only this bearer key (default: any non-empty key)")
    parser.add_argument("--session-limit-s", type=float, default=SESSION_LIMIT_S,
                        help="realtime session length limit in seconds (default 1800)")
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="keep counters only, not every realtime event (flat memory for load tests)")
    return parser


def main_argv(argv: list[str] | None = None) -> int:
    """``voicebot emulator [--host H] [--port P] [--speed X] [--api-key K]``; returns an exit code."""
    args = build_arg_parser().parse_args(argv)
    emulator = Emulator(speed=args.speed, api_key=args.api_key, session_limit_s=args.session_limit_s,
                        record=args.record)
    run_emulator(args.host, args.port, emulator=emulator)
    return 0
