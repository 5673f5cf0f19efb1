"""Exotel end to end: simulated Exotel Voicebot stream → real server → StepFun emulator."""

from __future__ import annotations

import base64
import json

import pytest

from voicebot.config import ConfigError, Settings
from voicebot.dialplan import Dialplan
from voicebot.server import create_app
from voicebot.simulator.exotel import simulate_call

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, secret_in_env
from conftest import EN

PASSWORD = "exotel-stream-password-51c"

carrier_secret = secret_in_env("EXOTEL_STREAM_PASSWORD", PASSWORD)


async def test_call_heard_both_ways_in_whole_chunks_of_320_bytes(stack, caller_en):
    result = await conversation(stack, simulate_call, caller_en)
    sizes = [size for _, size in result.media_received]
    assert all(size % 320 == 0 for size in sizes)                      # also checked by the simulator
    full = [size for size in sizes if size >= 1600]                     # 100 ms of 8 kHz PCM16
    assert len(sizes) - len(full) <= len(result.segments), sizes        # only an utterance's last chunk is short


async def test_barge_in_at_16k_truncates_at_what_exotel_played(stack, caller_en, caller_interrupt):
    result = await barge_in(stack, simulate_call, caller_en, caller_interrupt, sample_rate=16000)
    assert max(size for _, size in result.media_received) == 3200      # 100 ms of 16 kHz PCM16


async def test_basic_credentials_are_required_before_any_audio(stack):
    assert await refused_before_audio(stack, simulate_call, password="wrong") == "401"
    assert await refused_before_audio(stack, simulate_call, username=None) == "401"
    assert await refused_before_audio(stack, simulate_call, username="someone-else") == "401"
    assert stack.emulator.sessions == []


@pytest.mark.parametrize("networks, admitted", [(["127.0.0.0/8"], True), (["10.0.0.0/8"], False)])
async def test_exotel_source_networks_admit_streams_without_credentials(aiohttp_client, tmp_path, networks,
                                                                     admitted):
    settings = Settings(source="test", carriers={"exotel": {"allowed_networks": networks}},
                        database_url=f"sqlite:///{tmp_path / 'voicebot.db'}")
    client = await aiohttp_client(create_app(settings, Dialplan(personas=[])))
    if admitted:
        ws = await client.ws_connect("/exotel/media")
        await ws.close()
    else:
        async with client.get("/exotel/media", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                         "Sec-WebSocket-Version": "13",
                                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 401


def test_config_errors_name_the_field():
    for carriers, field in (({"exotel": {"allowed_networks": ["not-a-network"]}}, "allowed_networks[0]"),
                            ({"exotel": {"chunk_ms": 50}}, "chunk_ms"),
                            ({"exotel": {"chunk": 100}}, "chunk")):
        with pytest.raises(ConfigError) as info:
            create_app(Settings(source="config.yaml", carriers=carriers), Dialplan(personas=[]))
        assert info.value.field_path == f"carriers.exotel.{field}"


async def test_malformed_messages_hurt_only_their_own_call(stack, caller_en):
    sid = "MZ" + "5" * 32

    def message(event: str, **body) -> str:
        return json.dumps({"event": event, "sequence_number": "2", "stream_sid": sid, **body})

    def media(payload: str | None = None, raw: bytes = b"\x00\x01" * 800) -> str:
        return message("media", media={"chunk": "1", "timestamp": "0",
                                       "payload": base64.b64encode(raw).decode() if payload is None else payload})

    start = message("start", start={"stream_sid": sid, "call_sid": "CA" + "6" * 32, "account_sid": "AC1",
                                     "from": "+15005550006", "to": EN, "custom_parameters": {},
                                     "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000",
                                                      "bit_rate": "16"}})
    connected = json.dumps({"event": "connected"})
    first = [connected, media(), start, "{not json", media(payload="!!!not base64!!!"),
             json.dumps({"event": "dance", "stream_sid": sid}), message("media"), *[media() for _ in range(8)]]
    second = [connected, start, media(raw=b"\x00" * 1601), message("dtmf", dtmf={"duration": "100"}),
              message("mark", mark={}), "[1, 2]", *[media() for _ in range(8)]]
    auth = {"Authorization": "Basic " + base64.b64encode(f"exotel:{PASSWORD}".encode()).decode()}
    await malformed_input(stack, simulate_call, caller_en, url=stack.url.replace("http", "ws") + "/exotel/media",
                          headers=auth, connections=[first, second],
                          expected=["media before start", "not JSON", "not valid base64", "unknown event 'dance'",
                                    "field 'media' missing", "1601 bytes is not a whole number of samples",
                                    "field 'digit' missing", "field 'name' missing", "not an object"])
