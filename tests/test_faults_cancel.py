"""A cancellation that arrives while a call's part is closing must not be swallowed: the soak benchmark found a
chain call that never ended (its engine's close waited forever for a worker whose cancellation a TTS stream's
close had eaten, and the call's task with it). Each closer here is cancelled in the middle of its close: it
must end as cancelled, promptly, and leave nothing running."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from voicebot import resources
from voicebot.config import StepFunSettings
from voicebot.dialplan import load_dialplan
from voicebot.emulator.app import Emulator, start_emulator
from voicebot.emulator.http_common import http_log
from voicebot.engines.chain import ChainEngine
from voicebot.stepfun.tts import TtsClient
from voicebot.telephony.transport import Outbox

from conftest import CHAIN, PERSONAS, until


async def test_tts_stream_close_cancelled_midway_is_cancelled_and_drops_the_connection():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator())
    emulator.faults.tts_chunk_delay_s = 0.2       # the job is still streaming when it is closed
    try:
        async with aiohttp.ClientSession() as http:
            stream = await TtsClient(http, emulator.base_url, "key").open_stream(voice="lively-girl")
            await stream.send_text("A sentence that takes a few seconds of speech to arrive.")
            await stream.finish()
            closing = asyncio.create_task(stream.close())
            await asyncio.sleep(0)           # close() is now waiting for the stream's reader to stop
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            job = [r for r in http_log(emulator) if r.endpoint == "tts.ws"][-1]
            await until(lambda: job.aborted, what="the emulator to see the connection go")
            assert not job.done
    finally:
        await runner.cleanup()


class QuietSink:
    def bot_audio(self, item_id, pcm): ...
    def bot_audio_done(self, item_id): ...
    def caller_speech_started(self): ...
    def transcript(self, role, text, item_id): ...
    def note(self, kind, **fields): ...
    def engine_failed(self, reason): ...


async def test_chain_close_ends_when_a_turn_outlives_its_cancellation(tmp_path):
    """A turn that finishes its work after being cancelled (a tool call does, by design: Call.run_tool) spends
    the cancellation meant for the engine's worker; close() must still end, and the worker with it."""
    (tmp_path / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    persona = load_dialplan(tmp_path).by_number[CHAIN]
    entered = asyncio.Event()

    async def stubborn_turn(item_id: str, text: str) -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.1)      # finishes what it was doing, then returns normally

    async with aiohttp.ClientSession() as http:
        engine = ChainEngine(persona, StepFunSettings(base_url="http://127.0.0.1:9/v1", api_key="key"), QuietSink(),
                             http=http, opening="greeting")
        engine._say = stubborn_turn       # the greeting is the turn
        await engine.start()
        await asyncio.wait_for(entered.wait(), 2)
        closing = asyncio.create_task(engine.close())
        done, _ = await asyncio.wait([closing], timeout=3.0)
        assert closing in done, "close() never ended"
        await closing
        running = resources.snapshot(exclude=asyncio.current_task()).tasks
        assert not [name for name in running if name.startswith("ChainEngine.")], running


async def test_chain_close_cancelled_is_cancelled(tmp_path):
    """Call gives an engine a few seconds to close (wait_for): that cancellation must reach it."""
    (tmp_path / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    persona = load_dialplan(tmp_path).by_number[CHAIN]
    release = asyncio.Event()

    async def turn_that_takes_its_time(item_id: str, text: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()

    async with aiohttp.ClientSession() as http:
        engine = ChainEngine(persona, StepFunSettings(base_url="http://127.0.0.1:9/v1", api_key="key"), QuietSink(),
                             http=http, opening="greeting")
        engine._say = turn_that_takes_its_time
        await engine.start()
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.close(), 0.3)
        release.set()
        await until(lambda: not [n for n in resources.snapshot(exclude=asyncio.current_task()).tasks
                                 if n.startswith("ChainEngine.")], what="the engine's tasks to end")


class StuckTransport:
    """A carrier connection whose socket takes nothing (the peer stopped reading)."""

    closed = False

    def send_now(self, data) -> bool:
        return False

    async def send(self, data) -> None:
        await asyncio.Event().wait()


async def test_outbox_close_cancelled_is_cancelled():
    outbox = Outbox(StuckTransport())
    outbox.send_text("a message the socket will not take")
    await asyncio.sleep(0)
    closing = asyncio.create_task(outbox.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await until(lambda: "Outbox._drain" not in resources.snapshot(exclude=asyncio.current_task()).tasks,
                what="the outbox's drain task to end")
