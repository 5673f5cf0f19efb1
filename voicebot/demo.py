"""``voicebot demo`` and ``voicebot simulate``: one simulated Twilio call, with a timeline and a recording."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import secrets
import socket
import tempfile
from pathlib import Path

import numpy as np

from .audio.wav import read_wav_8k
from .simulator.caller import CallResult, Hangup, Say
from .simulator.twilio import simulate_twilio_call
from .transcript import read_transcript

# The demo speaks the same espeak-ng recordings the tests use (tests/fixtures/make_fixtures.sh).
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DEMO_NUMBER = "+15557650199"


def caller_script(first: np.ndarray, barge: np.ndarray | None) -> list:
    """Wait for the greeting, speak, talk over the bot's reply 800 ms into it, then hang up."""
    script: list = [Say(first, after_bot_done=True, pause_s=0.5, label="question")]
    if barge is not None:
        script.append(Say(barge, barge_after_bot_ms=800, label="talk-over"))
    script.append(Hangup(after_bot_done=True, pause_s=1.0))
    return script


def _latencies(result: CallResult) -> list[str]:
    lines = []
    if result.first_bot_audio_s is not None:
        lines.append(f"first bot audio heard    {result.first_bot_audio_s * 1000:7.0f} ms after the stream started")
    for utterance in result.utterances:
        if utterance.barge:
            continue
        starts = [s.start_s for s in result.segments if s.start_s > utterance.end_s]
        if starts:
            lines.append(f"reply to {utterance.label!r:<14} {(starts[0] - utterance.end_s) * 1000:7.0f} ms "
                         "after the caller stopped talking (includes the model's end-of-turn silence)")
    for reaction in result.barge_in_reaction_s:
        if reaction is None:
            lines.append("barge-in                 no clear arrived")
        else:
            lines.append(f"barge-in reaction        {reaction * 1000:7.0f} ms from caller speech to the carrier's clear")
    lines.append(f"marks echoed             {result.marks_echoed:7d}")
    lines.append(f"protocol errors          {len(result.protocol_errors):7d}")
    return lines


def _server_view(transcripts_dir: Path) -> list[str]:
    files = sorted(transcripts_dir.glob("*/*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return ["(no transcript written)"]
    lines = [f"transcript {files[-1]}"]
    for record in read_transcript(files[-1]):
        if record["type"] == "turn":
            extra = f" [interrupted, caller heard {record['heard_ms']} ms]" if record.get("interrupted") else ""
            lines.append(f"  {record['role']:>9}: {record['text']}{extra}")
        elif record["type"] == "barge_in":
            heard = ", ".join(f"{h['heard_ms']} of {h['generated_ms']} ms" for h in record["heard"])
            lines.append(f"  barge-in ({record['trigger']}): truncated at {heard}; server reaction "
                         f"{record['reaction_us']} µs")
        elif record["type"] == "call_end":
            lines.append(f"  call end: {record['end_reason']}; first bot audio {record['first_bot_audio_ms']} ms "
                         f"after the call started; {record['user_turns']} caller turns, {record['barge_ins']} barge-ins")
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _report(result: CallResult, wav_out: str) -> None:
    print(result.format_timeline(skip=("mark_received", "mark_sent_back")))
    print()
    print("\n".join(_latencies(result)))
    result.write_wav(wav_out)
    print(f"stereo recording (caller left, bot right): {wav_out}")


async def run_demo(config: str | None = None, wav_out: str = "demo-call.wav") -> int:
    from .config import load_settings
    from .dialplan import load_dialplan
    from .logs import configure_logging
    from .server import start_server

    settings = load_settings(config)
    configure_logging(settings.log_format, "warning")
    port = _free_port()
    transcripts = Path(tempfile.mkdtemp(prefix="voicebot-demo-"))
    auth_token = secrets.token_hex(16)   # signatures stay checked, with a token only this demo knows
    settings = dataclasses.replace(
        settings, public_url=f"http://127.0.0.1:{port}", transcripts_dir=transcripts,
        twilio=dataclasses.replace(settings.twilio, auth_token=auth_token, validate_signatures=True))
    dialplan = load_dialplan(settings.dialplans_dir)
    backend = "embedded StepFun emulator" if settings.stepfun.emulated else f"StepFun at {settings.stepfun.base_url}"
    print(f"voicebot demo: server on loopback with the {backend}; one simulated Twilio call")
    runners, settings, url = await start_server(settings, dialplan, host="127.0.0.1", port=port)
    try:
        persona = dialplan.lookup(DEMO_NUMBER)
        print(f"calling {DEMO_NUMBER} → persona {persona.name!r}; the caller asks a question, then talks over "
              "the bot's reply\n")
        result = await simulate_twilio_call(
            url, to=DEMO_NUMBER, auth_token=auth_token, max_duration_s=40.0,
            script=caller_script(read_wav_8k(FIXTURES / "caller_en.wav"),
                                 read_wav_8k(FIXTURES / "caller_interrupt.wav")))
    finally:
        for runner in runners:
            await runner.cleanup()
    _report(result, wav_out)
    print("\nserver side:")
    print("\n".join(_server_view(transcripts)))
    return 0 if not result.protocol_errors else 1


async def run_simulate(*, url: str, to: str, from_: str, wav: str, barge_wav: str | None, wav_out: str,
                       max_duration_s: float, auth_token: str | None, carrier: str = "twilio") -> int:
    """Each carrier's simulated caller lives in voicebot/simulator/<carrier>.py as ``simulate_call``."""
    try:
        module = importlib.import_module(f"voicebot.simulator.{carrier}")
    except ModuleNotFoundError:
        print(f"voicebot simulate: no simulated caller for carrier {carrier!r}")
        return 2
    script = caller_script(read_wav_8k(wav), read_wav_8k(barge_wav) if barge_wav else None)
    # Twilio-style carriers sign with the auth token; the others read their own secrets from the environment.
    accepts_token = "auth_token" in inspect.signature(module.simulate_call).parameters
    options = {"auth_token": auth_token} if auth_token and accepts_token else {}
    result = await module.simulate_call(url.rstrip("/"), to=to, from_=from_, script=script,
                                        max_duration_s=max_duration_s, **options)
    _report(result, wav_out)
    return 0 if not result.protocol_errors else 1


