"""End to end: simulated Twilio caller → real server → StepFun emulator, on real speech recordings."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import numpy as np
import structlog
import websockets

from voicebot.simulator.caller import Hangup, Say, StreamRefused
from voicebot.simulator.twilio import simulate_twilio_call, parse_twiml_stream
from voicebot.telephony.twilio_auth import compute_signature
from voicebot.transcript import read_transcript

from conftest import AUTH_TOKEN, DEAF_MODEL, EN, NO_BARGE, REALTIME_ONLY, SHORT, ZH


async def transcript_of(stack) -> list[dict]:
    await stack.idle()
    files = sorted(stack.transcripts.glob("*/*.jsonl"))
    assert len(files) == 1, files
    return read_transcript(files[0])


def band_energy(pcm: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


def rms_dbfs(pcm: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 32768 + 1e-12)


async def test_greeting_arrives_as_100ms_mulaw_chunks_and_session_follows_the_persona(stack):
    result = await simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
                                        script=[Hangup(after_bot_done=True, pause_s=0.3)])
    assert result.protocol_errors == []
    assert result.media_received, "no bot audio reached the caller"
    sizes = [size for _, size in result.media_received]
    assert set(sizes) <= {160 * k for k in range(1, 6)}     # whole 20 ms μ-law frames, ≤ 100 ms per message
    assert sizes.count(800) >= 0.8 * len(sizes)             # mostly full 100 ms chunks (playout.chunk_ms)
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 1.0
    # The greeting is speech-level audio that played to its end, paced: never more than the lead ahead.
    played = sum(s.played_ms for s in result.segments)
    greeting_text = "Hello, this is the test line of Acme. How can I help you today?"
    assert played >= 0.9 * len(greeting_text) * 65
    heard = result.heard[result.heard != 0]
    assert rms_dbfs(heard) > -30
    assert result.marks_echoed > 10

    session = stack.emulator.sessions[0]
    update = session.received_of("session.update")[0]["session"]
    assert update["voice"] == "lively-girl"
    assert update["input_audio_format"] == update["output_audio_format"] == "pcm16"
    assert update["turn_detection"] == {"type": "server_vad", "silence_duration_ms": 500,
                                        "prefix_padding_ms": 300, "energy_awakeness_threshold": 2500}
    assert "test assistant" in update["instructions"]
    assert session.request.headers["Authorization"] == "Bearer test-key"
    assert [e["type"] for e in session.sent if e["type"] == "error"] == []

    records = await transcript_of(stack)
    assert records[0]["type"] == "call_start" and records[0]["persona"] == "test-en"
    turns = [r for r in records if r["type"] == "turn"]
    assert turns[0]["role"] == "assistant" and turns[0]["text"] == greeting_text
    assert records[-1]["type"] == "call_end" and records[-1]["first_bot_audio_ms"] < 1000


async def test_caller_speech_reaches_the_model_as_24k_pcm_and_the_reply_is_heard(stack, caller_en):
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    session = stack.emulator.sessions[0]
    appends = session.received_of("input_audio_buffer.append")
    sizes = {len(base64.b64decode(e["audio"])) for e in appends}
    assert sizes == {960}                                  # 20 ms at 24 kHz, 16-bit
    audio24 = np.frombuffer(bytes(session.input_audio), dtype="<i2")
    # Every caller frame arrived, as 24 kHz: the model's stream is as long as the caller's.
    assert abs(len(audio24) / 24000 - len(appends) * 0.02) < 1e-6
    assert abs(len(appends) * 0.02 - result.duration_s) < 0.5

    # The caller's utterance: find it in the 24 kHz stream and compare with the recording.
    started = session.sent_of("input_audio_buffer.speech_started")[0]["audio_start_ms"]
    stopped = session.sent_of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"]
    utterance = result.utterances[0]
    assert abs((stopped - started) / 1000 - (utterance.end_s - utterance.start_s)) < 0.5
    speech24 = audio24[started * 24:stopped * 24]
    assert rms_dbfs(speech24) > -35
    # Speech energy stays in the telephone band; images of the 8 kHz audio above 4.6 kHz are gone.
    in_band = band_energy(speech24, 24000, 200, 3400)
    images = band_energy(speech24, 24000, 4600, 12000)
    assert 10 * np.log10(in_band / images) > 60
    # Same speech as what the caller sent: spectrum envelope of the 8 kHz original matches.
    sent = result.sent[int(utterance.start_s * 8000):int(utterance.end_s * 8000)]
    bands = [(100, 500), (500, 1000), (1000, 2000), (2000, 3400)]
    ours = np.array([band_energy(speech24, 24000, lo, hi) for lo, hi in bands])
    theirs = np.array([band_energy(sent, 8000, lo, hi) for lo, hi in bands])
    shares = 10 * np.log10((ours / ours.sum()) / (theirs / theirs.sum()))
    assert np.all(np.abs(shares) < 3), shares

    # The reply (the emulator speaks the caller's utterance back) reaches the caller after the question.
    reply = [s for s in result.segments if s.start_s > utterance.end_s]
    assert reply and reply[0].played_ms > 0.8 * (utterance.end_s - utterance.start_s) * 1000
    turns = [r for r in await transcript_of(stack) if r["type"] == "turn"]
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
    assert turns[1]["text"].startswith("(caller speech")
    assert turns[2]["text"].startswith("You said something")


async def test_barge_in_clears_twilio_and_truncates_the_model_at_what_was_played(stack, caller_en, caller_interrupt):
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    assert len(result.clears) == 1
    session = stack.emulator.sessions[0]
    assert len(session.received_of("response.cancel")) == 1
    truncates = session.received_of("conversation.item.truncate")
    assert len(truncates) == 1
    cut = [s for s in result.segments if s.ended_by == "clear"]
    assert len(cut) == 1
    # What the simulated Twilio actually played of the reply vs what the model was told.
    assert abs(truncates[0]["audio_end_ms"] - cut[0].played_ms) <= 40, (truncates[0], cut[0])
    assert truncates[0]["content_index"] == 0
    reaction = result.barge_in_reaction_s[0]
    assert reaction is not None and reaction < 0.5
    # Nothing of the cancelled reply is played after the clear: the next audio is the new answer,
    # which starts only after the caller finished talking.
    barge = [u for u in result.utterances if u.barge][0]
    after_clear = [s for s in result.segments if s.start_s > result.clears[0]]
    assert after_clear and after_clear[0].start_s > barge.end_s
    records = await transcript_of(stack)
    barge_records = [r for r in records if r["type"] == "barge_in"]
    assert len(barge_records) == 1 and barge_records[0]["heard"][0]["heard_ms"] == truncates[0]["audio_end_ms"]
    interrupted = [r for r in records if r["type"] == "turn" and r.get("interrupted")]
    assert len(interrupted) == 1
    assert [e for e in session.sent if e["type"] == "error"] == []


async def test_barge_in_disabled_persona_never_clears(stack, caller_interrupt):
    result = await simulate_twilio_call(
        stack.url, to=NO_BARGE, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_interrupt, barge_after_bot_ms=600, label="barge"),
                Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    assert result.clears == []
    session = stack.emulator.sessions[0]
    assert session.received_of("response.cancel") == []
    assert session.received_of("conversation.item.truncate") == []
    greeting = "Please listen carefully to this notice, it is important and it takes a while to read."
    assert result.segments[0].played_ms >= len(greeting) * 65 * 0.95   # the notice played to its end


async def test_chinese_persona_greets_in_chinese(stack, caller_zh):
    result = await simulate_twilio_call(
        stack.url, to=ZH, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_zh, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)])
    assert result.protocol_errors == []
    turns = [r for r in await transcript_of(stack) if r["type"] == "turn"]
    assert turns[0]["text"] == "您好，这里是测试热线，请问有什么可以帮您？"
    assert stack.emulator.sessions[0].received_of("session.update")[0]["session"]["voice"] == "qinhenvsheng"
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]


async def test_webhook_with_bad_signature_is_refused(stack):
    form = {"CallSid": "CA" + "0" * 32, "From": "+15005550006", "To": EN}
    url = stack.url + "/twilio/voice"
    async with aiohttp.ClientSession() as http:
        good = compute_signature(AUTH_TOKEN, url, form)
        async with http.post(url, data=form, headers={"X-Twilio-Signature": good}) as resp:
            assert resp.status == 200
            assert "<Connect>" in await resp.text()
        tampered = {**form, "To": NO_BARGE}
        async with http.post(url, data=tampered, headers={"X-Twilio-Signature": good}) as resp:
            assert resp.status == 403
        async with http.post(url, data=form) as resp:
            assert resp.status == 403


async def test_media_stream_without_valid_token_is_refused_before_audio(stack):
    for params in ({"From": "+15005550006", "To": EN, "CallSid": "CA" + "1" * 32},
                   {"From": "+15005550006", "To": EN, "CallSid": "CA" + "1" * 32, "token": "123.forged"}):
        try:
            result = await simulate_twilio_call(
                stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=5, custom_parameters=params,
                stream_signature=None, script=[Hangup(at_s=3)])
        except StreamRefused:
            continue
        assert result.end_reason == "server_closed" and result.close_code == 1008
        assert result.media_received == []
    assert stack.emulator.sessions == []          # no model session was ever opened


async def test_token_from_another_call_is_refused(stack):
    """A TwiML document issued for one call cannot open a stream for another."""
    url = stack.url + "/twilio/voice"
    form = {"CallSid": "CA" + "2" * 32, "From": "+15005550006", "To": EN}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form,
                             headers={"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}) as resp:
            _, params, _ = parse_twiml_stream(await resp.text())
    stolen = {**params, "CallSid": "CA" + "3" * 32}
    result = await simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=5,
                                        custom_parameters=stolen, stream_signature=None, script=[Hangup(at_s=3)])
    assert result.close_code == 1008 and result.media_received == []


async def test_malformed_frames_hurt_only_their_own_call(stack, caller_en):
    """One call sends garbage; a concurrent call goes on undisturbed."""
    good_call = asyncio.create_task(simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))

    url = stack.url + "/twilio/voice"
    form = {"CallSid": "CA" + "4" * 32, "From": "+15005550006", "To": EN}
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form,
                                 headers={"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}) as resp:
                stream_url, params, _ = parse_twiml_stream(await resp.text())
        sid = "MZ" + "5" * 32
        media = lambda payload: json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": sid,
                                            "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                                      "payload": payload}})
        async with websockets.connect(stream_url) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(media(base64.b64encode(b"\xff" * 160).decode()))          # media before start
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
                "accountSid": "AC" + "6" * 32, "streamSid": sid, "callSid": form["CallSid"], "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            await ws.send("{not json")                                               # bad JSON
            await ws.send(media("!!!not base64!!!"))                                 # bad base64
            await ws.send(json.dumps({"event": "dance", "streamSid": sid}))           # unknown event
            await ws.send(json.dumps({"event": "media", "streamSid": sid}))           # missing media object
            for _ in range(25):                                                      # and then valid audio
                await ws.send(media(base64.b64encode(b"\xff" * 160).decode()))
                await asyncio.sleep(0.02)
            greeting_frames = 0
            try:
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    greeting_frames += msg["event"] == "media"
            except asyncio.TimeoutError:
                pass
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": "99", "streamSid": sid,
                                      "stop": {"accountSid": "AC" + "6" * 32, "callSid": form["CallSid"]}}))
        result = await good_call

    problems = [entry["problem"] for entry in logs if entry["event"] == "carrier_protocol_error"]
    assert any("media before start" in p for p in problems)
    assert any("not JSON" in p for p in problems)
    assert any("not valid base64" in p for p in problems)
    assert any("unknown event 'dance'" in p for p in problems)
    assert any("'media' missing" in p for p in problems)
    assert greeting_frames > 0                     # the bad call itself still got its greeting
    # The concurrent good call was untouched.
    assert result.protocol_errors == []
    assert len([s for s in result.segments if s.played_ms > 500]) >= 2   # greeting and reply heard


async def test_stepfun_refusing_the_session_ends_a_realtime_only_call_cleanly(stack):
    stack.emulator.faults.refuse_realtime_status = 503
    result = await simulate_twilio_call(stack.url, to=REALTIME_ONLY, auth_token=AUTH_TOKEN, max_duration_s=10,
                                        script=[Hangup(at_s=8)])
    assert result.end_reason == "server_closed"
    assert result.protocol_errors == []
    assert result.media_received == []             # nothing broken was played
    end = (await transcript_of(stack))[-1]
    assert end["type"] == "call_end" and "engine unavailable" in end["end_reason"] and "503" in end["end_reason"]


async def test_max_call_seconds_says_goodbye_in_full_then_hangs_up(stack, caller_en):
    """At the time limit the bot says goodbye; the caller talking over it cuts nothing; the stream closes
    only after the goodbye's last frame has played."""
    goodbye = "Thank you for calling. Goodbye."
    result = await simulate_twilio_call(stack.url, to=SHORT, auth_token=AUTH_TOKEN, max_duration_s=15,
                                        script=[Say(caller_en, at_s=2.4, label="talks over the goodbye"),
                                                Hangup(at_s=14)])
    assert result.end_reason == "server_closed" and result.protocol_errors == []
    assert result.clears == []                                  # no barge-in while the bot says goodbye
    last = result.segments[-1]
    assert last.start_s >= 2.0 and last.ended_by == "drained"
    assert last.played_ms >= 0.9 * len(goodbye) * 65            # the whole line was heard
    assert last.end_s <= result.duration_s < last.end_s + 1.0   # closed after it, not before
    records = await transcript_of(stack)
    said = [r for r in records if r["type"] == "turn"]
    assert said[-1]["role"] == "assistant" and said[-1]["text"] == goodbye and not said[-1].get("interrupted")
    assert records[-1]["end_reason"] == "max_call_seconds reached" and records[-1]["outcome"] == "max_duration"


