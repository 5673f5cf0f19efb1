"""The disk failing under a call's transcript or recording, through the real server and emulator: the call
goes on (the caller is answered as before), the failure is logged once with the file and the error, the
call's record is stored with its whole transcript, and the file's descriptor is not kept.

The failure is real, not a patched function: once the server has opened the call's file, its descriptor is
pointed at ``/dev/full`` (``dup2``), on which every write fails with ENOSPC, as on a full disk."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from pathlib import Path

import pytest
import structlog

from voicebot import resources
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

from conftest import AUTH_TOKEN, EN, until
from faults import RECORDED, fault_stack, reply_to, stored_record, transcript_of, warm_up  # noqa: F401
from leaks import settled

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")


def fill_disk_under(path_suffix: str) -> int:
    """Point the descriptor this process holds open on a file ending with ``path_suffix`` at /dev/full;
    its descriptor number."""
    matches = [fd for fd, target in resources.open_fds().items() if target.endswith(path_suffix)]
    assert len(matches) == 1, (path_suffix, resources.open_fds())
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, matches[0])
    finally:
        os.close(full)
    return matches[0]


def test_dev_full_is_a_real_enospc():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


async def question_and_answer(stack, caller_en, to: str, during_call):
    """A caller asks a question and hangs up after the answer; ``during_call()`` runs once the call has
    started (the greeting is playing)."""
    async def call():
        return await simulate_twilio_call(
            stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=40,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                    Hangup(after_bot_done=True, pause_s=0.5)])

    task = asyncio.create_task(call())
    await during_call()
    result = await task
    assert result.end_reason == "hangup" and result.protocol_errors == []
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    assert answer and answer[0].ended_by == "drained" and answer[0].played_ms > 1000, answer
    await stack.idle()
    return result


async def test_disk_full_under_the_transcript_mid_call(stack, caller_en):
    before = await warm_up(stack, EN)
    known = set(stack.transcripts.glob("*/*.jsonl"))

    async def fill():
        await until(lambda: set(stack.transcripts.glob("*/*.jsonl")) - known, what="the call's transcript")
        new = (set(stack.transcripts.glob("*/*.jsonl")) - known).pop()
        fill_disk_under(new.name)

    with structlog.testing.capture_logs() as logs:
        result = await question_and_answer(stack, caller_en, EN, fill)
    failures = [e for e in logs if e["event"] == "transcript_write_failed"]
    assert len(failures) == 1, failures        # logged once, not once per line
    assert "No space left on device" in failures[0]["error"] and failures[0]["path"].endswith(".jsonl")
    # The call went on and left its whole record: the transcript's turns are in it.
    calls = [e for e in logs if e["event"] == "call_summary"]
    assert len(calls) == 1 and calls[0]["outcome"] == "completed"
    record = await stored_record(stack, failures[0]["call_id"])
    assert [t["role"] for t in record.transcript] == ["assistant", "user", "assistant"]
    assert record.transcript[2]["text"] == reply_to(record.transcript[1]["text"])
    await settled(stack, before)


async def test_transcripts_folder_that_cannot_be_created(stack, caller_en):
    """The transcripts folder cannot be made (its parent is not a directory): the call is answered anyway."""
    before = await warm_up(stack, EN)
    from voicebot.server import SERVICES
    services = stack.app[SERVICES]
    settings = services.settings
    services.settings = dataclasses.replace(settings, transcripts_dir=Path("/dev/full/transcripts"))

    async def nothing():
        pass

    try:
        with structlog.testing.capture_logs() as logs:
            await question_and_answer(stack, caller_en, EN, nothing)
    finally:
        services.settings = settings
    failures = [e for e in logs if e["event"] == "transcript_write_failed"]
    assert len(failures) == 1 and failures[0]["path"].startswith("/dev/full/transcripts/"), failures
    record = await stored_record(stack, failures[0]["call_id"])
    assert record.outcome == "completed" and len(record.transcript) == 3
    await settled(stack, before)


async def test_disk_full_under_the_recording_mid_call(fault_stack, caller_en):
    stack = fault_stack
    before = await warm_up(stack, RECORDED)
    recordings = stack.settings.recordings_dir
    known = set(recordings.glob("*.wav"))

    async def fill():
        await until(lambda: set(recordings.glob("*.wav")) - known, what="the call's recording")
        new = (set(recordings.glob("*.wav")) - known).pop()
        fill_disk_under(new.name)

    with structlog.testing.capture_logs() as logs:
        result = await question_and_answer(stack, caller_en, RECORDED, fill)
    failures = [e for e in logs if e["event"] == "recording_failed"]
    assert len(failures) == 1, failures
    assert "No space left on device" in failures[0]["error"]
    records = transcript_of(stack, result)
    end = records[-1]
    assert end["type"] == "call_end" and end["outcome"] == "completed" and end["recording"] is None
    record = await stored_record(stack, records[0]["call_id"])
    assert record.recording_path is None and len(record.transcript) == 3
    await settled(stack, before)
