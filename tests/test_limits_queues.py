"""Every queue between the carrier, the call, the engine and StepFun is bounded: a peer that stops reading
(a hung StepFun, a carrier that takes no more audio) cannot make a call hold more than a stated bound, and
the call fails over or ends with a clear reason. Measured on the live buffers of real calls
(tests/call_buffers.py) through the real server, against the emulator's stall fault."""

from __future__ import annotations

import asyncio
import dataclasses
import base64
import json
import socket

import numpy as np
import pytest
import structlog

from voicebot.audio import FRAME_SAMPLES
from voicebot.call import SWITCH_BUFFER_FRAMES
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.stepfun import realtime as stepfun_realtime
from voicebot.telephony import transport as carrier_transport
from voicebot.wsserver import MAX_BUFFERED_BYTES as CARRIER_MAX_UNSENT

from call_buffers import BufferWatch
from carrier_wire import ALL_CARRIER_SECRETS, CarrierConnection
from conftest import AUTH_TOKEN, EN, NO_BARGE, until
from test_limits_media import assert_undisturbed, audiosocket_port, call_beside, long_speech  # noqa: F401

APPEND_BYTES = 1336     # one 20 ms append on the wire (stepfun/realtime.py)


@pytest.fixture(autouse=True)
def all_carrier_secrets(monkeypatch):
    for name, value in ALL_CARRIER_SECRETS.items():
        monkeypatch.setenv(name, value)


async def watch_call(stack, watches: dict[str, BufferWatch], *, every_s: float = 0.05) -> None:
    """Sample the buffers of every call of ``stack`` until cancelled (each call into its own watch)."""
    while True:
        for call in list(stack.app[SERVICES].calls):
            watches.setdefault(call.meta.carrier, BufferWatch()).sample(call)
        await asyncio.sleep(every_s)