async def test_stepfun_dropping_mid_call_ends_a_realtime_only_call_and_keeps_the_transcript(stack, caller_en):
    stack.emulator.faults.drop_realtime_after_s = 2.0
    result = await simulate_twilio_call(stack.url, to=REALTIME_ONLY, auth_token=AUTH_TOKEN, max_duration_s=15,
                                        script=[Say(caller_en, at_s=5.0), Hangup(at_s=12)])
    assert result.end_reason == "server_closed"
    assert result.duration_s < 4
    records = await transcript_of(stack)
    assert records[-1]["type"] == "call_end" and "engine failed" in records[-1]["end_reason"]
    assert any(r["type"] == "turn" and r["role"] == "assistant" for r in records)   # greeting kept


async def test_local_vad_barge_in_when_the_model_does_not_hear_the_caller(stack, caller_interrupt):
    """Our own VAD cuts the bot after min_speech_ms of caller speech, with the same truncation accuracy."""
    result = await simulate_twilio_call(
        stack.url, to=DEAF_MODEL, auth_token=AUTH_TOKEN, max_duration_s=20,
        script=[Say(caller_interrupt, barge_after_bot_ms=1000, label="barge"), Hangup(at_s=9)])
    assert result.protocol_errors == []
    assert len(result.clears) == 1
    session = stack.emulator.sessions[0]
    assert session.sent_of("input_audio_buffer.speech_started") == []       # the model never heard it
    truncate = session.received_of("conversation.item.truncate")[0]
    cut = [s for s in result.segments if s.ended_by == "clear"][0]
    assert abs(truncate["audio_end_ms"] - cut.played_ms) <= 40
    reaction = result.barge_in_reaction_s[0]
    assert 0.15 <= reaction < 0.45         # about min_speech_ms (10 frames) of speech, plus a frame or two
    barge = [r for r in await transcript_of(stack) if r["type"] == "barge_in"][0]
    assert barge["trigger"] == "local_vad"


async def test_no_secret_reaches_the_logs(stack, caller_en):
    with structlog.testing.capture_logs() as logs:
        result = await simulate_twilio_call(
            stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)])
        await stack.idle()
    assert result.protocol_errors == []
    text = json.dumps(logs, default=str)
    assert "call_summary" in text
    for secret in (AUTH_TOKEN, "test-key", "Bearer"):
        assert secret not in text
    # The per-call stream token (issued in the TwiML) is not logged either.
    assert not any("token" in str(v) and "." in str(v) and len(str(v)) > 40 for e in logs for v in e.values())
    lines = [e for e in logs if e.get("call_id")]
    assert lines and all(e.get("call_sid") and e.get("persona") == "test-en" for e in lines)


async def test_caller_audio_sent_while_the_model_connects_is_not_lost(stack, caller_en):
    """Frames that arrive before the realtime session is up reach the model once it is."""
    result = await simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
                                        script=[Say(caller_en, at_s=0.0), Hangup(at_s=6.0)])
    await stack.idle()
    session = stack.emulator.sessions[0]
    appended = len(session.received_of("input_audio_buffer.append"))
    caller_frames = len(result.sent) // 160
    assert appended == caller_frames, (appended, caller_frames)
