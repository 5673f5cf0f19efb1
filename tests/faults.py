"""Shared by the fault tests (tests/test_faults_*.py): a call's transcript and stored record, a warm-up call,
arming an emulator fault at the right moment, and the leak check around a faulted call."""

from __future__ import annotations

import asyncio
import re

import pytest

from voicebot.simulator.caller import CallResult, Hangup
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import read_transcript

from conftest import AUTH_TOKEN, running_stack, until
from leaks import quiet

RECORDED = "+15550000090"          # engine auto, every call recorded
RECORDED_CHAIN = "+15550000091"    # engine chain, every call recorded
TTS_HTTP = "+15550000092"          # engine chain, TTS over HTTP (SSE), a stalled synthesis given up after 1.5 s
TTS_WS = "+15550000093"            # the same with TTS over the WebSocket
TTS_STALL_S = 1.5

FAULT_PERSONAS = f"""\
personas:
  - name: fault-recorded
    numbers: ["{RECORDED}"]
    language: en
    voice: lively-girl
    instructions: You are a test assistant whose calls are recorded.
    greeting: Hello, this call is recorded. How can I help you today?
    realtime:
      turn_detection: {{silence_duration_ms: 500, prefix_padding_ms: 300, energy_awakeness_threshold: 2500}}
    record: true
  - name: fault-recorded-chain
    numbers: ["{RECORDED_CHAIN}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are a test assistant on the chain engine whose calls are recorded.
    greeting: Hello, this chain call is recorded. How can I help you today?
    chain: {{silence_ms: 500}}
    record: true
  - name: fault-tts-http
    numbers: ["{TTS_HTTP}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are a test assistant on the chain engine.
    greeting: Hello, this is the chain line. How can I help?
    chain: {{silence_ms: 500, tts_stall_s: {TTS_STALL_S}}}
  - name: fault-tts-ws
    numbers: ["{TTS_WS}"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: You are a test assistant on the chain engine.
    greeting: Hello, this is the streaming line. How can I help?
    chain: {{silence_ms: 500, tts_transport: ws, tts_stall_s: {TTS_STALL_S}}}
"""


@pytest.fixture
async def fault_stack(tmp_path):
    """conftest's ``stack`` (the real server and the emulator on loopback) with the personas above too."""
    async with running_stack(tmp_path, faults=FAULT_PERSONAS) as running:
        yield running


def reply_to(transcript: str) -> str:
    """The emulator's answer (realtime or chain) to the caller speech it transcribed as ``transcript``."""
    seconds = float(re.fullmatch(r"\(caller speech (\d+\.\d+) s\)", transcript).group(1))
    return f"You said something for {seconds:.1f} seconds."


def transcript_of(stack, result: CallResult) -> list[dict]:
    """The transcript file of the server's call for the simulated call ``result`` (matched by the carrier's
    call id), read once the server has finished it."""
    for path in sorted(stack.transcripts.glob("*/*.jsonl")):
        records = read_transcript(path)
        if records and records[0].get("call_sid") == result.call_id:
            return records
    raise AssertionError(f"no transcript for call {result.call_id}")


def turns(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "turn"]


def of_type(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["type"] == kind]


async def stored_record(stack, call_id: str):
    """The call's record as the database holds it, once the record writer has stored what it was given."""
    from voicebot.api.common import DATABASE
    from voicebot.server import SERVICES

    records = stack.app[SERVICES].records
    await until(lambda: records.stats()["pending"] == 0, what="the record writer to store the call's record")
    record = await stack.app[DATABASE].store.get_call(call_id)
    assert record is not None, f"no stored record for call {call_id}"
    return record


async def warm_up(stack, to: str):
    """One short call first, so that what the process creates once (the playout pacer, the record writer's
    first batch, pooled connections) is in the baseline; then the process at rest."""
    await simulate_twilio_call(stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=15,
                               script=[Hangup(after_bot_done=True, pause_s=0.2)])
    return await quiet(stack)


def arm_after_greeting(stack, **faults) -> asyncio.Task:
    """Set emulator ``faults`` once the next realtime session has finished its greeting (so that they hit
    the answer to the caller, not the greeting)."""
    sessions = stack.emulator.sessions
    known = len(sessions)

    async def arm() -> None:
        await until(lambda: len(sessions) > known, timeout=10, what="the call's realtime session")
        await sessions[known].wait_sent("response.done", timeout=20)
        for name, value in faults.items():
            setattr(stack.emulator.faults, name, value)
    return asyncio.create_task(arm())