def shrink_send_buffer(transport, size: int = 4096) -> None:
    """Make the kernel hold little of what ``transport`` sends, so that a peer not reading backs it up here
    within seconds instead of after megabytes."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def the_call_of(stack, carrier: str):
    return next((call for call in stack.app[SERVICES].calls if call.meta.carrier == carrier), None)


async def test_a_carrier_that_stops_reading_the_bots_audio_is_dropped_at_its_bound(stack, caller_en):
    """A Vonage connection (L16 at 24 kHz: 48 KB of bot audio a second) stops reading once its call is up;
    the caller's audio keeps coming and asks a question, so the bot's greeting and answer pile up in the
    server's socket until the carrier's backlog bound, where the connection is dropped and the call ends
    saying why. The call beside goes on."""
    watches: dict = {}
    beside = call_beside(stack, caller_en)
    conn = await CarrierConnection.open("vonage", stack.url, to=NO_BARGE, rate=24000, receive_buffer=4096)
    await until(lambda: the_call_of(stack, "vonage") is not None, what="the Vonage call")
    call = the_call_of(stack, "vonage")
    shrink_send_buffer(call._close_carrier.__self__.transport.ws.transport)
    conn.stop_reading()
    watching = asyncio.create_task(watch_call(stack, watches))
    audio = np.concatenate([np.zeros(6 * 8000, np.int16), caller_en, np.zeros(10 * 8000, np.int16)])
    with structlog.testing.capture_logs() as logs:
        sending = asyncio.create_task(conn.send_speech(audio))
        await asyncio.wait_for(call.finished(), 20)
        sending.cancel()
        result = await beside
    watching.cancel()
    await conn.close()
    peaks = watches["vonage"].peaks
    assert call.end_reason.startswith("carrier socket closed: peer is not reading ("), call.end_reason
    problems = [e["problem"] for e in logs if e["event"] == "carrier_protocol_error" and e["carrier"] == "vonage"]
    assert problems and problems[0].startswith("peer is not reading")
    assert 0.75 * CARRIER_MAX_UNSENT < peaks["carrier_unsent_bytes"] <= CARRIER_MAX_UNSENT + 960   # + one frame
    assert_undisturbed(result)


async def test_a_tcp_carrier_that_stops_reading_is_dropped_at_the_outboxs_bound(stack, audiosocket_port, caller_en,
                                                                                 monkeypatch):
    """AudioSocket (plain TCP: sends wait for the socket, behind the outbox) stops reading: the outbox holds the
    bot's audio up to its bound (made 16 KB here: 1 s of AudioSocket audio, so that the greeting and one
    answer overflow it), then the connection is dropped and the call ends saying why."""
    monkeypatch.setattr(carrier_transport, "MAX_BACKLOG_BYTES", 16 * 1024)
    watches: dict = {}
    conn = await CarrierConnection.open("audiosocket", stack.url, to=EN, port=audiosocket_port, receive_buffer=4096)
    await until(lambda: the_call_of(stack, "audiosocket") is not None, what="the AudioSocket call")
    call = the_call_of(stack, "audiosocket")
    shrink_send_buffer(call._close_carrier.__self__.transport.writer.transport)
    conn.stop_reading()
    watching = asyncio.create_task(watch_call(stack, watches))
    audio = np.concatenate([np.zeros(5 * 8000, np.int16), caller_en, np.zeros(12 * 8000, np.int16)])
    sending = asyncio.create_task(conn.send_speech(audio))
    await asyncio.wait_for(call.finished(), 25)
    sending.cancel()
    watching.cancel()
    await conn.close()
    assert call.end_reason.startswith("carrier socket closed: peer is not reading ("), call.end_reason
    assert 0 < watches["audiosocket"].peaks["outbox_bytes"] <= 16 * 1024


@pytest.fixture
async def hung_sessions_released(stack):
    """A hung emulator session reads nothing, so it never sees the client go: its socket is dropped at the end
    (else the emulator's shutdown would wait for it)."""
    yield
    for session in stack.emulator.sessions:
        if session.close_reason == "fault: stalled":
            session.ws.transport.abort()


def realtime_socket(stack):
    """The transport of the (only) call's StepFun realtime socket, once it is connected."""
    calls = stack.app[SERVICES].calls
    conn = getattr(next(iter(calls)).engine, "_conn", None) if calls else None
    return getattr(conn, "_transport", None)


async def test_a_hung_stepfun_holds_no_more_than_its_bound_and_the_watchdog_fails_the_call_over(
        stack, hung_sessions_released, caller_en):
    """StepFun hangs mid-greeting (says nothing more, reads nothing): the reply is due, so after
    realtime_response_timeout_s (8 s) the engine's watchdog fails the call over to the chain, which greets
    again and answers. Meanwhile the caller's speech (from 2.5 s, once the greeting's audio has run out: no
    barge-in) piles up only in the dead socket, under its bound."""
    stack.emulator.faults.stall_realtime_after_s = 0.6
    watches: dict = {}
    watching = asyncio.create_task(watch_call(stack, watches))
    with structlog.testing.capture_logs() as logs:
        calling = asyncio.create_task(simulate_twilio_call(
            stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
            script=[Say(long_speech(caller_en, 6), at_s=2.5, label="talks to a hung model"),
                    Say(caller_en, after_bot_done=True, pause_s=0.4, label="asks the chain"),
                    Hangup(after_bot_done=True, pause_s=0.5)]))
        await until(lambda: realtime_socket(stack) is not None, what="the call's StepFun socket")
        shrink_send_buffer(realtime_socket(stack))
        result = await calling
        await stack.idle()
    watching.cancel()
    peaks = watches["twilio"].peaks
    assert result.protocol_errors == [] and result.end_reason == "hangup", result.format_timeline()
    assert result.duration_s > 12
    switches = [e for e in logs if e["event"] == "engine_switch"]
    assert len(switches) == 1 and switches[0]["reason"].startswith("no realtime events for 8."), switches
    assert stack.emulator.sessions[0].close_reason == "fault: stalled"
    # The chain took over: its greeting, then the answer to the question, were heard.
    after_switch = [s for s in result.segments if s.start_s > 9]
    assert len(after_switch) >= 2 and all(s.played_ms > 1000 for s in after_switch[:2]), result.format_timeline()
    # What the hung socket and the switch could make the call hold.
    assert 100_000 < peaks["stepfun_unsent_bytes"] <= stepfun_realtime.MAX_BUFFERED_BYTES
    assert peaks["caller_frames_held"] <= SWITCH_BUFFER_FRAMES
    assert peaks["outbox_messages"] == 0 and peaks["carrier_unsent_bytes"] < CARRIER_MAX_UNSENT


async def test_a_hung_stepfun_that_no_reply_waits_on_is_dropped_at_its_bound_and_the_call_fails_over(
        stack, hung_sessions_released, caller_en):
    """The caller talks over the greeting as StepFun hangs: the greeting is cancelled, no reply is due, so the
    watchdog has nothing to wait for; the caller's speech fills the dead socket until its bound, where the
    socket is dropped and the call fails over to the chain."""
    stack.emulator.faults.stall_realtime_after_s = 0.6
    watches: dict = {}
    watching = asyncio.create_task(watch_call(stack, watches))
    with structlog.testing.capture_logs() as logs:
        calling = asyncio.create_task(simulate_twilio_call(
            stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
            script=[Say(long_speech(caller_en, 14), at_s=1.5, label="talks over the greeting, on and on"),
                    Hangup(at_s=16)]))
        await until(lambda: realtime_socket(stack) is not None, what="the call's StepFun socket")
        shrink_send_buffer(realtime_socket(stack))
        result = await calling
        await stack.idle()
    watching.cancel()
    peaks = watches["twilio"].peaks
    assert result.protocol_errors == [] and result.end_reason == "hangup", result.format_timeline()
    assert len(result.clears) == 1                                   # the barge-in: no reply is due
    dropped = [e for e in logs if e["event"] == "stepfun_not_reading"]
    assert len(dropped) == 1 and dropped[0]["buffered"] > stepfun_realtime.MAX_BUFFERED_BYTES
    switches = [e for e in logs if e["event"] == "engine_switch"]
    assert len(switches) == 1 and switches[0]["reason"].startswith("realtime socket"), switches
    assert switches[0]["t_ms"] < 14000
    assert peaks["stepfun_unsent_bytes"] <= stepfun_realtime.MAX_BUFFERED_BYTES + APPEND_BYTES
    assert peaks["caller_frames_held"] <= SWITCH_BUFFER_FRAMES


async def test_behind_a_proxy_the_stepfun_client_bounds_its_queue_too(stack, hung_sessions_released, caller_en):
    """Where a proxy is configured the client is websockets' own, whose send waits while StepFun does not
    read: what waits in front of it is bounded the same way, and the connection is dropped at the bound."""
    stack.emulator.faults.stall_realtime_after_s = 0.3
    conn = await stepfun_realtime._LibraryConnection.open(
        f"{stack.emulator.ws_url}/realtime?model=stepaudio-2.5-realtime", {"Authorization": "Bearer key"}, 3.0)
    assert (await conn.next_event())["type"] == "session.created"
    await asyncio.sleep(0.6)                                      # hung now
    shrink_send_buffer(conn._ws.transport)
    speech24 = np.repeat(long_speech(caller_en, 30), 3)           # 24 kHz, as the engine sends it
    peak, loop = 0, asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        t0 = loop.time()
        for i in range(0, len(speech24), 3 * FRAME_SAMPLES):      # appends at twice real time
            if conn.close_reason is not None:
                break
            audio = speech24[i:i + 3 * FRAME_SAMPLES].tobytes()
            conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})
            peak = max(peak, conn._queued_bytes)
            await asyncio.sleep(0.01)
        await until(lambda: conn.close_reason is not None, what="the connection to end")
    await conn.close()
    assert loop.time() - t0 < 10
    assert [e["event"] for e in logs if e["event"] == "stepfun_not_reading"] == ["stepfun_not_reading"]
    assert conn.close_reason == "connection lost"
    assert stepfun_realtime.MAX_BUFFERED_BYTES - APPEND_BYTES < peak <= stepfun_realtime.MAX_BUFFERED_BYTES


