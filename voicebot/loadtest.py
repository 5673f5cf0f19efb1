"""``voicebot loadtest``: how many concurrent calls one server process holds, and at what latency.

For each N of a ramp (10, 25, 50, …) it starts, on loopback only:

* the StepFun **emulator** in its own process (``record=False``: counters only), so its CPU is not ours.
  Realtime audio is paced at ``speed`` × real time; ASR, chat and TTS (the chain engine) have no pacing and
  no delay at all (the emulator's fault delays stay 0, TTS speech is cached per phrase): they answer at once;
* the **server** in its own process: ``voicebot serve`` with a temporary config (Twilio signatures checked
  with a ``TWILIO_AUTH_TOKEN`` set here, ``STEPFUN_BASE_URL`` at the emulator, ``STEP_API_KEY`` set,
  ``VOICEBOT_LATENCY=1`` so ``GET /debug/latency`` serves its histograms), pinned to CPU 0 (the emulator
  and callers then run on the other CPUs, or with ``--share-server-core`` on all of them at nice 19, so that
  on CPU 0 they only get what the server leaves);
  or, as the reference, the **naive relay** below (json + audioop, no pacing) on the same port layout;
* N **simulated Twilio callers** (:mod:`voicebot.simulator.twilio`, the tests' caller: real-time 20 ms
  μ-law frames of the speech fixtures with pauses, marks echoed after playback, barge-in on a share of the
  turns) spread over worker processes, started over ``ramp_s`` and all hanging up at the same moment.

It measures over the window when all N calls are up (``hold_s``): the server's CPU (user+sys from
/proc/<pid>/stat, % of one core) and RSS growth per call (/proc/<pid>/status, against the idle server);
from the server's histograms, server-added latency per frame both ways and barge-in reaction (trigger →
``clear``); from the callers, late bot frames (underruns of the simulated Twilio buffer inside an
utterance), first-bot-audio time and barge-in reaction as the caller sees it; lost caller frames
(frames the callers sent vs ``append`` events the emulator counted; for the chain engine, frames the server
received and the frames of every utterance its endpointer cut vs the audio the emulator's ASR took, with the
frames outside any utterance — silence, noise — reported apart as dropped by design), and whether the
callers kept real-time pace (a late caller invalidates the step: it is reported, never hidden).

The whole run is bounded: each step lasts about ``ramp_s + hold_s`` plus start-up and drain, every
process started here is ended by its pid, and the ramp stops early once a step fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .loadgen import FRAME_S, NUMBER

REPO = Path(__file__).resolve().parent.parent
# The reference relay lives with the benchmarks, not in the product: it resamples with audioop.
NAIVE_RELAY = REPO / "benchmarks" / "naive_relay.py"
# Callers share a machine with the server: a tick > 10 ms late now and then is noise. Callers that are often
# late, or later than the playout lead, may starve their own playback buffer: then the late bot frames they
# report cannot be told from the server's, and a step that has any is void. Server-side figures (CPU, memory,
# latency histograms, frames reaching the model) do not depend on the callers' timing.
MAX_LATE_TICK_SHARE = 0.005
MAX_TICK_LAG_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_STEPS = (10, 25, 50, 100, 150, 200, 300)
CRITERIA = {"lost_frames": 0, "late_frames": 0, "p99_server_ms": 20.0, "p99_barge_ms": 20.0, "cpu_pct": 80.0}


# ------------------------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


LOAD_GENERATOR_NICE = 19


class Child:
    """A process started here; ended by its pid only."""

    def __init__(self, name: str, argv: list[str], *, env: dict | None = None, log_path: Path,
                 cpus: set[int] | None = None, nice: int = 0, stdout=None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=stdout or self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        try:
            if cpus:
                os.sched_setaffinity(self.pid, cpus)
            if nice:
                os.setpriority(os.PRIO_PROCESS, self.pid, nice)
        except OSError:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


async def http_json(url: str, timeout: float = 5.0) -> dict:
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return await resp.json(content_type=None)


async def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
        try:
            await http_json(url, 1.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not answer {url} within {timeout} s:\n{child.tail()}")
            await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------------ the config

PERSONA = """\
name: load
numbers: ["{number}"]
default: true
engine: {engine}
language: en
voice: lively-girl
instructions: You are the load-test assistant. Keep answers short.
greeting: Hello, thanks for calling the load test line. How can I help you today?
realtime:
  turn_detection: {{silence_duration_ms: 500, prefix_padding_ms: 300, energy_awakeness_threshold: 2500}}
