"""Chain engine turn latency: end of caller speech → first bot audio frame sent, split into its parts.

Run:  .venv/bin/python benchmarks/chain_latency.py [--calls 4] [--turns 4] [--silence-ms 600]

Set-up: three processes on loopback, so that the server has its own event loop, as in production:
  * the StepFun emulator (``--child emulator``): faults all zero (no http/token/chunk delays);
  * the voice server (``--child server``): ``create_app`` with a chain persona (engine: chain, HTTP TTS,
    the default VAD), JSON logs at info to a file, plus timing probes (below);
  * this process: simulated Twilio calls (``SimulatedCall`` + ``TwilioProtocol``, as
    ``simulate_twilio_call`` builds them), one call at a time, each saying the committed fixtures
    ``caller_en`` and ``caller_interrupt`` in turn, every utterance 0.4 s after the bot's reply ended.

All timestamps are ``time.monotonic()``, which is one clock for every process on the machine.

  speech end     the simulator's timeline: when the utterance started being sent + the end of the last
                 20 ms frame of the fixture within 35 dB of its loudest (its trailing silence excluded)
  endpoint       server: the Endpointer returned the utterance (wrapper around ``Endpointer.push``)
  asr            server: ``AsrClient.transcribe`` start → end
  chat           server: ``ChatClient.stream`` called; first delta out of ``ChatStream.__anext__``
  sentence       server: ``ChainEngine._synthesize`` entered with the first sentence
  tts            server: ``TtsClient.stream_http`` request → its first audio chunk
  first frame    server: the first Twilio ``media`` message of the reply handed to the WebSocket
                 (``WebSocketTransport.send_now`` wrote it); the simulator's receive time is shown too
  emulator       each request's ``HttpRecord`` (voicebot/emulator/http_common.py): received by the
                 handler → headers of the streamed answer sent (first_byte) → handler returned (finished)

Per turn:
  total           first frame − speech end
  endpointing     endpoint − speech end (the persona's silence_ms, give or take a frame)
  ASR             asr span as the server saw it   [emu: the emulator's service time of that request]
  chat 1st token  chat call → first delta          [emu: received → first byte]
  chat→sentence   chat call → first sentence ready [emu: received → finished (the emulator's reply is one
                  sentence, complete only when the stream ends)]
  TTS             tts span as the server saw it    [emu: received → finished]
  our overhead    total − endpointing − emulator service times (ASR, chat up to the sentence, TTS):
                  everything that is neither the caller's silence nor the emulator working, i.e. the
                  server's own code, the HTTP client and loopback sockets. Split into
                    before ASR     endpoint → ASR request (turn queue, 8k→16k resample)
                    ASR client     ASR span − emulator ASR time
                    ASR→chat       transcript, messages, chat request built
                    chat client    chat call → sentence − emulator chat time
                    sentence→TTS   sentence queue → TTS request
                    TTS client     TTS span − emulator TTS time
                    TTS→frame      playout enqueue, first frame encoded and written to the WebSocket
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"
AUTH_TOKEN = "bench-twilio-token"
NUMBER = "+15550007001"

PERSONA = """\
name: bench-chain
numbers: ["{number}"]
default: true
language: en
voice: lively-girl
instructions: You are a benchmark assistant. Keep answers short.
greeting: Hello, this is the chain line.
engine: chain
chain:
  silence_ms: {silence_ms}
  tts_transport: {tts}
