"""The emulator's fault fields over HTTP (``/debug/faults``), as the soak benchmark sets them in the emulator
``voicebot serve`` embeds: a change applies all or nothing, and a wrong field or type is refused by name."""

from __future__ import annotations

import aiohttp

from voicebot.emulator.app import Emulator, start_emulator

AUTH = {"Authorization": "Bearer any-key"}


async def test_faults_are_read_and_set_over_http():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator())
    url = f"http://127.0.0.1:{emulator.port}/debug/faults"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"tts_fault_once": "stall", "tts_fault_after_chunks": 4,
                                            "tts_chunk_delay_s": 0.3}, headers=AUTH) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["tts_fault_once"] == "stall" and body["tts_fault_after_chunks"] == 4
            assert emulator.faults.tts_fault_once == "stall" and emulator.faults.tts_chunk_delay_s == 0.3

            async with http.post(url, json={"realtime_fault_once": "reset", "no_such_fault": 1}, headers=AUTH) as resp:
                assert resp.status == 400
                assert "unknown fault 'no_such_fault'" in (await resp.json())["error"]["message"]
            assert emulator.faults.realtime_fault_once is None        # all or nothing
            async with http.post(url, json={"tts_fault_after_chunks": "2"}, headers=AUTH) as resp:
                assert resp.status == 400
                assert "tts_fault_after_chunks" in (await resp.json())["error"]["message"]
            async with http.post(url, json={"tts_chunk_delay_s": None}, headers=AUTH) as resp:
                assert resp.status == 400 and "cannot be null" in (await resp.json())["error"]["message"]
            async with http.post(url, json={"tts_fault_once": None}, headers=AUTH) as resp:
                assert resp.status == 200 and (await resp.json())["tts_fault_once"] is None
            async with http.get(url) as resp:
                assert resp.status == 401
    finally:
        await runner.cleanup()
