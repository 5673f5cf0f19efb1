"""Soak benchmark: a real server under concurrent calls for a long time, with faults injected all along.

Run (from the repository root; loopback only):

    .venv/bin/python benchmarks/soak.py --minutes 30            # 50 calls, the real soak
    .venv/bin/python benchmarks/soak.py --quick                 # ~30 s of it, for a smoke test

What it starts and does:

* ``voicebot serve`` in its own process, with the embedded StepFun emulator (no key, no base URL: the
  emulator runs inside the server process, so what it holds is counted too), JSON logs at info, transcripts
  written, ``VOICEBOT_DEBUG_RUNTIME=1`` so ``GET /debug/runtime`` says what the process holds (asyncio tasks by
  coroutine, descriptors, sockets, threads, RSS, the calls in progress with their age) and ``VOICEBOT_LATENCY=1``
  (the event loop's lag and the collector's pauses: a stalled server shows there). Three personas: engine
  auto (realtime, falling over to the chain after 2 s without a due reply), and the chain with TTS over HTTP and
  over the WebSocket (a synthesis silent for 2 s is given up).
* ``--calls`` (50) simulated Twilio callers in this process (the tests' caller: real-time 20 ms μ-law frames of
  the speech fixtures, turns after the bot's answer and a share of barge-ins over it), each call lasting a random
  ``--min-call-s``..``--max-call-s`` (30..90 s) and replaced by a new one when it ends, until the end.
* A fault every ``--fault-every`` seconds (4), round-robin over :data:`FAULT_KINDS`: StepFun realtime reset,
  stall and garbage mid-response, TTS slow (0.3 s before each 200 ms chunk for a few seconds), reset, stall and
  garbage mid-sentence (set through the emulator's ``POST /debug/faults``), a carrier connection dropped while
  the bot speaks (TCP reset, mid-sentence), and the transcripts' disk full for a few seconds (see
  :class:`TranscriptDisk`). One-shot faults are counted as taken once the emulator has used them.
* Every ``--sample-every`` seconds (10): the server's RSS, tasks, descriptors, sockets and calls in progress.

Before the calls start (after one warm-up call per persona) and after the last one ended, the server at rest is
measured: no call for 32 s (its idle keep-alive connections to the emulator are closed by then), then 10 samples,
garbage collected, half a second apart, merged (for each coroutine the most tasks seen, every descriptor seen), so
that a task that comes and goes by itself counts the same before and after. The report gives calls completed, faults by kind, RSS at start and end and its
slope (MB/hour, least squares over the second half of the run), tasks/fds/sockets at rest before and after
(what was left behind, by coroutine), and calls stuck: a server call older than the longest call plus 30 s, a
caller not finished 30 s after its time, or a server call left 60 s after the last caller hung up.

``--tracemalloc`` starts the server with ``PYTHONTRACEMALLOC=5`` and adds the Python allocation sites that grew
most over the second half (``GET /debug/memory``) to the report: where to look if the slope is not flat.

Every process started here is ended by its pid; the report is printed and written to ``<workdir>/report.json``
(and ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicebot.loadgen import FIXTURES, caller_script  # noqa: E402
from voicebot.loadtest import Child, free_port, wait_http  # noqa: E402

FAULT_KINDS = ("stepfun_reset", "stepfun_stall", "stepfun_garbage", "tts_slow", "tts_reset", "tts_stall",
               "tts_garbage", "carrier_drop", "disk_full")
# One-shot emulator faults: (field, value); each is taken by the next response / synthesis that streams audio.
ONE_SHOT = {"stepfun_reset": ("realtime_fault_once", "reset"), "stepfun_stall": ("realtime_fault_once", "stall"),
            "stepfun_garbage": ("realtime_fault_once", "garbage"), "tts_reset": ("tts_fault_once", "reset"),
            "tts_stall": ("tts_fault_once", "stall"), "tts_garbage": ("tts_fault_once", "garbage")}
NUMBERS = {"auto": "+15550300001", "chain-http": "+15550300002", "chain-ws": "+15550300003"}
PERSONA_WEIGHTS = {"auto": 0.6, "chain-http": 0.2, "chain-ws": 0.2}
STUCK_SLACK_S = 30.0
# aiohttp closes a kept-alive connection idle for 15 s at its next cleanup, which runs every 15 s: the server's
# idle connections to the emulator are gone 30 s after its last call at the latest.
REST_QUIET_S = 32.0
REST_WINDOW = 10
EMULATOR_KEY = "soak-emulator-key"
LOG_EVENTS = ("transcript_write_failed", "engine_switch", "chain_tts_failed", "chain_tts_ws_failed",
              "stepfun.tts_bad_event", "stepfun.tts_ws_bad_event", "stepfun_bad_event", "chain_turn_crashed",
              "engine_failed", "engine_unavailable", "call_summary")

PERSONAS = """\
personas:
  - name: soak-auto
    numbers: ["{auto}"]
    default: true
    engine: auto
    language: en
    voice: lively-girl
    instructions: You are the soak-test assistant. Keep answers short.
    greeting: Hello, thanks for calling the soak test line. How can I help you today?
    realtime:
      turn_detection: {{silence_duration_ms: 500, prefix_padding_ms: 300, energy_awakeness_threshold: 2500}}
    realtime_response_timeout_s: 2.0
    barge_in: {{enabled: true, min_speech_ms: 200}}
    chain: {{silence_ms: 500, tts_stall_s: 2.0}}
    max_call_seconds: 900
  - name: soak-chain-http
    numbers: ["{chain-http}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are the soak-test assistant on the chain. Keep answers short.
    greeting: Hello, this is the soak test chain line. How can I help?
    barge_in: {{enabled: true, min_speech_ms: 200}}
    chain: {{silence_ms: 500, tts_stall_s: 2.0}}
    max_call_seconds: 900
  - name: soak-chain-ws
    numbers: ["{chain-ws}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are the soak-test assistant on the streaming chain. Keep answers short.
    greeting: Hello, this is the soak test streaming line. How can I help?
    barge_in: {{enabled: true, min_speech_ms: 200}}
    chain: {{silence_ms: 500, tts_transport: ws, tts_stall_s: 2.0}}
    max_call_seconds: 900
"""

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
stepfun: {{connect_timeout_s: 10, failover_connect_timeout_s: 5}}
twilio: {{validate_signatures: true}}
dialplans: dialplans
transcripts_dir: "{transcripts}"
recordings_dir: recordings
database: {{url: "sqlite:///voicebot.db"}}
logging: {{format: json, level: info}}
"""


@dataclass
class Options:
    minutes: float = 30.0
    calls: int = 50
    min_call_s: float = 30.0
    max_call_s: float = 90.0
    fault_every_s: float = 4.0
    sample_every_s: float = 10.0
    window_s: float = 4.0            # how long tts_slow and disk_full last
    ramp_s: float = 10.0             # the first calls start over this long
    barge_share: float = 0.3
    disk: str = "auto"               # auto | tmpfs | symlink (see TranscriptDisk)
    tracemalloc: bool = False
    server_env: dict = field(default_factory=dict)    # extra environment of the server (allocator settings ...)
    trim_every_s: float = 0.0        # > 0: ask the server to malloc_trim this often (an experiment, see --trim-every)
    seed: int = 1
    workdir: str | None = None
    out: str | None = None
    quiet: bool = False

    @classmethod
    def quick(cls, **overrides) -> "Options":
        """About 30 s of soak: few short calls, faults and samples every 2 s."""
        values = dict(minutes=0.5, calls=8, min_call_s=8.0, max_call_s=16.0, fault_every_s=2.0, sample_every_s=2.0,
                      window_s=1.5, ramp_s=2.0)
        values.update(overrides)
        return cls(**values)


# ------------------------------------------------------------------------------------------------ the disk

class TranscriptDisk:
    """Where the server writes transcripts, and a way to make that disk fail while calls write to it.

    ``tmpfs`` (needs root): a small tmpfs mounted for the run; ``fill()`` takes all its free space with a
    ballast file, so the calls' next transcript lines fail with ENOSPC mid-call, a real full disk; ``free()``
    deletes the ballast. ``symlink`` (anyone): the transcripts folder is a symlink, pointed at ``/dev/full``
    while full, so the transcripts of calls starting then cannot be created (ENOTDIR); calls already writing are
    not touched. ``auto`` tries tmpfs, then symlink."""

    def __init__(self, root: Path, mode: str = "auto", size_mb: int = 64) -> None:
        self.root = root
        self.mode = mode
        self._mounted: Path | None = None
        self._ballast: Path | None = None
        if mode in ("auto", "tmpfs") and self._mount(size_mb):
            self.mode = "tmpfs"
            self.path = self._mounted / "transcripts"
            self.path.mkdir()
            return
        if mode == "tmpfs":
            raise SystemExit("--disk tmpfs: could not mount a tmpfs (root needed); use --disk symlink")
        self.mode = "symlink"
        self._real = root / "transcripts-real"
        self._real.mkdir()
        self.path = root / "transcripts"
        self._point(self._real)

    def _mount(self, size_mb: int) -> bool:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
            return False
        target = self.root / "disk"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(target)],
                              capture_output=True)
        if done.returncode != 0:
            target.rmdir()
            return False
        self._mounted = target
        return True

    def _point(self, target: Path) -> None:
        link = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(target)
        os.replace(link, self.path)        # atomic: the server sees the old target or the new one

    def fill(self) -> None:
        if self.mode == "symlink":
            self._point(Path("/dev/full"))
            return
        assert self._mounted is not None
        self._ballast = self._mounted / "ballast"
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            stat = os.statvfs(self._mounted)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)
            for size in (65536, 1):                # whatever fallocate left, up to the last byte
                block = bytes(size)
                with contextlib.suppress(OSError):
                    while os.write(fd, block):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        if self.mode == "symlink":
            self._point(self._real)
        elif self._ballast is not None:
            with contextlib.suppress(FileNotFoundError):
                self._ballast.unlink()

    def prune(self, older_than_s: float) -> None:
        """Delete transcripts not written for ``older_than_s`` (their calls are over): the tmpfs stays small."""
        folder = self._real if self.mode == "symlink" else self.path
        cutoff = time.time() - older_than_s
        for path in folder.glob("*/*.jsonl"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def close(self) -> None:
        self.free()
        if self._mounted is not None:
            subprocess.run(["umount", str(self._mounted)], capture_output=True)
            self._mounted = None


# ------------------------------------------------------------------------------------------------ the server

def write_config(root: Path, port: int, transcripts: Path) -> Path:
    (root / "dialplans").mkdir(parents=True, exist_ok=True)
    (root / "dialplans" / "soak.yaml").write_text(PERSONAS.format(**NUMBERS))
    path = root / "config.yaml"
    path.write_text(CONFIG.format(port=port, transcripts=transcripts))
    return path


class Server:
    """The server process and the few requests the soak makes to it and to its embedded emulator."""

    def __init__(self, root: Path, port: int, transcripts: Path, auth_token: str, *, tracemalloc: bool,
                 extra_env: dict | None = None) -> None:
        config = write_config(root, port, transcripts)
        env = {k: v for k, v in os.environ.items()
               if k not in ("STEP_API_KEY", "STEPFUN_BASE_URL", "VOICEBOT_CONFIG", "VOICEBOT_DATABASE_URL")}
        # VOICEBOT_LATENCY: the event loop's lag and the collector's pauses, to tell a stalled server.
        env.update({"TWILIO_AUTH_TOKEN": auth_token, "VOICEBOT_DEBUG_RUNTIME": "1", "VOICEBOT_LATENCY": "1"})
        if tracemalloc:
            env["PYTHONTRACEMALLOC"] = "5"
        env.update(extra_env or {})
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = root / "server.log"
        self.child = Child("server", [sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config)],
                           env=env, log_path=self.log_path)
        self.emulator_url: str | None = None
        self.unanswered = 0          # /debug/runtime requests not answered within 10 s
        self._http = None

    async def start(self) -> None:
        import aiohttp

        await wait_http(f"{self.url}/healthz", self.child, timeout=60.0)
        # A new connection per request: a kept-alive one would be a socket and a task of the server's own.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                           timeout=aiohttp.ClientTimeout(total=30))
        runtime = await self.runtime()
        if not runtime.get("stepfun_embedded"):
            raise RuntimeError(f"the server is not on its embedded emulator: {runtime.get('stepfun_base_url')}")
        self.emulator_url = runtime["stepfun_base_url"].rsplit("/step_plan/v1", 1)[0]

    async def runtime(self, gc: bool = False, trim: bool = False) -> dict:
        """``/debug/runtime``; a request not answered within 10 s is counted in ``unanswered`` and tried again
        (three times in all): a server that stops answering is a finding of the soak, not the end of it."""
        import aiohttp

        params = {"gc": "1", "detail": "1"} if gc else {}
        if trim:
            params.update(gc="1", trim="1")
        for attempt in range(3):
            try:
                async with self._http.get(f"{self.url}/debug/runtime", params=params,
                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    resp.raise_for_status()
                    return await resp.json()
            except asyncio.TimeoutError:
                self.unanswered += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def latency(self, reset: bool = False) -> dict:
        async with self._http.get(f"{self.url}/debug/latency", params={"reset": "1"} if reset else None) as resp:
            return await resp.json()

    async def memory(self) -> dict:
        async with self._http.get(f"{self.url}/debug/memory", params={"top": "15"}) as resp:
            return await resp.json()

    async def metrics_text(self) -> str:
        async with self._http.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def faults(self, changes: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {EMULATOR_KEY}"}
        if changes is None:
            request = self._http.get(f"{self.emulator_url}/debug/faults", headers=headers)
        else:
            request = self._http.post(f"{self.emulator_url}/debug/faults", json=changes, headers=headers)
        async with request as resp:
            resp.raise_for_status()
            return await resp.json()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self.child.stop(timeout=15.0)


# ------------------------------------------------------------------------------------------------ the soak

@dataclass
class Tally:
    started: int = 0
    completed: int = 0               # the caller hung up when its time was up (or its script ended)
    dropped: int = 0                 # a carrier_drop fault ended it
    ended_by_server: int = 0
    setup_failed: int = 0
    stuck_callers: int = 0           # not finished STUCK_SLACK_S after its time
    protocol_errors: int = 0
    turns: int = 0
    barge_ins: int = 0
    errors: Counter = field(default_factory=Counter)


class Soak:
    def __init__(self, opts: Options, server: Server, disk: TranscriptDisk, auth_token: str, log) -> None:
        self.opts = opts
        self.server = server
        self.disk = disk
        self.auth_token = auth_token
        self.log = log
        self.rng = np.random.default_rng(opts.seed)
        from voicebot.audio.wav import read_wav_8k
        self.fixtures = {name: read_wav_8k(FIXTURES / f"{name}.wav")
                         for name in ("caller_en", "caller_zh", "caller_interrupt")}
        self.tally = Tally()
        self.live: set = set()                      # SimulatedCall objects in progress
        self.injected: Counter = Counter()
        self.taken: Counter = Counter()
        self.not_taken: Counter = Counter()
        self.not_applied: Counter = Counter()       # no call to apply it to at the time (carrier_drop)
        self.pending: dict[str, str] = {}           # one-shot emulator field -> the kind armed on it
        self.samples: list[dict] = []
        self.stuck_server_calls: set[str] = set()
        self.trims: list[tuple[int, float]] = []    # (bytes returned, ms) of each malloc_trim asked for
        self.call_seed = opts.seed * 1_000_003
        self._http = None

    # -- calls

    def _persona(self) -> str:
        kinds = list(PERSONA_WEIGHTS)
        return kinds[int(self.rng.choice(len(kinds), p=list(PERSONA_WEIGHTS.values())))]

    async def one_call(self, duration_s: float, persona: str) -> None:
        from voicebot.simulator.caller import CallSetupError, SimulatedCall
        from voicebot.simulator.twilio import TwilioProtocol

        self.call_seed += 1
        rng = np.random.default_rng(self.call_seed)
        protocol = TwilioProtocol(self.server.url, to=NUMBERS[persona], from_="+15005550006",
                                  auth_token=self.auth_token)
        call = SimulatedCall(protocol, caller_script(rng, self.fixtures, self.opts.barge_share),
                             max_duration_s=duration_s, seed=self.call_seed, record=False,
                             http_session=self._http, connect_timeout_s=30.0)
        self.tally.started += 1
        self.live.add(call)
        try:
            result = await asyncio.wait_for(call.run(), duration_s + 30.0 + STUCK_SLACK_S)
        except asyncio.TimeoutError:
            self.tally.stuck_callers += 1
            self.log(f"stuck caller: {protocol.call_id} ({persona}, {duration_s:.0f} s)")
            return
        except CallSetupError as exc:
            self.tally.setup_failed += 1
            self.tally.errors[str(exc)[:120]] += 1
            return
        except Exception as exc:   # noqa: BLE001 - a broken call is a finding, not the end of the soak
            self.tally.setup_failed += 1
            self.tally.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            return
        finally:
            self.live.discard(call)
        self.tally.protocol_errors += len(result.protocol_errors)
        self.tally.turns += len(result.utterances)
        self.tally.barge_ins += sum(1 for u in result.utterances if u.barge)
        if result.end_reason in ("max_duration", "hangup"):
            self.tally.completed += 1
        elif result.end_reason == "dropped":
            self.tally.dropped += 1
        else:
            self.tally.ended_by_server += 1
            self.tally.errors[f"ended: {result.end_reason} {result.close_code} {result.close_reason}"[:120]] += 1

    async def call_slot(self, start_at: float, end_at: float) -> None:
        """One of the ``calls`` concurrent calls: a call, then the next, until ``end_at``."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        while True:
            left = end_at - loop.time()
            if left < 5.0:
                return
            duration = min(float(self.rng.uniform(self.opts.min_call_s, self.opts.max_call_s)), left)
            await self.one_call(duration, self._persona())

    # -- faults

    async def inject(self, kind: str) -> None:
        if kind in ONE_SHOT:
            name, value = ONE_SHOT[kind]
            previous = self.pending.pop(name, None)
            if previous is not None:                 # still armed: no response took it
                self.not_taken[previous] += 1
            changes = {name: value}
            changes["realtime_fault_after_deltas" if name == "realtime_fault_once" else "tts_fault_after_chunks"] = \
                int(self.rng.integers(2, 6))
            await self.server.faults(changes)
            self.pending[name] = kind
        elif kind == "tts_slow":
            await self.server.faults({"tts_chunk_delay_s": 0.3})
            await asyncio.sleep(self.opts.window_s)
            await self.server.faults({"tts_chunk_delay_s": 0.0})
        elif kind == "carrier_drop":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(3.0, self.opts.fault_every_s)
            while True:
                speaking = [c for c in self.live if c.bot_speaking]
                if speaking:
                    speaking[int(self.rng.integers(len(speaking)))].drop()
                    break
                if loop.time() > deadline:
                    self.not_applied[kind] += 1
                    return
                await asyncio.sleep(0.05)
        elif kind == "disk_full":
            try:
                await asyncio.to_thread(self.disk.fill)
                await asyncio.sleep(self.opts.window_s)
            finally:
                self.disk.free()
        self.injected[kind] += 1

    async def check_taken(self) -> None:
        if not self.pending:
            return
        now = await self.server.faults()
        for name, kind in list(self.pending.items()):
            if now.get(name) is None:
                self.taken[kind] += 1
                del self.pending[name]

    async def fault_loop(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while loop.time() + self.opts.fault_every_s < until:
            await asyncio.sleep(self.opts.fault_every_s)
            await self.check_taken()
            kind = FAULT_KINDS[n % len(FAULT_KINDS)]
            n += 1
            try:
                await self.inject(kind)
            except Exception as exc:    # noqa: BLE001 - reported, the soak goes on
                self.tally.errors[f"inject {kind}: {type(exc).__name__}: {exc}"[:120]] += 1

    # -- sampling

    async def sample(self, t0: float) -> dict:
        runtime = await self.server.runtime()
        limit = self.opts.max_call_s + STUCK_SLACK_S
        for call in runtime["calls"]:
            if call["age_s"] > limit:
                self.stuck_server_calls.add(call["call_id"])
        row = {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(runtime["rss_bytes"] / 2**20, 2),
               "tasks": runtime["tasks"], "fds": runtime["fds"], "sockets": runtime["sockets"],
               "threads": runtime["threads"], "calls": len(runtime["calls"]), "callers": len(self.live)}
        self.samples.append(row)
        return row

    async def sample_loop(self, t0: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        last_trim = loop.time()
        while loop.time() < until:
            if self.opts.trim_every_s > 0 and loop.time() - last_trim >= self.opts.trim_every_s:
                last_trim = loop.time()
                trimmed = await self.server.runtime(trim=True)
                self.trims.append((trimmed["rss_before_trim_bytes"] - trimmed["rss_bytes"], trimmed["trim_ms"]))
            row = await self.sample(t0)
            if not self.opts.quiet:
                self.log(f"t={row['t_s']:7.1f}s  calls={row['calls']:3d}  rss={row['rss_mb']:7.1f} MB  "
                         f"tasks={row['tasks']:4d}  fds={row['fds']:4d}  sockets={row['sockets']:4d}  "
                         f"faults={sum(self.injected.values())}")
            await asyncio.to_thread(self.disk.prune, self.opts.max_call_s + 60.0)
            await asyncio.sleep(self.opts.sample_every_s)

    # -- at rest

    async def at_rest(self, timeout: float = 150.0) -> dict:
        """The server at rest: no call for ``REST_QUIET_S``, then ``REST_WINDOW`` samples (garbage collected)
        half a second apart, merged: for each coroutine the most tasks seen running it, every descriptor seen.
        A task that comes and goes on its own (a poll between two waits) is then counted the same way before
        and after; what a call left behind is in every sample."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = None
        while True:
            runtime = await self.server.runtime()
            now = loop.time()
            if runtime["calls"]:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if quiet_since is not None and now - quiet_since >= REST_QUIET_S:
                break
            if now > deadline:
                break
            await asyncio.sleep(1.0)
        window = []
        for _ in range(REST_WINDOW):
            window.append(await self.server.runtime(gc=True))
            await asyncio.sleep(0.5)
        merged = dict(window[-1])
        tasks: Counter = Counter()
        for sample in window:
            for name, count in sample["tasks_by_coroutine"].items():
                tasks[name] = max(tasks[name], count)
        fds: dict[str, str] = {}
        for sample in window:
            fds.update(sample["fd_list"])
        merged["tasks_by_coroutine"] = dict(tasks)
        merged["fd_list"] = fds
        merged["tasks"] = sum(tasks.values())
        merged["fds"] = len(fds)
        merged["sockets"] = len(rest_snapshot(merged).sockets)
        merged["calls_seen"] = max(len(sample["calls"]) for sample in window)
        merged["not_settled"] = quiet_since is None or merged["calls_seen"] > 0
        return merged

    async def warm_up(self) -> None:
        """One short call per persona (what the process creates once is then in the baseline)."""
        await asyncio.gather(*(self.one_call(6.0, persona) for persona in NUMBERS))

    async def run(self) -> dict:
        import aiohttp

        opts = self.opts
        loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self.warm_up()
        await self._http.close()
        warm = asdict(self.tally)
        self.tally = Tally()
        self.log("warm-up done; the server at rest ...")
        before = await self.at_rest()
        await self.server.latency(reset=True)      # the loop lag of the soak only, not of the samples at rest
        memory_start = None

        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        t0 = time.monotonic()
        start = loop.time() + 1.0
        end_at = start + opts.minutes * 60.0
        half = start + (end_at - start) / 2
        self.log(f"soak: {opts.calls} calls for {opts.minutes:g} min, a fault every {opts.fault_every_s:g} s")
        slots = [asyncio.create_task(self.call_slot(start + opts.ramp_s * i / max(1, opts.calls), end_at))
                 for i in range(opts.calls)]
        sampler = asyncio.create_task(self.sample_loop(t0, end_at))
        faults = asyncio.create_task(self.fault_loop(end_at))
        if opts.tracemalloc:
            await asyncio.sleep(max(0.0, half - loop.time()))
            memory_start = await self.server.memory()
        await faults
        await asyncio.gather(*slots)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await self.check_taken()
        for kind in self.pending.values():
            self.not_taken[kind] += 1
        self.pending.clear()
        memory_end = await self.server.memory() if opts.tracemalloc else None
        server_loop = {name: (await self.server.latency())["histograms"][name] for name in ("loop", "gc")}
        await self._http.close()
        phase_s = time.monotonic() - t0

        # Every caller has hung up: the server must let go of every call.
        drain_deadline = loop.time() + 60.0
        while True:
            runtime = await self.server.runtime()
            if not runtime["calls"] or loop.time() > drain_deadline:
                break
            await asyncio.sleep(0.5)
        left_over = [c["call_id"] for c in runtime["calls"]]
        self.log("calls over; the server at rest ...")
        after = await self.at_rest()
        # What of the RSS at rest is memory the C allocator keeps free rather than live data.
        trimmed = await self.server.runtime(trim=True)
        after["rss_trimmed_bytes"] = trimmed["rss_bytes"]
        after["trim_ms"] = trimmed.get("trim_ms")
        metrics = parse_metrics(await self.server.metrics_text())
        metrics["server_loop"] = server_loop
        return self.report(before, after, left_over, phase_s, warm, metrics, memory_start, memory_end)

    # -- the report

    def report(self, before: dict, after: dict, left_over: list[str], phase_s: float, warm: dict, metrics: dict,
               memory_start: dict | None, memory_end: dict | None) -> dict:
        opts = self.opts
        rows = self.samples
        second_half = [r for r in rows if r["t_s"] >= phase_s / 2]
        # "start": the first sample with (nearly) every call up, after the ramp.
        full = [r for r in rows if r["calls"] >= 0.9 * opts.calls] or rows
        leaked_tasks = Counter(after["tasks_by_coroutine"])
        leaked_tasks.subtract(Counter(before["tasks_by_coroutine"]))
        growth = rest_snapshot(after).growth_since(rest_snapshot(before))
        stuck = sorted(self.stuck_server_calls | set(left_over))
        report = {
            "options": asdict(opts),
            "disk_mode": self.disk.mode,
            "phase_s": round(phase_s, 1),
            "warm_up": {k: warm[k] for k in ("started", "completed")},
            "calls": {k: v for k, v in asdict(self.tally).items() if k != "errors"},
            "call_errors": dict(self.tally.errors.most_common(10)),
            "faults": {"injected": dict(self.injected), "taken": dict(self.taken), "not_taken": dict(self.not_taken),
                       "not_applied": dict(self.not_applied), "total": sum(self.injected.values())},
            "server_log": count_log_events(self.server.log_path),
            "metrics": metrics,
            "rss_mb": {
                "idle_before": round(before["rss_bytes"] / 2**20, 1),
                "start": full[0]["rss_mb"] if full else None,
                "peak": max(r["rss_mb"] for r in rows) if rows else None,
                "end": rows[-1]["rss_mb"] if rows else None,
                "idle_after": round(after["rss_bytes"] / 2**20, 1),
                "idle_after_malloc_trim": round(after["rss_trimmed_bytes"] / 2**20, 1),
                "malloc_trim_ms": after["trim_ms"],
                "periodic_trims": len(self.trims),
                "periodic_trim_mb_mean": round(float(np.mean([b for b, _ in self.trims])) / 2**20, 1) if self.trims else None,
                "periodic_trim_ms_max": max((ms for _, ms in self.trims), default=None),
                "slope_mb_per_hour": slope_per_hour(second_half),
                "slope_samples": len(second_half),
            },
            "at_rest_before": {k: before[k] for k in ("tasks", "fds", "sockets", "threads", "tasks_by_coroutine")},
            "at_rest_after": {k: after[k] for k in ("tasks", "fds", "sockets", "threads", "tasks_by_coroutine")},
            "settled": not before.get("not_settled") and not after.get("not_settled"),
            "leaked": {
                "tasks": after["tasks"] - before["tasks"],
                "fds": after["fds"] - before["fds"],
                "sockets": after["sockets"] - before["sockets"],
                "tasks_by_coroutine": {k: v for k, v in leaked_tasks.items() if v},
                "left_behind": growth["tasks"] + growth["fds"],
            },
            "server_unanswered_requests": self.server.unanswered,
            "stuck_calls": len(stuck) + self.tally.stuck_callers,
            "stuck_call_ids": stuck[:20],
            "max_calls_in_progress": max((r["calls"] for r in rows), default=0),
            "samples": rows,
        }
        if memory_end is not None:
            report["tracemalloc"] = {"start_traced_mb": round((memory_start or {}).get("traced_bytes", 0) / 2**20, 2),
                                     "end_traced_mb": round(memory_end.get("traced_bytes", 0) / 2**20, 2),
                                     "growth_over_second_half_bytes": memory_end.get("growth_bytes"),
                                     "top": memory_end.get("top", [])}
        return report


def rest_snapshot(runtime: dict):
    """A ``/debug/runtime?detail=1`` answer as a :class:`voicebot.resources.Snapshot` (to say what grew)."""
    from voicebot.resources import Snapshot

    return Snapshot(tasks=Counter(runtime["tasks_by_coroutine"]),
                    fds={int(fd): what for fd, what in runtime.get("fd_list", {}).items()})


def slope_per_hour(rows: list[dict]) -> float | None:
    """Least-squares slope of RSS (MB) over time, in MB per hour."""
    if len(rows) < 3:
        return None
    t = np.array([r["t_s"] for r in rows], dtype=np.float64) / 3600.0
    y = np.array([r["rss_mb"] for r in rows], dtype=np.float64)
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t, y, 1)[0]), 2)


