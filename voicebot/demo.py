"""``voicebot demo`` and ``voicebot simulate``: one simulated Twilio call, with a timeline and a recording."""

from __future__ import annotations

import dataclasses
import json
import importlib
import inspect
import secrets
import socket
import tempfile
from pathlib import Path

import numpy as np

from .audio.wav import read_wav_8k
from .simulator.caller import CallResult, Hangup, Press, Say
from .simulator.twilio import simulate_twilio_call
from .transcript import read_transcript

# The demo speaks the same espeak-ng recordings the tests use (tests/fixtures/make_fixtures.sh).
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DEMO_NUMBER = "+15557650199"


# The demo's persona asks the model for one tool call (the emulated model follows such lines; so would a real
# one): after the caller's third turn, the keypress, it hands the call to sales.
DEMO_TRANSFER = ('On caller turn 3, say "Connecting you to our sales team now." and call transfer '
                 '{"target": "sales"}.')


def caller_script(first: np.ndarray, barge: np.ndarray | None, *, press: str | None = None) -> list:
    """Wait for the greeting, speak, talk over the bot's reply 800 ms into it, optionally press a key, then
    hang up (unless the bot has ended or moved the call by then)."""
    script: list = [Say(first, after_bot_done=True, pause_s=0.5, label="question")]
    if barge is not None:
        script.append(Say(barge, barge_after_bot_ms=800, label="talk-over"))
    if press is not None:
        script.append(Press(press, after_bot_done=True, pause_s=0.5, label="keypad"))
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
    return transcript_lines(files[-1])


def transcript_lines(path: Path) -> list[str]:
    """A call's transcript file as the demo shows it."""
    lines = [f"transcript {path}"]
    for record in read_transcript(path):
        if record["type"] == "turn":
            extra = f" [interrupted, caller heard {record['heard_ms']} ms]" if record.get("interrupted") else ""
            lines.append(f"  {record['role']:>9}: {record['text']}{extra}")
        elif record["type"] == "barge_in":
            heard = ", ".join(f"{h['heard_ms']} of {h['generated_ms']} ms" for h in record["heard"])
            lines.append(f"  barge-in ({record['trigger']}): truncated at {heard}; server reaction "
                         f"{record['reaction_us']} µs")
        elif record["type"] == "tool":
            lines.append(f"  tool call: {record['name']}({record['arguments']}) → "
                         f"{'ok' if record['ok'] else 'error'} {json.dumps(record['result'])}")
        elif record["type"] == "transfer":
            lines.append(f"  transfer to {record['target_name']} ({record['target']}) after the last words played")
        elif record["type"] == "dtmf":
            lines.append(f"  keypress: {record['digit']}")
        elif record["type"] == "amd_verdict":
            lines.append(f"  answering-machine verdict: {record['answered_by']} ({record['t_ms']} ms into the call)")
        elif record["type"] == "call_end":
            lines.append(f"  call end: {record['end_reason']}; first bot audio {record['first_bot_audio_ms']} ms "
                         f"after the call started; {record['user_turns']} caller turns, {record['barge_ins']} barge-ins")
    return lines


def fake_twilio_account() -> tuple[str, str]:
    """(Account SID, auth token) for a faked Twilio: signatures stay checked, with a token only this demo knows."""
    return "AC" + secrets.token_hex(16), secrets.token_hex(16)


def offline_settings(settings, port: int, twilio_api):
    """``settings`` for a demo server on loopback ``port``: its files in a new temporary folder, Twilio's REST API
    the fake ``twilio_api``."""
    work = Path(tempfile.mkdtemp(prefix="voicebot-demo-"))
    return dataclasses.replace(
        settings, public_url=f"http://127.0.0.1:{port}", transcripts_dir=work / "transcripts",
        recordings_dir=work / "recordings", database_url=f"sqlite:///{work / 'voicebot.db'}",
        twilio=dataclasses.replace(settings.twilio, auth_token=twilio_api.auth_token, validate_signatures=True,
                                   account_sid=twilio_api.account_sid, api_base_url=twilio_api.base_url))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _report(result: CallResult, wav_out: str) -> None:
    print(result.format_timeline(skip=("mark_received", "mark_sent_back")))
    print()
    print("\n".join(_latencies(result)))
    result.write_wav(wav_out)
    print(f"stereo recording (caller left, bot right): {wav_out}")


