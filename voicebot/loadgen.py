"""The load test's child processes (``python -m voicebot.loadgen emulator|callers``), each on its own core
budget so that their CPU is not the server's: the StepFun emulator with per-session counters, and a worker
of simulated Twilio callers that prints one JSON summary of its calls. :mod:`voicebot.loadtest` starts them
and reads what they report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
NUMBER = "+15550100000"
FRAME_S = 0.020


# ------------------------------------------------------------------------------------------------ the emulator

def emulator_main(port: int, speed: float) -> None:
    """The StepFun emulator (record=False) plus ``GET /debug/stats``: per-session counters."""
    from aiohttp import web

    from .emulator.app import Emulator, create_app
    from .logs import configure_logging

    configure_logging("json", "warning")
    emulator = Emulator(speed=speed, record=False)
    app = create_app(emulator)

    async def stats(request: web.Request) -> web.Response:
        sessions = emulator.sessions
        return web.json_response({
            "sessions": len(sessions), "open": sum(1 for s in sessions if not s.closed),
            "appends": sum(s.appends for s in sessions),
            "events_received": sum(s.events_received for s in sessions),
            "events_sent": sum(s.events_sent for s in sessions),
            "errors_sent": sum(s.errors_sent for s in sessions),
            "responses": sum(len(s.responses) for s in sessions),
            "asr_requests": emulator.asr_requests, "asr_audio_ms": emulator.asr_audio_ms})

    app.router.add_get("/debug/stats", stats)
    run_app(app, port)


def run_app(app, port: int) -> None:
    from aiohttp import web

    _use_uvloop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handle_signals=True)


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# ------------------------------------------------------------------------------------------------ the callers

def caller_script(rng: np.random.Generator, fixtures: dict[str, np.ndarray], barge_share: float, turns: int = 60):
    """Wait for the greeting; then turns of speech, each after the bot's reply and a pause, or (a share of
    them) over the bot's reply ``barge_after_bot_ms`` into it. Runs until the call's time is up."""
    from .simulator.caller import Say

    script = []
    for turn in range(turns):
        if turn > 0 and rng.random() < barge_share:
            script.append(Say(fixtures["caller_interrupt"], barge_after_bot_ms=float(rng.uniform(400, 1500)),
                              label="barge"))
        else:
            wav = fixtures["caller_en" if rng.random() < 0.5 else "caller_zh"]
            script.append(Say(wav, after_bot_done=True, pause_s=float(rng.uniform(0.3, 1.2)), label="turn"))
    return script


def summarize_call(result) -> dict:
    """The per-call figures the report needs (the full CallResult stays in the worker)."""
    gaps = [u.gap_ms / 1000 for u in result.underruns]
    return {
        "frames_sent": int(round(result.duration_s / FRAME_S)),
        "media_received": len(result.media_received),
        "late_frames": int(sum(max(1, round(g / FRAME_S)) for g in gaps)),
        "underruns": len(gaps),
        "first_bot_audio_s": result.first_bot_audio_s,
        "barge_reaction_s": [r for r in result.barge_in_reaction_s],
        "barges": sum(1 for u in result.utterances if u.barge),
        "turns": len(result.utterances),
        "clears": len(result.clears),
        "marks_echoed": result.marks_echoed,
        "protocol_errors": len(result.protocol_errors),
        "end_reason": result.end_reason,
        "setup_s": result.setup_s,
        "max_tick_lag_ms": result.max_tick_lag_ms,
        "late_ticks": result.late_ticks,
        "duration_s": result.duration_s,
    }


async def _run_callers(url: str, auth_token: str, specs: list[dict], barge_share: float) -> list[dict]:
    import aiohttp

    from .audio.wav import read_wav_8k
    from .simulator.caller import CallSetupError
    from .simulator.twilio import simulate_twilio_call

    fixtures = {name: read_wav_8k(FIXTURES / f"{name}.wav")
                for name in ("caller_en", "caller_zh", "caller_interrupt")}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def one(spec: dict) -> dict:
        rng = np.random.default_rng(spec["seed"])
        script = caller_script(rng, fixtures, barge_share)
        await asyncio.sleep(max(0.0, spec["start_at"] - time.monotonic()))
        started = time.monotonic()
        try:
            result = await simulate_twilio_call(
                url, to=NUMBER, auth_token=auth_token, script=script, record=False, seed=spec["seed"],
                max_duration_s=max(1.0, spec["end_at"] - started), http_session=session,
                connect_timeout_s=30.0)
        except CallSetupError as exc:
            return {"error": str(exc)[:300], "started": started}
        except Exception as exc:   # a broken call is a finding, not a crash of the load test
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "started": started}
        summary = summarize_call(result)
        summary["start_lag_s"] = started - spec["start_at"]
        return summary

    try:
        return await asyncio.gather(*(one(spec) for spec in specs))
    finally:
        await session.close()


def worker_main(url: str, auth_token: str, specs_json: str, barge_share: float) -> None:
    """One caller process: runs its calls, prints one JSON object (per-call summaries, its own CPU)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    uv = _use_uvloop()
    specs = json.loads(specs_json)
    cpu0, t0 = time.process_time(), time.monotonic()
    calls = asyncio.run(_run_callers(url, auth_token, specs, barge_share))
    print(json.dumps({"calls": calls, "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0,
                      "uvloop": uv}))



def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m voicebot.loadgen")
    sub = p.add_subparsers(dest="role", required=True)
    emu = sub.add_parser("emulator")
    emu.add_argument("--port", type=int, required=True)
    emu.add_argument("--speed", type=float, default=2.0)
    callers = sub.add_parser("callers")
    callers.add_argument("--url", required=True)
    callers.add_argument("--auth-token-env", required=True)
    callers.add_argument("--barge-share", type=float, default=0.3)
    callers.add_argument("--specs", required=True)
    a = p.parse_args(argv)
    if a.role == "emulator":
        emulator_main(a.port, a.speed)
    else:
        worker_main(a.url, os.environ[a.auth_token_env], a.specs, a.barge_share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