# -- the bounds of the other queues, each on its own ------------------------------------------------------

def test_asterisk_xoff_holds_at_most_its_bound_and_sends_what_it_held_at_xon(caller_en):
    from voicebot.telephony import asterisk
    sent: list = []
    session = asterisk.AsteriskSession(sent.append, sent.append)
    session.handle_text('{"event":"MEDIA_START","format":"ulaw","optimal_frame_size":160}')
    session.handle_text('{"event":"MEDIA_XOFF"}')
    speech = long_speech(caller_en, 60)                         # a minute of bot audio, 480 KB of ulaw
    with structlog.testing.capture_logs() as logs:
        for i in range(0, len(speech), FRAME_SAMPLES):
            session.send_audio(speech[i:i + FRAME_SAMPLES])
            if i % (5 * FRAME_SAMPLES) == 0:
                session.send_mark(f"vb{i}")
    assert sent == []
    assert sum(len(item) for item in session._held) <= asterisk.XOFF_HELD_MAX_BYTES
    assert session.xoff_dropped > 1000
    assert [e["event"] for e in logs] == ["asterisk_xoff_overflow"]
    session.handle_text('{"event":"MEDIA_XON"}')
    assert 0.99 * asterisk.XOFF_HELD_MAX_BYTES < sum(len(item) for item in sent) <= asterisk.XOFF_HELD_MAX_BYTES
    assert json.loads(sent[1]) == {"command": "MARK_MEDIA", "correlation_id": "vb0"}      # in order
    session.send_audio(speech[:FRAME_SAMPLES])
    assert len(sent[-1]) == 160 and session._held == []


def test_the_playout_holds_at_most_its_bound_of_bot_audio_and_says_so_once(caller_en):
    from test_playout import CarrierModel, Clock
    from voicebot.audio.playout import MAX_QUEUED_FRAMES, Playout
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, clock=clock, log=structlog.get_logger())
    answer = long_speech(caller_en, 6 * 60)                    # a runaway engine: six minutes at once
    with structlog.testing.capture_logs() as logs:
        for i in range(0, len(answer), 8000):                  # in 1 s deltas
            playout.enqueue("item_1", answer[i:i + 8000])
        playout.end_item("item_1")
    assert len(playout._frames) <= MAX_QUEUED_FRAMES + 1        # + the item's padded tail
    assert playout.frames_overflowed == 6 * 60 * 50 - MAX_QUEUED_FRAMES
    assert [e["event"] for e in logs] == ["playout_full"]