"""


# ---------------------------------------------------------------------------------------------- children

def _ready(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def child_emulator(out: Path) -> None:
    from voicebot.emulator.app import Emulator, Faults, start_emulator
    from voicebot.logs import configure_logging

    configure_logging("json", "warning", stream=sys.stderr)
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=0, faults=Faults()))
    _ready(f"READY {emulator.base_url}")
    await _wait_for_term()
    records = [{"endpoint": r.endpoint, "received": r.received, "first_byte": r.first_byte,
                "finished": r.finished, "status": r.status, "done": r.done} for r in emulator.http_log]
    out.write_text(json.dumps(records))
    await runner.cleanup()


def install_probes(events: list) -> None:
    """Timing probes around the chain's steps (wrappers only: the server code is unchanged)."""
    from voicebot.engines import chain
    from voicebot.stepfun.asr import AsrClient
    from voicebot.stepfun.chat import ChatClient, ChatStream
    from voicebot.stepfun.tts import TtsClient, TtsHttpStream
    from voicebot.telephony.transport import WebSocketTransport

    now = time.monotonic
    armed = {"media": False}

    class TimedEndpointer(chain.Endpointer):
        def push(self, frame):
            started, utterance = super().push(frame)
            if utterance is not None:
                events.append({"kind": "endpoint", "t": now(), "samples": len(utterance)})
                armed["media"] = True
            return started, utterance

    chain.Endpointer = TimedEndpointer

    def span(cls, name, kind):
        original = getattr(cls, name)

        async def wrapper(*args, **kwargs):
            t0 = now()
            try:
                return await original(*args, **kwargs)
            finally:
                events.append({"kind": kind, "t0": t0, "t1": now()})
        setattr(cls, name, wrapper)

    span(AsrClient, "transcribe", "asr")

    # TTS: from the sentence's request to its first audio chunk (the chain plays chunks as they stream in).
    original_stream_http = TtsClient.stream_http

    def stream_http(self, *args, **kwargs):
        stream = original_stream_http(self, *args, **kwargs)
        stream._bench_t0 = now()
        return stream
    TtsClient.stream_http = stream_http

    original_tts_next = TtsHttpStream.__anext__

    async def tts_next(self):
        value = await original_tts_next(self)
        if not getattr(self, "_bench_seen", False):
            self._bench_seen = True
            events.append({"kind": "tts", "t0": self._bench_t0, "t1": now()})
        return value
    TtsHttpStream.__anext__ = tts_next

    original_stream = ChatClient.stream

    def stream(self, *args, **kwargs):
        events.append({"kind": "chat_call", "t": now()})
        return original_stream(self, *args, **kwargs)
    ChatClient.stream = stream

    original_next = ChatStream.__anext__

    async def anext(self):
        value = await original_next(self)
        if not getattr(self, "_bench_seen", False):
            self._bench_seen = True
            events.append({"kind": "chat_first", "t": now()})
        return value
    ChatStream.__anext__ = anext

    original_synth = chain.ChainEngine._synthesize

    async def synthesize(self, item_id, sentence):
        events.append({"kind": "sentence", "t": now()})
        return await original_synth(self, item_id, sentence)
    chain.ChainEngine._synthesize = synthesize

    original_turn = chain.ChainEngine._turn

    async def turn(self, utterance, ended_at):
        events.append({"kind": "turn_start", "t": now()})
        n = len(self.timings)
        await original_turn(self, utterance, ended_at)
        if len(self.timings) > n:
            events.append({"kind": "timings", "t": now(), **self.timings[-1]})
    chain.ChainEngine._turn = turn

    original_send_now = WebSocketTransport.send_now

    def send_now(self, data):
        sent = original_send_now(self, data)
        if armed["media"] and isinstance(data, str) and data.startswith('{"event":"media"'):
            armed["media"] = False
            events.append({"kind": "media_sent", "t": now()})
        return sent
    WebSocketTransport.send_now = send_now


async def child_server(out: Path, stepfun_url: str, dialplans: Path, log_path: Path) -> None:
    from aiohttp import web

    from voicebot.config import Settings, StepFunSettings, TwilioSettings
    from voicebot.dialplan import load_dialplan
    from voicebot.logs import configure_logging
    from voicebot.server import create_app

    events: list[dict] = []
    install_probes(events)
    log_file = open(log_path, "w")
    configure_logging("json", "info", stream=log_file)
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(source="bench", host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}",
                        dialplans_dir=dialplans, transcripts_dir=dialplans.parent / "transcripts",
                        database_url=f"sqlite:///{dialplans.parent / 'voicebot.db'}",
                        stepfun=StepFunSettings(base_url=stepfun_url, api_key="bench-key", connect_timeout_s=3.0),
                        twilio=TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN))
    app = create_app(settings, load_dialplan(dialplans))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    _ready(f"READY http://127.0.0.1:{port}")
    await _wait_for_term()
    out.write_text(json.dumps(events))
    await runner.cleanup()
    log_file.close()


# ---------------------------------------------------------------------------------------------- calls

