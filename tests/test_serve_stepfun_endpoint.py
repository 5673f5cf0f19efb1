"""`voicebot serve` pointed at a separately started `voicebot emulator` by STEPFUN_BASE_URL alone (no key): the
call's realtime session is opened on that emulator, and serve's log says which endpoint it uses and why."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

REPO = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "endpoint-test-auth-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log_path: Path, *, sigint_ignored: bool = False) -> subprocess.Popen:
    """``sigint_ignored``: start it as a shell starts a background job (SIGINT ignored, and inherited so)."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    with open(log_path, "w") as log_file:     # a file: a pipe nobody reads could fill up and stall the process
        return subprocess.Popen([sys.executable, "-m", "voicebot.cli", *args], cwd=REPO, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore)


def _stop(proc: subprocess.Popen, log_path: Path) -> list[dict]:
    proc.send_signal(signal.SIGTERM if proc.args[3] == "serve" else signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


async def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                async with session.get(url):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


async def test_serve_uses_a_separate_emulator_named_by_the_base_url_alone(tmp_path, caller_en):
    env = {k: v for k, v in os.environ.items()
           if k not in ("STEP_API_KEY", "STEPFUN_BASE_URL", "VOICEBOT_CONFIG", "VOICEBOT_DATABASE_URL")}
    emulator_port, port = _free_port(), _free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}/step_plan/v1"
    emulator_log, server_log = tmp_path / "emulator.log", tmp_path / "server.log"
    emulator = _start(["emulator", "--port", str(emulator_port)], env, emulator_log)
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text()     # the shipped file, on this test's port and folders
                      .replace("port: 8080", f"port: {port}").replace("0.0.0.0", "127.0.0.1")
                      .replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
                      .replace("dialplans: dialplans", f"dialplans: {REPO / 'dialplans'}")
                      .replace("format: auto", "format: json"))
    server = None
    try:
        await _wait_http(f"http://127.0.0.1:{emulator_port}/", emulator, emulator_log)
        server = _start(["serve", "--config", str(config)],
                        {**env, "STEPFUN_BASE_URL": emulator_url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}, server_log)
        url = f"http://127.0.0.1:{port}"
        await _wait_http(url + "/healthz", server, server_log)
        result = await simulate_twilio_call(url, to="+15557650199", auth_token=AUTH_TOKEN, max_duration_s=30,
                                            script=[Say(caller_en, after_bot_done=True, pause_s=0.3),
                                                    Hangup(after_bot_done=True, pause_s=0.3)])
    finally:
        server_logs = _stop(server, server_log) if server is not None else []
        emulator_logs = _stop(emulator, emulator_log)
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    assert result.first_bot_audio_s is not None and len(result.utterances) == 1
    # The call's realtime session was the separate emulator's, and serve started no emulator of its own.
    sessions = [e for e in emulator_logs if e.get("event") == "emulator_realtime_session"]
    assert len(sessions) == 1 and sessions[0]["responses"] >= 2, emulator_logs
    assert not [e for e in server_logs if e.get("event") in ("emulator_listening", "stepfun_emulator_in_use")]
    endpoint = [e for e in server_logs if e.get("event") == "stepfun_endpoint"]
    assert len(endpoint) == 1, server_logs
    assert endpoint[0]["kind"] == "configured_url" and endpoint[0]["url"] == emulator_url
    assert "STEPFUN_BASE_URL" in endpoint[0]["reason"]


async def test_a_separate_emulator_stops_on_ctrl_c_while_a_realtime_session_is_open(tmp_path):
    """A client that keeps its realtime session open (mid-response, not reading) does not hold the emulator up:
    Ctrl-C stops it within seconds (aiohttp alone waits 60 s on open connections), also when the emulator was
    started with SIGINT ignored."""
    env = {k: v for k, v in os.environ.items() if k not in ("STEP_API_KEY", "STEPFUN_BASE_URL")}
    port = _free_port()
    log_path = tmp_path / "emulator.log"
    # Started with SIGINT ignored, as CI runners and shells start background jobs: Ctrl-C must still stop it.
    emulator = _start(["emulator", "--port", str(port)], env, log_path, sigint_ignored=True)
    try:
        await _wait_http(f"http://127.0.0.1:{port}/", emulator, log_path)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/step_plan/v1/realtime?model=stepaudio-2.5-realtime",
                                       headers={"Authorization": "Bearer any-key"})
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "session.created"
            await ws.send_str(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Tell me a long story about the sea."}]}}))
            await ws.send_str(json.dumps({"type": "response.create"}))
            await asyncio.sleep(0.5)                              # the reply streams; this client reads no more
            stopped_at = time.monotonic()
            emulator.send_signal(signal.SIGINT)
            while emulator.poll() is None and time.monotonic() - stopped_at < 20:
                await asyncio.sleep(0.1)
            took = time.monotonic() - stopped_at
    finally:
        if emulator.poll() is None:
            emulator.kill()
    assert emulator.returncode == 0 and took < 10, (emulator.returncode, took)
    assert "emulator_stopped" in log_path.read_text()