def count_log_events(path: Path) -> dict:
    """Events of interest in the server's JSON log, and every error-level event by name."""
    counts: Counter = Counter()
    errors: Counter = Counter()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line:
                        errors["traceback (not JSON)"] += 1
                    continue
                if not isinstance(entry, dict):
                    continue
                event = entry.get("event")
                if event in LOG_EVENTS:
                    counts[event] += 1
                if entry.get("level") in ("error", "critical"):
                    errors[str(event)[:80]] += 1
    except OSError:
        pass
    return {"events": dict(counts), "errors": dict(errors.most_common(15))}


def parse_metrics(text: str) -> dict:
    """Failovers, StepFun errors by kind and calls by outcome, from the Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"voicebot_engine_failovers": ("from_engine", "to_engine"), "voicebot_stepfun_errors": ("kind",),
              "voicebot_calls": ("outcome",)}
    out: dict[str, dict] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            label = "→".join(sample.labels.get(k, "") for k in wanted[family.name])
            out[family.name][label] = out[family.name].get(label, 0) + int(sample.value)
    return out


def print_report(report: dict, log) -> None:
    calls, faults, rss = report["calls"], report["faults"], report["rss_mb"]
    log("")
    log(f"soak {report['options']['minutes']:g} min, {report['options']['calls']} concurrent calls "
        f"(disk fault: {report['disk_mode']}), phase {report['phase_s']} s")
    log(f"calls: {calls['started']} started, {calls['completed']} completed, {calls['dropped']} dropped by a fault, "
        f"{calls['ended_by_server']} ended by the server, {calls['setup_failed']} failed to set up; "
        f"{calls['turns']} caller turns, {calls['barge_ins']} barge-ins, {calls['protocol_errors']} protocol errors")
    log(f"faults: {faults['total']} injected: " + ", ".join(
        f"{k} {faults['injected'].get(k, 0)}" + (f" (taken {faults['taken'].get(k, 0)})" if k in ONE_SHOT else "")
        for k in FAULT_KINDS) + (f"; not applied {faults['not_applied']}" if faults["not_applied"] else ""))
    log(f"server log: {report['server_log']['events']}")
    if report["server_log"]["errors"]:
        log(f"error-level events: {report['server_log']['errors']}")
    log(f"metrics: failovers {report['metrics']['voicebot_engine_failovers']}, "
        f"stepfun errors {report['metrics']['voicebot_stepfun_errors']}, calls {report['metrics']['voicebot_calls']}")
    loop_lag, gc_pause = report["metrics"]["server_loop"]["loop"], report["metrics"]["server_loop"]["gc"]
    log(f"server event loop lag p99 {loop_lag['p99_ms']} ms, max {loop_lag['max_ms']} ms; gc pause max "
        f"{gc_pause['max_ms']} ms; /debug/runtime unanswered within 10 s: {report['server_unanswered_requests']}")
    log(f"RSS MB: idle {rss['idle_before']} → start {rss['start']} → peak {rss['peak']} → end {rss['end']} → "
        f"idle {rss['idle_after']} ({rss['idle_after_malloc_trim']} after malloc_trim); slope over the second half {rss['slope_mb_per_hour']} MB/hour "
        f"({rss['slope_samples']} samples)")
    b, a, leaked = report["at_rest_before"], report["at_rest_after"], report["leaked"]
    log(f"at rest before: tasks {b['tasks']}, fds {b['fds']}, sockets {b['sockets']}, threads {b['threads']}; "
        f"after: tasks {a['tasks']}, fds {a['fds']}, sockets {a['sockets']}, threads {a['threads']}")
    log(f"leaked: tasks {leaked['tasks']}, fds {leaked['fds']}, sockets {leaked['sockets']}"
        + (f" {leaked['tasks_by_coroutine']}" if leaked["tasks_by_coroutine"] else ""))
    for line in leaked["left_behind"][:20]:
        log(f"  left behind: {line}")
    log(f"stuck calls: {report['stuck_calls']}; most calls in progress at once: {report['max_calls_in_progress']}")


async def run_soak(opts: Options, log=print) -> dict:
    root = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="voicebot-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    disk = TranscriptDisk(root, opts.disk)
    auth_token = secrets.token_hex(16)
    server = Server(root, free_port(), disk.path, auth_token, tracemalloc=opts.tracemalloc,
                    extra_env=opts.server_env)
    try:
        await server.start()
        log(f"server pid {server.child.pid} at {server.url}, emulator {server.emulator_url}, work in {root}")
        report = await Soak(opts, server, disk, auth_token, log).run()
    finally:
        await server.close()
        disk.close()
    report["workdir"] = str(root)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    if opts.out:
        Path(opts.out).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=None, help="length of the soak (default 30; --quick: 0.5)")
    p.add_argument("--quick", action="store_true", help="~30 s: 8 short calls, a fault and a sample every 2 s")
    p.add_argument("--calls", type=int, default=None, help="concurrent calls (default 50)")
    p.add_argument("--min-call-s", type=float, default=None)
    p.add_argument("--max-call-s", type=float, default=None)
    p.add_argument("--fault-every", type=float, default=None, help="seconds between faults (default 4)")
    p.add_argument("--sample-every", type=float, default=None, help="seconds between samples (default 10)")
    p.add_argument("--disk", choices=("auto", "tmpfs", "symlink"), default="auto",
                   help="how the transcripts' disk is made to fail (default: tmpfs when root, else symlink)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="trace the server's allocations and report the sites that grew over the second half")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="add to the server's environment (e.g. MALLOC_MMAP_THRESHOLD_=131072); repeatable")
    p.add_argument("--trim-every", type=float, default=0.0, metavar="S",
                   help="experiment: have the server malloc_trim every S seconds during the soak (0: never)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None, help="keep the run's files here (default: a new temporary folder)")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no per-sample lines")
    a = p.parse_args(argv)
    given = {k: v for k, v in {"minutes": a.minutes, "calls": a.calls, "min_call_s": a.min_call_s,
                               "max_call_s": a.max_call_s, "fault_every_s": a.fault_every,
                               "sample_every_s": a.sample_every}.items() if v is not None}
    server_env = dict(item.split("=", 1) for item in a.server_env)
    common = dict(disk=a.disk, tracemalloc=a.tracemalloc, server_env=server_env, trim_every_s=a.trim_every,
                  seed=a.seed, workdir=a.workdir,
                  out=a.out, quiet=a.quiet)
    opts = Options.quick(**given, **common) if a.quick else Options(**given, **common)
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    from voicebot.logs import configure_logging
    configure_logging("console", "error")
    report = asyncio.run(run_soak(opts, log=lambda line: print(line, flush=True)))
    report["command"] = " ".join([Path(sys.executable).name, "benchmarks/soak.py", *(argv or sys.argv[1:])])
    Path(report["workdir"], "report.json").write_text(json.dumps(report, indent=2))
    print_report(report, lambda line: print(line, flush=True))
    print(f"report: {report['workdir']}/report.json", flush=True)
    clean = (report["leaked"]["tasks"] == 0 and report["leaked"]["fds"] == 0 and report["stuck_calls"] == 0)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