def speech_end_offset(pcm: np.ndarray) -> float:
    """Seconds from the start of ``pcm`` to the end of its last 20 ms frame within 35 dB of the loudest."""
    n = len(pcm) // 160
    f = pcm[: n * 160].astype(np.float64).reshape(n, 160)
    db = 10 * np.log10(np.mean(f * f, axis=1) + 1e-9)
    return (int(np.flatnonzero(db > db.max() - 35)[-1]) + 1) * 0.02


async def place_calls(url: str, calls: int, turns: int) -> list[dict]:
    """Run the calls one after another; per utterance its speech end and the reply's first received frame."""
    from voicebot.audio.wav import read_wav_8k
    from voicebot.simulator.caller import Hangup, Say, SimulatedCall
    from voicebot.simulator.twilio import TwilioProtocol

    fixtures = [read_wav_8k(FIXTURES / "caller_en.wav"), read_wav_8k(FIXTURES / "caller_interrupt.wav")]
    ends = [speech_end_offset(p) for p in fixtures]
    out = []
    for c in range(calls):
        script = [Say(fixtures[k % 2], after_bot_done=True, pause_s=0.4, label=str(k % 2)) for k in range(turns)]
        script.append(Hangup(after_bot_done=True, pause_s=0.3))
        protocol = TwilioProtocol(url, to=NUMBER, from_="+15005550006", auth_token=AUTH_TOKEN)
        call = SimulatedCall(protocol, script, max_duration_s=20 + turns * 15, seed=c)
        result = await call.run()
        if result.protocol_errors:
            raise SystemExit(f"call {c}: protocol errors {result.protocol_errors[:3]}")
        t0 = call._t0          # caller time 0 on the monotonic clock (SimulatedCall keeps it private)
        utts = [u for u in result.utterances]
        if len(utts) != turns:
            raise SystemExit(f"call {c}: {len(utts)} utterances, expected {turns} ({result.end_reason})")
        for u in utts:
            end = u.start_s + ends[int(u.label)]
            received = [t for t, _ in result.media_received if t > end]
            out.append({"call": c, "speech_end": t0 + end,
                        "received": t0 + received[0] if received else None})
    return out


# ---------------------------------------------------------------------------------------------- analysis

def analyse(utterances: list[dict], events: list[dict], emulator: list[dict]) -> list[dict]:
    events = sorted(events, key=lambda e: e.get("t", e.get("t0")))
    rows = []
    for i, u in enumerate(utterances):
        end = u["speech_end"]
        limit = utterances[i + 1]["speech_end"] if i + 1 < len(utterances) else float("inf")

        def first(kind, after, field="t"):
            for e in events:
                if e["kind"] == kind and after <= e.get(field, e.get("t0")) < limit:
                    return e
            return None

        ep = first("endpoint", end - 0.2)
        if ep is None:
            continue
        e_t = ep["t"]
        turn = first("turn_start", e_t)
        asr = first("asr", e_t, "t0")
        chat = first("chat_call", asr["t1"])
        chat_first = first("chat_first", chat["t"])
        sentence = first("sentence", chat["t"])
        tts = first("tts", sentence["t"], "t0")
        media = first("media_sent", tts["t1"])

        def record(endpoint, t0, t1):
            for r in emulator:
                if r["endpoint"] == endpoint and t0 <= r["received"] <= t1:
                    return r
            raise SystemExit(f"no emulator {endpoint} record between {t0} and {t1}")

        r_asr = record("asr", asr["t0"], asr["t1"])
        r_chat = record("chat", chat["t"], sentence["t"])
        r_tts = record("tts", tts["t0"], tts["t1"])
        emu_asr = r_asr["finished"] - r_asr["received"]
        emu_chat_first = (r_chat["first_byte"] or r_chat["finished"]) - r_chat["received"]
        emu_chat = min(r_chat["finished"], sentence["t"]) - r_chat["received"]
        emu_tts = min(r_tts["finished"], tts["t1"]) - r_tts["received"]   # streamed: up to our first chunk
        total = media["t"] - end
        endpointing = e_t - end
        row = {
            "total": total,
            "endpointing": endpointing,
            "asr": asr["t1"] - asr["t0"], "emu asr": emu_asr,
            "chat first token": chat_first["t"] - chat["t"], "emu chat first byte": emu_chat_first,
            "chat to sentence": sentence["t"] - chat["t"], "emu chat": emu_chat,
            "tts": tts["t1"] - tts["t0"], "emu tts": emu_tts,
            "overhead": total - endpointing - emu_asr - emu_chat - emu_tts,
            "  before ASR": asr["t0"] - e_t,
            "    queue to turn": turn["t"] - e_t,
            "  ASR client": asr["t1"] - asr["t0"] - emu_asr,
            "  ASR to chat": chat["t"] - asr["t1"],
            "  chat client": sentence["t"] - chat["t"] - emu_chat,
            "  sentence to TTS": tts["t0"] - sentence["t"],
            "  TTS client": tts["t1"] - tts["t0"] - emu_tts,
            "  TTS to frame": media["t"] - tts["t1"],
            "sim received - sent": (u["received"] - media["t"]) if u["received"] else float("nan"),
        }
        rows.append(row)
    return rows


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(rows: list[dict], silence_ms: int) -> None:
    print(f"{len(rows)} turns; silence_ms {silence_ms}; times in ms")
    print(f"{'part':<26}{'p50':>8}{'p95':>8}{'max':>8}")
    print("-" * 50)
    order = ["total", "endpointing", "asr", "emu asr", "chat first token", "emu chat first byte",
             "chat to sentence", "emu chat", "tts", "emu tts", "overhead", "  before ASR", "    queue to turn",
             "  ASR client", "  ASR to chat", "  chat client", "  sentence to TTS", "  TTS client", "  TTS to frame",
             "sim received - sent"]
    labels = {"emu asr": "  emulator ASR", "emu chat first byte": "  emulator to first byte",
              "emu chat": "  emulator chat", "emu tts": "  emulator TTS", "overhead": "our overhead",
              "asr": "ASR (as the server saw it)", "chat first token": "chat first token",
              "chat to sentence": "chat to first sentence", "tts": "TTS first audio",
              "sim received - sent": "(simulator got it after)"}
    for key in order:
        values = [r[key] * 1000 for r in rows if r[key] == r[key]]
        print(f"{labels.get(key, key):<26}{pct(values, 50):8.1f}{pct(values, 95):8.1f}{max(values):8.1f}")