def _demo_dialplan(dialplan):
    """The dialplan with the demo number's persona recording its call and asked for one transfer."""
    persona = dialplan.lookup(DEMO_NUMBER)
    if "sales" not in persona.tools.transfer:
        return dialplan, persona
    demo = dataclasses.replace(persona, record=True, instructions=f"{persona.instructions.rstrip()}\n{DEMO_TRANSFER}")
    replace_persona(dialplan, persona, demo)
    return dialplan, demo


def replace_persona(dialplan, persona, replacement) -> None:
    """``replacement`` takes ``persona``'s place in the dialplan: its name, its numbers, default or not."""
    dialplan.personas[dialplan.personas.index(persona)] = replacement
    for number, owner in dialplan.by_number.items():
        if owner is persona:
            dialplan.by_number[number] = replacement
    if dialplan.default is persona:
        dialplan.default = replacement


async def run_demo(config: str | None = None, wav_out: str = "demo-call.wav") -> int:
    from .config import load_settings
    from .dialplan import load_dialplan
    from .logs import configure_logging
    from .server import start_server
    from .simulator.carrier_api import FakeTwilioApi

    settings = load_settings(config)
    configure_logging(settings.log_format, "warning")
    port = free_port()
    twilio_api = await FakeTwilioApi(*fake_twilio_account()).start()   # Twilio's REST API, on loopback
    settings = offline_settings(settings, port, twilio_api)
    dialplan, persona = _demo_dialplan(load_dialplan(settings.dialplans_dir))
    backend = "embedded StepFun emulator" if settings.stepfun.emulated else f"StepFun at {settings.stepfun.base_url}"
    print(f"voicebot demo: server on loopback with the {backend}, Twilio's REST API faked on loopback; "
          "one simulated Twilio call")
    runners, settings, url = await start_server(settings, dialplan, host="127.0.0.1", port=port)
    try:
        print(f"calling {DEMO_NUMBER} → persona {persona.name!r}; the caller asks a question, talks over the "
              "bot's reply, then presses 1 and the bot transfers the call to sales\n")
        result = await simulate_twilio_call(
            url, to=DEMO_NUMBER, auth_token=twilio_api.auth_token, max_duration_s=45.0, carrier_api=twilio_api,
            script=caller_script(read_wav_8k(FIXTURES / "caller_en.wav"),
                                 read_wav_8k(FIXTURES / "caller_interrupt.wav"), press="1"))
    finally:
        for runner in runners:
            await runner.cleanup()
        await twilio_api.close()
    _report(result, wav_out)
    print("\nTwilio's REST API received:")
    for request in twilio_api.requests:
        fields = ", ".join(f"{k}={v}" for k, v in request.form.items())
        print(f"  {(request.at - result.t0) * 1000:7.0f} ms  {request.method} {request.path}  {fields}  → "
              f"{request.status}")
    if not twilio_api.requests:
        print("  (nothing)")
    print("\nserver side:")
    print("\n".join(_server_view(settings.transcripts_dir)))
    print("\n".join(await _record_view(settings)))
    return 0 if not result.protocol_errors else 1


async def _record_view(settings) -> list[str]:
    """The call's record as the database keeps it (what GET /api/calls/{id} answers)."""
    from .store import Store

    store = await Store.open(settings.database_url)
    try:
        summaries, _ = await store.list_calls(limit=1)
        record = await store.get_call(summaries[0].id) if summaries else None
    finally:
        await store.close()
    if record is None:
        return ["(no call record)"]
    tools = ", ".join(f"{t['name']}({t['arguments']}) → {'ok' if t['ok'] else 'error'}" for t in record.tools)
    return [f"call record {record.id} in {settings.database_url}:",
            f"  outcome {record.outcome}" + (f" → {record.transfer_target}" if record.transfer_target else "")
            + f", {record.duration_s:.1f} s, {record.user_turns} caller turns, {record.barge_ins} barge-ins, "
              f"engines {', '.join(record.engines)}",
            f"  tools: {tools or 'none'}",
            f"  recording (as the caller heard it): {record.recording_path}"]


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


