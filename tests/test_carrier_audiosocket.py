"""Asterisk AudioSocket end to end: simulated Asterisk over TCP → real server → StepFun emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid

import pytest
import structlog
from aiohttp import web

from voicebot.config import ConfigError
from voicebot.dialplan import load_dialplan
from voicebot.server import SERVICES, create_app
from voicebot.simulator.audiosocket import AudioSocketProtocol, simulate_call, tlv
from voicebot.simulator.caller import Hangup, Say, SimulatedCall
from voicebot.telephony.audiosocket import AUDIOSOCKET, AudioSocketListener, AudioSocketSession
from voicebot.telephony.base import CarrierOptions

from carrier_checks import transcript_of
from conftest import until
from paced_checks import barge_in_without_flush, paced_conversation


@pytest.fixture
async def audiosocket(stack):
    """An AudioSocket listener on a free loopback port, answering with the English persona."""
    listener = AudioSocketListener(stack.app[SERVICES], "127.0.0.1", 0, CarrierOptions(persona="test-en"))
    await listener.start()
    try:
        yield functools.partial(simulate_call, port=listener.port)
    finally:
        await listener.stop()


async def test_conversation_paced_in_real_time_as_8k_slin(stack, audiosocket, caller_en):
    result = await paced_conversation(stack, audiosocket, caller_en, bytes_per_ms=16)
    assert {size for _, size in result.media_received} == {320}         # kind 0x10: 20 ms of 8 kHz slin
    records = await transcript_of(stack)
    assert records[0]["carrier"] == "audiosocket" and records[0]["persona"] == "test-en"
    assert records[0]["call_sid"] == result.call_id                        # the UUID Asterisk sent


async def test_barge_in_stops_sending_and_truncates_at_what_was_played(stack, audiosocket, caller_en,
                                                                        caller_interrupt):
    await barge_in_without_flush(stack, audiosocket, caller_en, caller_interrupt)


async def test_dtmf_is_recorded_and_the_server_hangs_up_in_band(stack, audiosocket):
    protocol = AudioSocketProtocol(stack.url, port=audiosocket.keywords["port"])
    encode = protocol.encode_frame
    protocol.encode_frame = lambda pcm, index, ts: encode(pcm, index, ts) + ([tlv(0x03, b"7")] if index == 20 else [])
    task = asyncio.create_task(SimulatedCall(protocol, [Hangup(at_s=3)], max_duration_s=5).run())
    await until(lambda: stack.app[SERVICES].calls, what="the call to start")
    call = next(iter(stack.app[SERVICES].calls))
    await until(lambda: '"type": "dtmf"' in call.transcript_file.path.read_text(), what="the DTMF (sent at 400 ms)")
    call.hang_up("test ends the call")
    result = await task
    assert result.end_reason == "server_closed" and protocol.hung_up_by_server   # 0x00 before the close
    records = await transcript_of(stack)
    assert [r["digit"] for r in records if r["type"] == "dtmf"] == ["7"]


async def test_garbage_on_one_connection_leaves_a_concurrent_call_alone(stack, audiosocket, caller_en):
    good = asyncio.create_task(audiosocket(stack.url, max_duration_s=30, script=[
        Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
    port = audiosocket.keywords["port"]
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)        # audio before the UUID
        writer.write(tlv(0x10, b"\x00" * 320))
        assert await asyncio.wait_for(reader.read(), 2) == b""                  # refused: closed
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(tlv(0x01, uuid.uuid4().bytes))
        writer.write(tlv(0x42, b"??"))                                          # unknown kind
        writer.write(tlv(0x03, b"12"))                                          # DTMF of two bytes
        writer.write(tlv(0x01, uuid.uuid4().bytes))                             # second UUID
        for _ in range(25):
            writer.write(tlv(0x10, b"\x00\x01" * 160))
            await asyncio.sleep(0.02)
        greeting = await asyncio.wait_for(reader.readexactly(323), 3)           # still gets its greeting
        writer.write(tlv(0x00))
        writer.close()
        result = await good
    problems = [e["problem"] for e in logs if e["event"] == "carrier_protocol_error"]
    assert any("first message must be the call's UUID" in p for p in problems)
    assert any("unknown message kind 0x42" in p for p in problems)
    assert any("DTMF message of 2 bytes" in p for p in problems)
    assert any("second UUID" in p for p in problems)
    assert greeting[:3] == b"\x10\x01\x40"
    assert result.protocol_errors == []
    assert len([s for s in result.segments if s.played_ms > 500]) >= 2


async def test_listener_starts_and_stops_with_the_app(stack):
    settings = dataclasses.replace(stack.settings, carriers={
        "audiosocket": {"host": "127.0.0.1", "port": 0, "persona": "test-en"}})
    dialplan = stack.app[SERVICES].dialplan
    runner = web.AppRunner(create_app(settings, dialplan))
    await runner.setup()                                        # on_startup: the TCP listener is up
    port = runner.app[AUDIOSOCKET].port
    try:
        result = await simulate_call(stack.url, port=port, max_duration_s=10,
                                     script=[Hangup(after_bot_done=True, pause_s=0.2)])
        assert result.protocol_errors == [] and result.segments[0].played_ms > 3000
    finally:
        await runner.cleanup()                                  # on_cleanup: the listener is gone
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_config_names_the_field_at_fault(stack):
    for fields, where in (({"port": 9092, "persona": "nobody"}, "carriers.audiosocket.persona"),
                          ({"port": 9092, "secret": "x"}, "carriers.audiosocket.secret"),
                          ({"port": 70000}, "carriers.audiosocket.port")):
        settings = dataclasses.replace(stack.settings, carriers={"audiosocket": fields})
        with pytest.raises(ConfigError) as caught:
            create_app(settings, load_dialplan(stack.settings.dialplans_dir))
        assert caught.value.field_path == where
    # No port: no listener (AudioSocket has no authentication, so it listens only when asked to).
    assert AUDIOSOCKET not in create_app(stack.settings, load_dialplan(stack.settings.dialplans_dir))


async def test_odd_length_slin_is_a_protocol_error_and_both_calls_go_on(stack, audiosocket, caller_en, caplog):
    """An L16 payload that is not whole samples drops that message and is logged as a protocol error, as on
    every other carrier: no exception out of handle_bytes, no traceback, and the call beside it hears its bot."""
    good = asyncio.create_task(audiosocket(stack.url, max_duration_s=30, script=[
        Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", audiosocket.keywords["port"])
        writer.write(tlv(0x01, uuid.uuid4().bytes))
        writer.write(b"\x10\x00\x03abc")                                         # 3 bytes: not whole samples
        for index in range(50):                                                 # then real speech, paced
            writer.write(tlv(0x10, caller_en[index * 160:(index + 1) * 160].tobytes()))
            await asyncio.sleep(0.02)
        greeting = await asyncio.wait_for(reader.readexactly(323), 3)           # its call still answers
        writer.write(tlv(0x00))
        writer.close()
        result = await good
    problems = [e["problem"] for e in logs if e["event"] == "carrier_protocol_error"]
    assert problems == ["slin audio (kind 0x10): L16 payload of 3 bytes is not a whole number of samples"]
    assert greeting[:3] == b"\x10\x01\x40"
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    assert len(result.utterances) == 1 and len([s for s in result.segments if s.played_ms > 500]) >= 2


async def test_a_bug_handling_one_message_ends_only_its_call_with_a_clear_log_line(stack, audiosocket, caller_en,
                                                                                    caplog, monkeypatch):
    """Should handling a message raise (a parser bug), that call ends -- its connection closed, the error logged
    with its traceback as ours -- like a WebSocket carrier's (wsserver answers 1011): nothing reaches asyncio's
    "Unhandled exception in client_connected_cb", and the call beside it goes on."""
    poison = tlv(0x10, b"\xde\xad" * 80)
    handle_bytes = AudioSocketSession.handle_bytes

    def buggy(self, data):
        if data == poison:
            raise RuntimeError("a bug in the parser")
        return handle_bytes(self, data)

    monkeypatch.setattr(AudioSocketSession, "handle_bytes", buggy)
    good = asyncio.create_task(audiosocket(stack.url, max_duration_s=30, script=[
        Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", audiosocket.keywords["port"])
        writer.write(tlv(0x01, uuid.uuid4().bytes))
        await until(lambda: len(stack.app[SERVICES].calls) == 2, what="both calls to start")
        writer.write(poison)
        await asyncio.wait_for(reader.read(), 5)                # the server closes it: EOF, whatever came before
        writer.close()
        result = await good
    failures = [e for e in logs if e["event"] == "tcp_listener_failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == "error" and failures[0]["exc_info"]
    assert "internal error handling a message" in [e["problem"] for e in logs if e["event"] == "carrier_protocol_error"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    assert len(result.utterances) == 1 and len([s for s in result.segments if s.played_ms > 500]) >= 2


async def test_stopping_the_listener_mid_call_ends_the_call_without_an_asyncio_error(stack, caller_en, caplog):
    """The server stopping under a live AudioSocket call: the connection's task ends as a finished one, so
    asyncio's stream callback logs no "Exception in callback" for it (it read the cancelled task's exception)."""
    listener = AudioSocketListener(stack.app[SERVICES], "127.0.0.1", 0, CarrierOptions(persona="test-en"))
    await listener.start()
    calling = asyncio.create_task(simulate_call(stack.url, port=listener.port, max_duration_s=20,
                                                script=[Say(caller_en, at_s=1.0), Hangup(at_s=15)]))
    services = stack.app[SERVICES]
    await until(lambda: services.calls, what="the call to start")
    await listener.stop()
    await asyncio.wait_for(calling, 10)
    await asyncio.sleep(0)                               # the stream's done-callback runs on the next loop turn
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    assert not listener._connections