def test_marks_a_carrier_never_echoes_are_forgotten_past_the_bound(caller_en):
    from test_playout import CarrierModel, Clock
    from voicebot.audio import playout as playout_module
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = playout_module.Playout(carrier, lead_ms=100, mark_every_ms=100, clock=clock)
    speech = long_speech(caller_en, 11 * 60)                     # eleven minutes of bot audio: 6 600 marks
    for second in range(0, len(speech), 8000):
        playout.enqueue("item_1", speech[second:second + 8000])
        for _ in range(50):
            playout.pump()                                       # the carrier plays, and never echoes
            clock.t += 0.02
    assert len(carrier.sent_marks) > playout_module.MAX_PENDING_MARKS
    assert len(playout._marks) == playout_module.MAX_PENDING_MARKS


async def test_a_hung_disk_holds_at_most_the_writers_bound_of_recordings_and_the_call_goes_on(
        tmp_path, monkeypatch, caller_en):
    import threading

    from voicebot import recording
    from test_playout import Clock
    monkeypatch.setattr(recording, "MAX_WRITE_BACKLOG_BYTES", 256 * 1024)
    disk = threading.Event()                                      # set: the disk answers again
    write_all = recording._write_all
    monkeypatch.setattr(recording, "_write_all", lambda fd, data: (disk.wait(30), write_all(fd, data)))
    writer = recording._shared_writer()
    clock = Clock()
    recorder = recording.CallRecorder(tmp_path / "hung.wav", clock=clock, log=structlog.get_logger())
    speech = long_speech(caller_en, 30)                           # 30 s of a call: 960 KB of stereo audio
    peak = 0
    try:
        with structlog.testing.capture_logs() as logs:
            for i in range(0, len(speech), FRAME_SAMPLES):
                clock.t += 0.02
                recorder.caller(speech[i:i + FRAME_SAMPLES])
                peak = max(peak, writer.backlog_bytes)
        assert peak <= 256 * 1024
        assert recorder.failed.startswith("the disk is not keeping up")
        assert [e["event"] for e in logs] == ["recording_failed"]
    finally:
        disk.set()
    recorder.close()
    assert await recorder.finished() is None
    assert writer.backlog_bytes == 0


async def test_the_chain_keeps_at_most_its_bound_of_caller_turns_waiting_when_stepfun_is_slow(stack, caller_en,
                                                                                            monkeypatch):
    """On the chain, StepFun's HTTP endpoints take 20 s to answer (the greeting's synthesis is stuck), and the
    caller asks seven short questions meanwhile: four wait, the rest are dropped with a log line each."""
    from voicebot.engines.chain import MAX_WAITING_TURNS
    from conftest import CHAIN
    stack.emulator.faults.http_delay_s = 20.0
    # Slow, not stalled: the persona waits out the 20 s (by default a synthesis silent for 5 s is given up, which
    # would let one waiting turn through mid-test).
    dialplan = stack.app[SERVICES].dialplan
    persona = dialplan.lookup(CHAIN)
    monkeypatch.setitem(dialplan.by_number, CHAIN,
                        dataclasses.replace(persona, chain=dataclasses.replace(persona.chain, tts_stall_s=30.0)))
    question = caller_en[:8000]                       # one second of speech
    waiting, peak = [], 0
    with structlog.testing.capture_logs() as logs:
        calling = asyncio.create_task(simulate_twilio_call(
            stack.url, to=CHAIN, auth_token=AUTH_TOKEN, max_duration_s=30,
            script=[*(Say(question, at_s=1.0 + 2.0 * i, label=f"question {i + 1}") for i in range(7)),
                    Hangup(at_s=16)]))
        await until(lambda: stack.app[SERVICES].calls, what="the call")
        call = next(iter(stack.app[SERVICES].calls))
        while not calling.done():
            if call.engine.name == "chain":
                peak = max(peak, call.engine._turns.qsize())
            await asyncio.sleep(0.05)
        result = await calling
    stack.emulator.faults.http_delay_s = 0.0
    assert result.end_reason == "hangup" and len(result.utterances) == 7
    assert peak == MAX_WAITING_TURNS
    dropped = [e for e in logs if e["event"] == "chain_turn_dropped"]
    assert len(dropped) == 7 - MAX_WAITING_TURNS and all(e["waiting"] == MAX_WAITING_TURNS for e in dropped)