barge_in: {{enabled: true, min_speech_ms: 200}}
max_call_seconds: 3600
"""

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
stepfun: {{connect_timeout_s: 15, failover_connect_timeout_s: 15}}
twilio: {{validate_signatures: true}}
playout: {{lead_ms: 100, mark_every_ms: 100, chunk_ms: {chunk_ms}}}
dialplans: dialplans
transcripts_dir: transcripts
logging: {{format: json, level: info}}
"""


def write_config(root: Path, port: int, engine: str, chunk_ms: int = 100, record: bool = False) -> Path:
    """``record``: the persona records every call, into ``<root>/recordings``."""
    (root / "dialplans").mkdir(parents=True, exist_ok=True)
    persona = PERSONA.format(number=NUMBER, engine=engine) + ("record: true\n" if record else "")
    (root / "dialplans" / "load.yaml").write_text(persona)
    path = root / "config.yaml"
    path.write_text(CONFIG.format(port=port, chunk_ms=chunk_ms) + ("recordings_dir: recordings\n" if record else ""))
    return path


def recordings_note(folder: Path) -> str:
    """How many call recordings a step left and how much audio they hold (each read back as a WAV)."""
    files, seconds, unreadable = sorted(folder.glob("*.wav")), 0.0, 0
    for path in files:
        try:
            with wave.open(str(path), "rb") as w:
                seconds += w.getnframes() / w.getframerate()
        except (wave.Error, EOFError, OSError):
            unreadable += 1
    return (f"recordings: {len(files)} files, {seconds:.0f} s of audio"
            + (f", {unreadable} unreadable" if unreadable else ""))



# ------------------------------------------------------------------------------------------------ one step

@dataclass
class Options:
    steps: tuple[int, ...] = DEFAULT_STEPS
    target: str = "voicebot"            # "voicebot" (voicebot serve) | "naive" (the reference relay)
    engine: str = "realtime"            # persona engine for voicebot: realtime | chain | auto
    chunk_ms: int = 100                 # the server's playout.chunk_ms: bot audio per Twilio media message
    record: bool = False                # the server's persona records every call (stereo WAV per call)
    ramp_s: float = 10.0
    hold_s: float = 20.0
    calls_per_worker: int = 60
    barge_share: float = 0.3
    speed: float = 2.0                  # emulator realtime audio pacing (× real time); 1.0 leaves the model
                                        # no slack. ASR, chat and TTS are never paced
    pin: bool = True                    # server on CPU 0, everything else on the other CPUs
    share_server_core: bool = False     # the load generator may also use CPU 0, at nice 19: what the server leaves
    seed: int = 1
    stop_on_fail: bool = True
    max_run_s: float = 1800.0
    py_spy: str | None = None           # record a py-spy profile of the server at the last step here
    workdir: str | None = None
    quiet: bool = False
    server_entry: str = "voicebot.cli"  # experiments: a module run instead, with `serve --config …`


@dataclass
class StepResult:
    n: int
    target: str
    valid: bool = True
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    calls_ok: int = 0
    calls_failed: int = 0
    cpu_pct: float = 0.0
    rss_idle_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_per_call_mb: float = 0.0
    frames_sent: int = 0
    frames_server_in: int | None = None
    frames_fed: int | None = None
    appends_model: int = 0
    lost_frames: int | None = 0          # None: not measured
    lost_before_engine: int | None = None
    # chain engine only: caller frames the endpointer cut into utterances, those sent to ASR, those ASR took
    speech_frames: int | None = None
    asr_frames_sent: int | None = None
    asr_frames_model: int | None = None
    not_speech_frames: int | None = None   # fed but in no utterance: silence/noise, dropped by design
    late_frames: int = 0
    underruns: int = 0
    bot_frames_received: int = 0
    latency: dict = field(default_factory=dict)
    first_bot_audio_ms: dict = field(default_factory=dict)
    barge_caller_ms: dict = field(default_factory=dict)
    barges: int = 0
    barges_unanswered: int = 0
    caller_max_tick_lag_ms: float = 0.0
    caller_late_ticks: int = 0
    caller_ticks: int = 0
    caller_cpu_pct: float = 0.0
    emulator_cpu_pct: float = 0.0
    # per unit of work, comparable between runs whatever the server and the callers' lateness did:
    caller_cpu_us_per_tick: float = 0.0      # the callers' CPU for their whole run / frames sent
    emulator_cpu_us_per_append: float = 0.0  # the emulator's CPU over the step / appends it took
    protocol_errors: int = 0
    workers: int = 0
    window_s: float = 0.0


