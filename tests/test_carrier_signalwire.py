"""SignalWire end to end: simulated SignalWire (cXML webhook + Twilio-compatible stream) → real server →
StepFun emulator."""

from __future__ import annotations

import base64
import json

import aiohttp
import numpy as np

from voicebot.config import Settings
from voicebot.dialplan import load_dialplan
from voicebot.server import create_app
from voicebot.simulator.signalwire import simulate_call
from voicebot.simulator.twilio import parse_twiml_stream
from voicebot.telephony.twilio_auth import compute_signature

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, secret_in_env
from conftest import EN, NO_BARGE, PERSONAS

KEY = "PSK_test_signing_key_0b7e"

carrier_secret = secret_in_env("SIGNALWIRE_SIGNING_KEY", KEY)


async def test_call_heard_both_ways_over_l16_16k(stack, caller_en):
    result = await conversation(stack, simulate_call, caller_en, codec="L16@16000h")
    sizes = [size for _, size in result.media_received]
    assert set(sizes) <= {640 * k for k in range(1, 6)}     # whole 20 ms frames of 16 kHz L16, ≤ 100 ms
    assert sizes.count(3200) >= 0.8 * len(sizes)


async def test_barge_in_over_l16_24k_truncates_at_what_signalwire_played(stack, caller_en, caller_interrupt):
    result = await barge_in(stack, simulate_call, caller_en, caller_interrupt, codec="L16@24000h")
    sizes = [size for _, size in result.media_received]
    assert set(sizes) <= {960 * k for k in range(1, 6)}     # whole 20 ms frames of 24 kHz L16, ≤ 100 ms


async def test_cxml_asks_for_the_configured_codec(aiohttp_client, tmp_path):
    (tmp_path / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    settings = Settings(source="test", carriers={"signalwire": {"codec": "L16@24000h", "auth": False}},
                        database_url=f"sqlite:///{tmp_path / 'voicebot.db'}")
    client = await aiohttp_client(create_app(settings, load_dialplan(tmp_path)))
    async with client.post("/signalwire/voice", data={"CallSid": "c1", "To": EN, "From": "+15005550006"}) as resp:
        assert resp.status == 200
        url, params, attributes = parse_twiml_stream(await resp.text())
    assert url.endswith("/signalwire/media") and attributes["codec"] == "L16@24000h" and params["token"]


async def test_webhook_is_signed_with_the_signing_key(stack):
    url = stack.url + "/signalwire/voice"
    form = {"CallSid": "c-" + "1" * 32, "From": "+15005550006", "To": EN}
    good = compute_signature(KEY, url, form)
    async with aiohttp.ClientSession() as http:
        for headers, status in (({"X-SignalWire-Signature": good}, 200), ({"X-Twilio-Signature": good}, 200),
                                ({"X-SignalWire-Signature": compute_signature("other", url, form)}, 403), ({}, 403)):
            async with http.post(url, data=form, headers=headers) as resp:
                assert resp.status == status, headers
        async with http.post(url, data={**form, "To": NO_BARGE}, headers={"X-SignalWire-Signature": good}) as resp:
            assert resp.status == 403                                     # the signature covers the form


async def test_stream_without_signature_or_valid_token_is_refused_before_audio(stack):
    params = {"From": "+15005550006", "To": EN, "CallSid": "c-" + "2" * 32}
    assert await refused_before_audio(stack, simulate_call, stream_signature=None, custom_parameters=params) == "1008"
    assert await refused_before_audio(stack, simulate_call, stream_signature="forged",
                                      custom_parameters={**params, "token": "123.forged"}) == "1008"
    assert stack.emulator.sessions == []


async def test_malformed_messages_hurt_only_their_own_call(stack, caller_en):
    url = stack.url + "/signalwire/voice"
    form = {"CallSid": "c-" + "4" * 32, "From": "+15005550006", "To": EN}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers={"X-SignalWire-Signature": compute_signature(KEY, url, form)}) as resp:
            stream_url, params, _ = parse_twiml_stream(await resp.text())
    sid = "5" * 32

    def media(payload: str | None = None, raw: bytes = np.zeros(320, "<i2").tobytes()) -> str:
        return json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": sid, "media": {
            "track": "inbound", "chunk": "1", "timestamp": "0",
            "payload": base64.b64encode(raw).decode() if payload is None else payload}})

    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": "a1", "streamSid": sid, "callSid": form["CallSid"], "tracks": ["inbound"],
        "customParameters": params, "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}}})
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    first = [connected, media(), start, "{not json", media(payload="!!!not base64!!!"),
             json.dumps({"event": "dance", "streamSid": sid}), json.dumps({"event": "media", "streamSid": sid}),
             *[media() for _ in range(25)]]
    second = [connected, start, media(raw=b"\x00" * 641), *[media() for _ in range(25)]]
    problems = await malformed_input(stack, simulate_call, caller_en, url=stream_url, headers=None,
                                     connections=[first, second], codec="L16@16000h",
                                     expected=["media before start", "not JSON", "not valid base64",
                                               "unknown event 'dance'", "'media' missing",
                                               "641 bytes is not a whole number of samples"])
    assert problems
