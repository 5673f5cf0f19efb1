"""Shared fixtures: a real voice server + StepFun emulator on loopback, and the speech fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import dataclasses
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from voicebot.audio.wav import read_wav_8k
from voicebot.config import Settings, StepFunSettings, TwilioSettings
from voicebot.dialplan import load_dialplan

# The fuzz tests (tests/test_fuzz_*.py): "ci" (the default) is bounded and reproducible -- the same examples on
# every run (derandomize), nothing remembered between runs -- so the set stays fast (about 30 s on 2 cores) and a
# failure in CI fails the same way on a laptop. Each example must finish within FUZZ_DEADLINE: they take
# milliseconds, so one that takes seconds is a parser gone quadratic on some input -- a way to stall a server
# that hostile input must not have -- yet a loaded CI machine stays far below it. VOICEBOT_FUZZ=deep searches
# much longer, with fresh random examples each run.
FUZZ_DEADLINE = timedelta(seconds=2)
hypothesis_settings.register_profile("ci", max_examples=100, deadline=FUZZ_DEADLINE, derandomize=True, database=None,
                                     print_blob=True, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.register_profile("deep", max_examples=5000, deadline=FUZZ_DEADLINE,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile(os.environ.get("VOICEBOT_FUZZ", "ci"))

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_DIALPLANS = Path(__file__).resolve().parent.parent / "dialplans"
AUTH_TOKEN = "test-twilio-auth-token-4c1d"

EN = "+15550000001"          # English persona, barge-in on (also the default persona)
NO_BARGE = "+15550000002"    # barge-in disabled
SHORT = "+15550000003"       # max_call_seconds: 2
ZH = "+15550000004"          # Chinese persona
REALTIME_ONLY = "+15550000005"   # engine: realtime (no fallback chain)
CHAIN = "+15550000006"       # engine: chain
CHAIN_WS = "+15550000007"    # engine: chain, TTS over the WebSocket
DEAF_MODEL = "+15550000008"  # the model's VAD threshold is so high that only our local VAD hears the caller
IMPATIENT = "+15550000009"   # engine auto, realtime_response_timeout_s: 1

PERSONAS = f"""\
personas:
  - name: test-en
    default: true
    numbers: ["{EN}"]
    language: en
    voice: lively-girl
    instructions: You are a test assistant. Keep answers short.
    greeting: Hello, this is the test line of Acme. How can I help you today?
    realtime:
      turn_detection: {{silence_duration_ms: 500, prefix_padding_ms: 300, energy_awakeness_threshold: 2500}}
    barge_in: {{enabled: true, min_speech_ms: 200}}
  - name: test-no-barge
    numbers: ["{NO_BARGE}"]
    language: en
    voice: lively-girl
    instructions: You read a legal notice that must not be interrupted.
    greeting: Please listen carefully to this notice, it is important and it takes a while to read.
    barge_in: {{enabled: false}}
  - name: test-short
    numbers: ["{SHORT}"]
    language: en
    voice: lively-girl
    instructions: Short calls only.
    greeting: Hi.
    max_call_seconds: 2
  - name: test-zh
    numbers: ["{ZH}"]
    language: zh
    voice: qinhenvsheng
    instructions: 你是测试客服。
    greeting: 您好，这里是测试热线，请问有什么可以帮您？
  - name: test-realtime-only
    numbers: ["{REALTIME_ONLY}"]
    engine: realtime
    language: en
    voice: lively-girl
    instructions: Realtime only.
    greeting: Hello from the realtime only line.
  - name: test-chain
    numbers: ["{CHAIN}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are a test assistant on the chain engine.
    greeting: Hello, this is the chain line. How can I help?
    chain: {{silence_ms: 500}}
  - name: test-deaf-model
    numbers: ["{DEAF_MODEL}"]
    engine: realtime
    language: en
    voice: lively-girl
    instructions: Test.
    greeting: This greeting is long enough for the caller to talk over it before it ends, by design.
    realtime:
      turn_detection: {{energy_awakeness_threshold: 5000}}
    barge_in: {{enabled: true, min_speech_ms: 200}}
  - name: test-impatient
    numbers: ["{IMPATIENT}"]
    language: en
    voice: lively-girl
    instructions: Test.
    greeting: Hello from the impatient line.
    realtime_response_timeout_s: 1.0
  - name: test-chain-ws
    numbers: ["{CHAIN_WS}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: Chain with streaming TTS.
    greeting: Hello, this is the streaming line.
    chain: {{silence_ms: 500, tts_transport: ws}}
"""


POLL_S = 0.01


async def until(condition, *, timeout: float = 5.0, what: str = "the condition") -> None:
    """Wait until ``condition()`` holds (checked every 10 ms; it may be a coroutine function); fail naming
    ``what`` after ``timeout`` seconds."""
    async def holds() -> bool:
        value = condition()
        return bool(await value) if inspect.isawaitable(value) else bool(value)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def listening_socket() -> socket.socket:
    """A loopback socket bound to a free port, kept open for the server (tests run in parallel workers,
    so a port must not be given up between choosing it and serving on it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture(scope="session")
def caller_en():
    return read_wav_8k(FIXTURES / "caller_en.wav")


@pytest.fixture(scope="session")
def caller_interrupt():
    return read_wav_8k(FIXTURES / "caller_interrupt.wav")


@pytest.fixture(scope="session")
def caller_zh():
    return read_wav_8k(FIXTURES / "caller_zh.wav")


@dataclasses.dataclass
class Stack:
    url: str
    settings: Settings
    emulator: object
    transcripts: Path
    app: object = None

    async def idle(self, timeout: float = 5.0) -> None:
        """Wait until the server has finished every call (transcripts written, sockets closed)."""
        from voicebot.server import SERVICES

        calls = self.app[SERVICES].calls
        await until(lambda: not calls, timeout=timeout, what="every call to finish")


@contextlib.asynccontextmanager
async def running_stack(tmp_path, *, personas: str = PERSONAS, **more_dialplans: str):
    """The real server (create_app) with the emulator as its StepFun, both listening on loopback; the test
    personas (or ``personas``), and ``more_dialplans`` (file stem → YAML) beside them."""
    from voicebot.emulator.app import Emulator, start_emulator

    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "test.yaml").write_text(personas, encoding="utf-8")
    for stem, text in more_dialplans.items():
        (plans / f"{stem}.yaml").write_text(text, encoding="utf-8")
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator)
    try:
        yield Stack(url=settings.public_url, settings=settings, emulator=emulator,
                    transcripts=settings.transcripts_dir, app=app)
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()


@pytest.fixture
async def stack(tmp_path):
    """The real server (create_app) with the emulator as its StepFun, both listening on loopback."""
    async with running_stack(tmp_path) as running:
        yield running


async def start_voice_server(tmp_path, plans: Path, emulator, **overrides):
    """The real server (create_app) on a loopback socket, with ``emulator`` as its StepFun; ``overrides``
    replace settings fields."""
    from aiohttp import web

    from voicebot.server import create_app

    sock = listening_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        source="test", host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}",
        dialplans_dir=plans, transcripts_dir=tmp_path / "transcripts", recordings_dir=tmp_path / "recordings",
        database_url=f"sqlite:///{tmp_path / 'voicebot.db'}",
        stepfun=StepFunSettings(base_url=emulator.base_url, api_key="test-key", connect_timeout_s=3.0),
        twilio=TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN),
    )
    settings = dataclasses.replace(settings, **overrides)
    app = create_app(settings, load_dialplan(plans))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, settings, app


# Credentials of the carriers that authenticate with a secret from the environment (read when the app is built).
CARRIER_SECRETS = {
    "VONAGE_WS_TOKEN": "test-vonage-token-7e2a",
    "JAMBONZ_WS_PASSWORD": "test-jambonz-password-5b19",
    "ASTERISK_WS_PASSWORD": "test-asterisk-password-c3d0",
    "FREESWITCH_WS_SECRET": "test-freeswitch-secret-91fe",
}


@pytest.fixture
def carrier_secrets(monkeypatch):
    for name, value in CARRIER_SECRETS.items():
        monkeypatch.setenv(name, value)
    return dict(CARRIER_SECRETS)


@pytest.fixture
async def carrier_stack(carrier_secrets, stack):
    """``stack`` built with the carriers' secrets already in the environment (they are set up first)."""
    return stack