def _pcts(values: list[float], scale: float = 1000.0) -> dict:
    if not values:
        return {"count": 0}
    arr = np.asarray(values, dtype=np.float64) * scale
    return {"count": len(values), "p50": round(float(np.percentile(arr, 50)), 1),
            "p95": round(float(np.percentile(arr, 95)), 1), "p99": round(float(np.percentile(arr, 99)), 1),
            "max": round(float(arr.max()), 1)}


class Sampler:
    """Samples a process's CPU seconds and RSS every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), proc_cpu_s(self.pid), proc_rss_bytes(self.pid)))
            except (OSError, ValueError, IndexError):
                return
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def cpu_pct(self, t0: float, t1: float) -> float:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan")
        (ta, ca, _), (tb, cb, _) = inside[0], inside[-1]
        return 100.0 * (cb - ca) / (tb - ta) if tb > ta else float("nan")

    def rss_max(self, t0: float, t1: float) -> int:
        inside = [s[2] for s in self.samples if t0 <= s[0] <= t1]
        return max(inside) if inside else 0


async def run_step(n: int, opts: Options, root: Path, log) -> StepResult:
    step = StepResult(n=n, target=opts.target)
    step_dir = root / f"{opts.target}-{n}"
    step_dir.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if opts.pin and len(cpus) > 1 else None
    other_cpus = (set(cpus) if opts.share_server_core else set(cpus[1:])) if opts.pin and len(cpus) > 1 else None
    # Sharing the server's core, the load generator only takes what the server leaves of it.
    other_nice = LOAD_GENERATOR_NICE if opts.share_server_core else 0
    python = sys.executable
    children: list[Child] = []
    auth_token = secrets.token_hex(16)
    try:
        emu_port, port = free_port(), free_port()
        emulator = Child("emulator", [python, "-m", "voicebot.loadgen", "emulator", "--port", str(emu_port),
                                      "--speed", str(opts.speed)],
                         log_path=step_dir / "emulator.log", cpus=other_cpus, nice=other_nice)
        children.append(emulator)
        env = dict(os.environ)
        env.update({"TWILIO_AUTH_TOKEN": auth_token, "STEP_API_KEY": "loadtest-key",
                    "STEPFUN_BASE_URL": f"http://127.0.0.1:{emu_port}/step_plan/v1", "VOICEBOT_LATENCY": "1"})
        env.pop("VOICEBOT_CONFIG", None)
        if opts.target == "naive":
            if not NAIVE_RELAY.exists():
                raise SystemExit(f"--target naive needs the repository's {NAIVE_RELAY} (the reference relay)")
            argv = [python, str(NAIVE_RELAY), "--port", str(port),
                    "--stepfun-ws", f"ws://127.0.0.1:{emu_port}/step_plan/v1"]
        else:
            config = write_config(step_dir, port, opts.engine, opts.chunk_ms, opts.record)
            argv = [python, "-m", opts.server_entry, "serve", "--config", str(config)]
        server = Child("server", argv, env=env, log_path=step_dir / "server.log", cpus=server_cpus)
        children.append(server)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"http://127.0.0.1:{emu_port}/debug/stats", emulator)
        await wait_http(f"{url}/healthz", server)
        await asyncio.sleep(0.5)
        rss_idle = proc_rss_bytes(server.pid)
        sampler, emu_sampler = Sampler(server.pid), Sampler(emulator.pid)
        sampler.start()
        emu_sampler.start()

        # Calls: started over ramp_s, all hanging up at end_at.
        n_workers = max(1, math.ceil(n / opts.calls_per_worker))
        step.workers = n_workers
        start0 = time.monotonic() + 2.0 + 0.3 * n_workers      # worker start-up (imports)
        end_at = start0 + opts.ramp_s + opts.hold_s
        specs = [{"index": i, "seed": opts.seed * 100003 + i,
                  "start_at": start0 + opts.ramp_s * i / max(1, n), "end_at": end_at} for i in range(n)]
        workers = []
        for w in range(n_workers):
            mine = specs[w::n_workers]
            workers.append(Child(f"callers{w}", [python, "-m", "voicebot.loadgen", "callers", "--url", url,
                                                 "--auth-token-env", "LOADTEST_TWILIO_TOKEN",
                                                 "--barge-share", str(opts.barge_share),
                                                 "--specs", json.dumps(mine)],
                                 env={**os.environ, "LOADTEST_TWILIO_TOKEN": auth_token},
                                 log_path=step_dir / f"callers{w}.log", cpus=other_cpus, nice=other_nice,
                                 stdout=subprocess.PIPE))
        children.extend(workers)
        window = (start0 + opts.ramp_s + 1.0, end_at - 0.5)
        step.window_s = round(window[1] - window[0], 1)
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        await http_json(f"{url}/debug/latency?reset=1", timeout=15.0)
        spy = None
        if opts.py_spy:
            local = Path(sys.executable).parent / "py-spy"
            fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(opts.py_spy).suffix, "flamegraph")
            out = Path(opts.py_spy)
            out = out.with_name(f"{out.stem}-{opts.target}-{n}{out.suffix}")
            spy = subprocess.Popen([str(local) if local.exists() else "py-spy", "record", "-p", str(server.pid),
                                    "-o", str(out), "-d", str(int(window[1] - window[0])), "-r", "100",
                                    "--nonblocking", "-f", fmt],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        lat = await http_json(f"{url}/debug/latency")
        if spy is not None:
            try:
                await asyncio.to_thread(spy.wait, 60)
            except subprocess.TimeoutExpired:
                spy.kill()

        # Collect the callers.
        outputs = []
        for worker in workers:
            try:
                out, _ = await asyncio.to_thread(worker.proc.communicate, None, max(30.0, end_at - time.monotonic() + 60))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                out, _ = worker.proc.communicate()
                step.notes.append(f"{worker.name} timed out")
            try:
                outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
            except (ValueError, IndexError):
                step.notes.append(f"{worker.name} gave no result: {worker.tail(400)}")
        # Let the server and the emulator finish the last calls, then read the counters.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            stats = await http_json(f"http://127.0.0.1:{emu_port}/debug/stats")
            if stats["open"] == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
        stats = await http_json(f"http://127.0.0.1:{emu_port}/debug/stats")
        totals = await http_json(f"{url}/debug/latency")
        if opts.record and opts.target == "voicebot":
            step.notes.append(recordings_note(step_dir / "recordings"))
        await sampler.stop()
        await emu_sampler.stop()

        # -- figures --
        step.cpu_pct = round(sampler.cpu_pct(*window), 1)
        step.emulator_cpu_pct = round(emu_sampler.cpu_pct(*window), 1)
        rss_peak = sampler.rss_max(*window)
        step.rss_idle_mb = round(rss_idle / 2**20, 1)
        step.rss_peak_mb = round(rss_peak / 2**20, 1)
        calls = [c for out in outputs for c in out["calls"]]
        ok = [c for c in calls if "error" not in c]
        step.calls_ok, step.calls_failed = len(ok), len(calls) - len(ok) + (n - len(calls))
        step.rss_per_call_mb = round((rss_peak - rss_idle) / 2**20 / max(1, n), 3)
        for c in calls:
            if "error" in c and len(step.notes) < 8:
                step.notes.append(f"call failed: {c['error']}")
        step.frames_sent = sum(c["frames_sent"] for c in ok)
        step.appends_model = stats["appends"]
        counters = totals.get("counters", {})
        step.frames_server_in = counters.get("carrier_frames_in")
        step.frames_fed = counters.get("frames_fed")
        if step.frames_server_in is not None and step.frames_fed is not None:
            step.lost_before_engine = step.frames_server_in - step.frames_fed
        if opts.target == "voicebot" and opts.engine == "chain":
            # The chain uploads each utterance the endpointer cuts to ASR (no appends). Frames outside every
            # utterance (silence between turns, noise shorter than min_speech_ms, a turn unfinished at hang-up)
            # are dropped by design and reported apart; an utterance cut but not sent to ASR, or sent but not
            # taken by it, is lost.
            step.speech_frames = counters.get("chain_speech_frames", 0)
            step.asr_frames_sent = counters.get("chain_asr_frames", 0)
            step.asr_frames_model = stats["asr_audio_ms"] // round(FRAME_S * 1000)
            if step.frames_fed is not None:
                step.not_speech_frames = step.frames_fed - step.speech_frames
            if step.frames_server_in is None:
                step.lost_frames = None
            else:
                step.lost_frames = ((step.frames_sent - step.frames_server_in)
                                    + (step.speech_frames - step.asr_frames_model))
            step.notes.append(f"chain: {step.speech_frames} caller frames in utterances, {step.asr_frames_sent} "
                              f"sent to ASR, {step.asr_frames_model} taken by ASR; {step.not_speech_frames} "
                              "outside any utterance (dropped by design)")
        elif step.frames_fed is not None:
            # Lost in the server or on the wire once the engine is up; frames that arrive while the engine is
            # still connecting are counted apart (lost_before_engine: Call holds them and never feeds them).
            step.lost_frames = (step.frames_sent - step.frames_server_in) + (step.frames_fed - step.appends_model)
        else:
            step.lost_frames = step.frames_sent - step.appends_model
        step.late_frames = sum(c["late_frames"] for c in ok)
        step.underruns = sum(c["underruns"] for c in ok)
        step.bot_frames_received = sum(c["media_received"] for c in ok)
        step.latency = lat.get("histograms", {})
        step.first_bot_audio_ms = _pcts([c["first_bot_audio_s"] for c in ok if c["first_bot_audio_s"] is not None])
        reactions = [r for c in ok for r in c["barge_reaction_s"]]
        step.barges = len(reactions)
        step.barges_unanswered = sum(1 for r in reactions if r is None)
        step.barge_caller_ms = _pcts([r for r in reactions if r is not None])
        step.caller_max_tick_lag_ms = round(max((c["max_tick_lag_ms"] for c in ok), default=0.0), 1)
        step.caller_late_ticks = sum(c["late_ticks"] for c in ok)
        step.caller_ticks = step.frames_sent
        step.protocol_errors = sum(c["protocol_errors"] for c in ok)
        wall = sum(out["wall_s"] for out in outputs)
        step.caller_cpu_pct = round(100.0 * sum(out["cpu_s"] for out in outputs) / max(1e-9, wall / max(1, len(outputs))), 1)
        step.caller_cpu_us_per_tick = round(1e6 * sum(out["cpu_s"] for out in outputs) / max(1, step.frames_sent), 1)
        if len(emu_sampler.samples) >= 2:
            emu_cpu_s = emu_sampler.samples[-1][1] - emu_sampler.samples[0][1]
            step.emulator_cpu_us_per_append = round(1e6 * emu_cpu_s / max(1, step.appends_model), 1)
        judge(step)
        return step
    finally:
        for child in reversed(children):
            child.stop()


def judge(step: StepResult) -> None:
    """Valid: every call ran, and no late bot frame may be the callers' own doing. Passed: valid and every
    criterion met."""
    if step.calls_failed:
        step.valid = False
        step.notes.append(f"{step.calls_failed} calls failed")
    if step.caller_late_ticks:
        share = step.caller_late_ticks / max(1, step.caller_ticks)
        if (share > MAX_LATE_TICK_SHARE or step.caller_max_tick_lag_ms >= MAX_TICK_LAG_MS) and step.late_frames:
            step.valid = False
        step.notes.append(f"callers late: {step.caller_late_ticks} of {step.caller_ticks} ticks > 10 ms late "
                          f"({100 * share:.2f} %, worst {step.caller_max_tick_lag_ms} ms)")
    lat = step.latency

    def p99(name: str) -> float:
        return float(lat.get(name, {}).get("p99_ms", 0.0))

    server_p99 = max(p99("in"), p99("out"))
    barge_p99 = max(p99("barge_model"), p99("barge_vad"))
    failures = []
    if step.lost_before_engine:
        step.notes.append(f"{step.lost_before_engine} caller frames never fed to the engine: the call ended, or "
                          "the engine took over 15 s to start, before it was up")
    if step.lost_frames is not None and step.lost_frames > CRITERIA["lost_frames"]:
        failures.append(f"{step.lost_frames} caller frames never reached the model")
    if step.late_frames > CRITERIA["late_frames"]:
        failures.append(f"{step.late_frames} bot frames late ({step.underruns} underruns)")
    if server_p99 >= CRITERIA["p99_server_ms"]:
        failures.append(f"server-added p99 {server_p99:.1f} ms")
    if barge_p99 >= CRITERIA["p99_barge_ms"]:
        failures.append(f"barge-in p99 {barge_p99:.1f} ms")
    if not step.cpu_pct < CRITERIA["cpu_pct"]:
        failures.append(f"CPU {step.cpu_pct:.0f} %")
    step.notes.extend(failures)
    step.passed = step.valid and not failures


# ------------------------------------------------------------------------------------------------ the run

def format_table(steps: list[StepResult]) -> str:
    head = ("target      N  ok  CPU%  RSS/call  lost  held  late  in p50/p99   out p50/p99  loop p99  gc max  barge p99"
            "  1st audio p50/p99  caller barge p50  caller lag  verdict")
    lines = [head, "-" * len(head)]
    for s in steps:
        lat = s.latency

        def h(name: str, key: str) -> str:
            v = lat.get(name, {})
            return "-" if not v.get("count") else f"{v[key]:.1f}"
        barge = max((float(lat.get(k, {}).get("p99_ms", 0.0)) for k in ("barge_model", "barge_vad")
                     if lat.get(k, {}).get("count")), default=float("nan"))
        fa = s.first_bot_audio_ms
        verdict = "PASS" if s.passed else ("invalid" if not s.valid else "fail")
        lines.append(
            f"{s.target:<8} {s.n:>4} {s.calls_ok:>3} {s.cpu_pct:>5.1f} {s.rss_per_call_mb:>6.2f} MB {'-' if s.lost_frames is None else s.lost_frames:>5}"
            f" {'-' if s.lost_before_engine is None else s.lost_before_engine:>5} {s.late_frames:>5}  {h('in', 'p50_ms'):>4}/{h('in', 'p99_ms'):<6} {h('out', 'p50_ms'):>4}/{h('out', 'p99_ms'):<6}"
            f" {h('loop', 'p99_ms'):>7}  {h('gc', 'max_ms'):>6}  {barge:>8.1f}  {fa.get('p50', float('nan')):>7.0f}/{fa.get('p99', float('nan')):<7.0f}"
            f"  {s.barge_caller_ms.get('p50', float('nan')):>14.0f}  {s.caller_max_tick_lag_ms:>7.1f} ms  {verdict}")
    return "\n".join(lines)


async def run_loadtest(opts: Options) -> dict:
    root = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="voicebot-load-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: list[StepResult] = []

    def say(text: str) -> None:
        if not opts.quiet:
            print(text, flush=True)

    say(f"voicebot loadtest: target {opts.target}" + (f" (engine {opts.engine})" if opts.target == "voicebot" else "")
        + (f", {opts.chunk_ms} ms per media message" if opts.target == "voicebot" else "")
        + (", every call recorded" if opts.record and opts.target == "voicebot" else "")
        + f", steps {list(opts.steps)}, ramp {opts.ramp_s:g} s + hold {opts.hold_s:g} s, "
        f"emulator speed {opts.speed:g}, barge share {opts.barge_share:g}"
        + (", load generator on every CPU at nice 19 (server on CPU 0)" if opts.pin and opts.share_server_core else "")
        + f", files in {root}")
    for n in opts.steps:
        if time.monotonic() - started > opts.max_run_s:
            say(f"stopping: the run has used its {opts.max_run_s:g} s")
            break
        try:
            step = await run_step(n, opts, root, say)
        except Exception as exc:   # e.g. the server too overloaded to answer its debug endpoints: a failed step
            step = StepResult(n=n, target=opts.target, notes=[f"step aborted: {type(exc).__name__}: {exc}"[:300]])
        results.append(step)
        say(format_table([step]).splitlines()[-1] + ("   " + "; ".join(step.notes) if step.notes else ""))
        if opts.stop_on_fail and step.valid and not step.passed:
            break
    passing = [s.n for s in results if s.passed]
    report = {
        "target": opts.target, "engine": opts.engine, "options": asdict(opts), "criteria": CRITERIA,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "steps": [asdict(s) for s in results],
        "max_passing_n": max(passing) if passing else None,
        "table": format_table(results),
    }
    (root / "report.json").write_text(json.dumps(report, indent=1))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="comma-separated call counts to ramp through (default %(default)s)")
    parser.add_argument("--target", choices=("voicebot", "naive", "both"), default="voicebot",
                        help="the server under test, the naive reference relay, or both in turn")
    parser.add_argument("--chunk-ms", type=int, default=100, choices=(20, 40, 60, 80, 100),
                        help="the server's playout.chunk_ms: most bot audio per Twilio media message (default 100)")
    parser.add_argument("--engine", choices=("realtime", "chain", "auto"), default="realtime",
                        help="persona engine of the server under test (default realtime)")
    parser.add_argument("--record", action="store_true",
                        help="the server records every call (persona record: true); compare with a run without")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the calls start")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds all N calls run together (measured)")
    parser.add_argument("--calls-per-worker", type=int, default=60, help="simulated callers per worker process")
    parser.add_argument("--barge-share", type=float, default=0.3, help="share of caller turns that barge in")
    parser.add_argument("--speed", type=float, default=2.0,
                        help="emulator realtime audio pacing, × real time (ASR, chat and TTS answer at once)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the server to CPU 0 and the load generator to the others")
    parser.add_argument("--share-server-core", action="store_true",
                        help="let the emulator and callers use CPU 0 too (the server stays pinned there): for "
                             "loads the load generator cannot drive from the other CPUs alone")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    parser.add_argument("--max-run", type=float, default=1800.0, help="stop starting steps after this many s")
    parser.add_argument("--py-spy", help="profile the server with py-spy during each step's window, to this file")
    parser.add_argument("--workdir", help="keep configs, logs and report.json here (default: a temp dir)")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--server-entry", default="voicebot.cli", help=argparse.SUPPRESS)
    return parser


def options_from_args(args, target: str | None = None) -> Options:
    return Options(steps=tuple(int(x) for x in args.steps.split(",") if x.strip()),
                   target=target or args.target, engine=args.engine, chunk_ms=args.chunk_ms, record=args.record,
                   ramp_s=args.ramp, hold_s=args.hold,
                   calls_per_worker=args.calls_per_worker, barge_share=args.barge_share, speed=args.speed,
                   pin=args.pin, share_server_core=args.share_server_core, stop_on_fail=not args.keep_going, max_run_s=args.max_run, py_spy=args.py_spy,
                   workdir=args.workdir, server_entry=args.server_entry)


def run_cli(args) -> int:
    targets = ("voicebot", "naive") if args.target == "both" else (args.target,)
    if len(targets) == 1:
        reports = [asyncio.run(run_loadtest(options_from_args(args)))]
    else:
        reports = _run_interleaved(args, targets)
    print()
    for report in reports:
        print(report["table"])
        print(f"{report['target']}: highest N meeting every criterion: {report['max_passing_n']}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))
    return 0


def _run_interleaved(args, targets: tuple[str, ...]) -> list[dict]:
    """Each N for every target in turn (our server, then the reference) rather than one whole ramp after the
    other: on a shared machine whose speed drifts over minutes, the two figures of one N are then measured
    a minute apart, not a quarter of an hour."""
    steps: dict[str, list[StepResult]] = {target: [] for target in targets}
    stopped: set[str] = set()
    for n in options_from_args(args).steps:
        for target in targets:
            if target in stopped:
                continue
            opts = options_from_args(args, target)
            opts.steps = (n,)
            if opts.workdir:
                opts.workdir = str(Path(opts.workdir) / target / str(n))
            report = asyncio.run(run_loadtest(opts))
            results = [StepResult(**step) for step in report["steps"]]
            steps[target].extend(results)
            if opts.stop_on_fail and any(r.valid and not r.passed for r in results):
                stopped.add(target)
    reports = []
    for target, results in steps.items():
        passing = [r.n for r in results if r.passed]
        reports.append({"target": target, "engine": args.engine, "options": asdict(options_from_args(args, target)),
                        "criteria": CRITERIA, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                        "steps": [asdict(r) for r in results], "max_passing_n": max(passing) if passing else None,
                        "table": format_table(results)})
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="voicebot loadtest", description=__doc__.splitlines()[0]))
    return run_cli(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