# ---------------------------------------------------------------------------------------------- main

def spawn(args: list[str], stderr) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                            cwd=ROOT)
    line = ""
    while not line.startswith("READY "):
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise SystemExit(f"child {args[:2]} did not start (see its stderr)")
        line = line.strip()
    return proc, line.split(" ", 1)[1]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4, help="caller utterances per call")
    ap.add_argument("--silence-ms", type=int, default=600)
    ap.add_argument("--tts", choices=("http",), default="http", help="the persona's chain.tts_transport")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server log, raw events)")
    ap.add_argument("--child", choices=("emulator", "server"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--stepfun-url", help=argparse.SUPPRESS)
    ap.add_argument("--dialplans", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "emulator":
        asyncio.run(child_emulator(Path(args.out)))
        return
    if args.child == "server":
        asyncio.run(child_server(Path(args.out), args.stepfun_url, Path(args.dialplans), Path(args.log)))
        return

    work = Path(tempfile.mkdtemp(prefix="chain_latency_"))
    plans = work / "dialplans"
    plans.mkdir()
    (plans / "bench.yaml").write_text(PERSONA.format(number=NUMBER, silence_ms=args.silence_ms, tts=args.tts))
    errors = open(work / "children.stderr", "w")
    emu, stepfun_url = spawn(["--child", "emulator", "--out", str(work / "emulator.json")], errors)
    try:
        server, url = spawn(["--child", "server", "--out", str(work / "events.json"), "--stepfun-url", stepfun_url,
                             "--dialplans", str(plans), "--log", str(work / "server.log")], errors)
        try:
            utterances = asyncio.run(place_calls(url, args.calls, args.turns))
        finally:
            stop(server)
    finally:
        stop(emu)
    events = json.loads((work / "events.json").read_text())
    emulator = json.loads((work / "emulator.json").read_text())
    rows = analyse(utterances, events, emulator)
    import platform
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; emulator, server and "
          f"simulated caller in 3 processes on loopback; {args.calls} calls x {args.turns} turns, TTS over {args.tts}")
    report(rows, args.silence_ms)
    if args.keep:
        print(f"work directory: {work}")
    else:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
