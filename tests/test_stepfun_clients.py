"""The StepFun HTTP/SSE/WebSocket clients against the emulator's ASR, chat, TTS and voice endpoints."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import wave
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from voicebot.emulator.app import Emulator, create_app
from voicebot.stepfun.asr import AsrClient, asr_request_body
from voicebot.stepfun.chat import ChatClient
from voicebot.stepfun.errors import (StepFunAuthError, StepFunQuotaError, StepFunRequestError,
                                     StepFunUnavailable)
from voicebot.stepfun.http import SSEReader, StepFunHttp, normalize_base_url, ws_base_url
from voicebot.stepfun.tts import TtsClient, split_text
from voicebot.stepfun.voices import VoicesClient

KEY = "sk-test-key-0123456789"


# ---------------------------------------------------------------------------------------------- fixtures

def speechlike(seconds: float, rate: int = 16000, *, f0: float = 140.0, lead: float = 0.3, tail: float = 0.3,
               seed: int = 1) -> np.ndarray:
    """Voiced, syllable-modulated harmonic signal at -20 dBFS RMS, with quiet noise before and after."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0_t = f0 * (1.0 + 0.08 * np.sin(2 * np.pi * 0.9 * t))
    phase = 2 * np.pi * np.cumsum(f0_t) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25) if k * f0 * 1.1 < rate / 2)
    envelope = 0.35 + 0.65 * np.abs(np.sin(np.pi * t / 0.21))   # ~5 syllables per second, never silent
    signal = voiced * envelope
    signal *= 32768 * 10 ** (-20 / 20) / np.sqrt(np.mean(signal ** 2))
    quiet = lambda s: rng.normal(0.0, 3.0, int(round(s * rate)))  # noqa: E731  (about -80 dBFS)
    out = np.concatenate([quiet(lead), signal + rng.normal(0.0, 30.0, n), quiet(tail)])
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def wav_file(pcm: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def dbfs(pcm: np.ndarray) -> float:
    return 20 * math.log10(math.sqrt(float(np.mean(pcm.astype(np.float64) ** 2))) / 32768)


@dataclass
class Env:
    emulator: Emulator
    base: str
    session: aiohttp.ClientSession

    @property
    def ws_base(self) -> str:
        return ws_base_url(self.base)

    def records(self, endpoint: str) -> list:
        return [r for r in self.emulator.http_log if r.endpoint == endpoint]

    def asr(self, key: str | None = KEY, **kw) -> AsrClient:
        return AsrClient(self.session, self.base, key, **kw)

    def chat(self, key: str | None = KEY, **kw) -> ChatClient:
        return ChatClient(self.session, self.base, key, **kw)

    def tts(self, key: str | None = KEY, **kw) -> TtsClient:
        return TtsClient(self.session, self.base, key, **kw)

    def voices(self, key: str | None = KEY, **kw) -> VoicesClient:
        return VoicesClient(self.session, self.base, key, **kw)


@pytest.fixture
async def env(aiohttp_server):
    emulator = Emulator()
    server = await aiohttp_server(create_app(emulator))
    async with aiohttp.ClientSession() as session:
        yield Env(emulator, str(server.make_url("/step_plan/v1")), session)


async def wait_until(predicate, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------- plumbing

def test_base_urls():
    assert normalize_base_url("https://api.stepfun.com/step_plan/v1/") == "https://api.stepfun.com/step_plan/v1"
    assert ws_base_url("https://api.stepfun.com/step_plan/v1") == "wss://api.stepfun.com/step_plan/v1"
    assert ws_base_url("http://127.0.0.1:9000/step_plan/v1/") == "ws://127.0.0.1:9000/step_plan/v1"
    with pytest.raises(ValueError):
        normalize_base_url("api.stepfun.com/v1")


async def test_key_is_never_shown(env):
    secret = "sk-very-secret-value"
    http = StepFunHttp(env.session, "http://127.0.0.1:1/step_plan/v1", secret)
    assert secret not in repr(http)
    asr = AsrClient(env.session, "http://127.0.0.1:1/step_plan/v1", secret)
    assert secret not in repr(asr)
    with pytest.raises(StepFunUnavailable) as refused:
        await asr.transcribe(speechlike(0.5), "en")
    assert secret not in str(refused.value)
    env.emulator.api_key = "the-right-key"
    with pytest.raises(StepFunAuthError) as denied:
        await env.chat(secret).complete([{"role": "user", "content": "hi"}])
    assert denied.value.status == 401 and secret not in str(denied.value)


async def test_sse_reader_handles_crlf_comments_split_and_long_lines(aiohttp_server):
    long = "x" * 300_000

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        raw = f": keep-alive\r\nevent: message\r\ndata: {{\"a\":1}}\r\n\r\nid: 7\ndata:{long}\n\ndata: [DONE]".encode()
        for i in range(0, len(raw), 997):  # split in odd places
            await resp.write(raw[i:i + 997])
        return resp

    app = web.Application()
    app.router.add_get("/sse", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/sse")) as resp:
        payloads = [p async for p in SSEReader(resp, "test")]
    assert payloads == ['{"a":1}', long, "[DONE]"]


async def test_connection_refused_and_timeouts_are_unavailable(env):
    with pytest.raises(StepFunUnavailable):
        await ChatClient(env.session, "http://127.0.0.1:1/step_plan/v1", KEY).complete(
            [{"role": "user", "content": "hi"}])
    env.emulator.faults.http_delay_s = 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StepFunUnavailable, match="timed out"):
        await env.asr(total_timeout=0.2).transcribe(speechlike(0.5), "en")
    assert loop.time() - started < 0.8


# ---------------------------------------------------------------------------------------------- ASR

async def test_asr_returns_transcript_of_speech(env):
    pcm = speechlike(1.5)
    deltas = []
    async with env.asr().stream(pcm, "en") as s:
        async for delta in s:
            deltas.append(delta)
    assert s.text == "(caller speech 1.50 s)"
    assert "".join(deltas) == s.text and len(deltas) > 1
    assert s.trace_id and s.trace_id == env.records("asr")[-1].trace_id
    assert s.session_id and s.session_id.startswith("sse_")
    assert s.usage["type"] == "realtime_asr"
    body = env.records("asr")[-1].body
    assert body["audio"]["input"]["format"] == {"type": "pcm", "codec": "pcm_s16le", "rate": 16000, "bits": 16,
                                                "channel": 1}
    assert body["audio"]["input"]["transcription"]["model"] == "stepaudio-2.5-asr"
    assert body["audio"]["input"]["transcription"]["language"] == "en"

    result = await env.asr().transcribe(speechlike(0.8, seed=2), "zh", hotwords=["阶跃星辰"])
    assert result.text == "(caller speech 0.80 s)" and result.deltas and result.trace_id
    assert env.records("asr")[-1].body["audio"]["input"]["transcription"]["hotwords"] == ["阶跃星辰"]


async def test_asr_silence_gives_empty_transcript(env):
    result = await env.asr().transcribe(np.zeros(16000, np.int16), "en")
    assert result.text == "" and result.deltas == []


async def test_asr_error_mid_stream_is_a_typed_error(env):
    env.emulator.faults.asr_stream_error_once = "The content you provided is blocked."
    got = []
    with pytest.raises(StepFunRequestError) as err:
        async with env.asr().stream(speechlike(1.0), "en") as s:
            async for delta in s:
                got.append(delta)
    assert got == ["(caller"]  # one delta, then the error event
    assert "blocked" in err.value.message and err.value.trace_id == env.records("asr")[-1].trace_id
    env.emulator.faults.asr_stream_error_once = "internal failure"
    with pytest.raises(StepFunUnavailable, match="internal failure"):
        await env.asr().transcribe(speechlike(1.0), "en")
    assert (await env.asr().transcribe(speechlike(1.0), "en")).text  # the fault was one-shot


async def test_asr_http_faults_map_to_error_types(env):
    env.emulator.faults.asr_fail_once = 503
    with pytest.raises(StepFunUnavailable) as err:
        await env.asr().transcribe(speechlike(0.5), "en")
    assert err.value.status == 503 and err.value.trace_id
    env.emulator.faults.asr_fail_once = 429
    with pytest.raises(StepFunQuotaError):
        await env.asr().transcribe(speechlike(0.5), "en")


async def test_asr_bad_bodies_get_400_with_the_documented_shape(env):
    good = asr_request_body(speechlike(0.5), "en")
    url = env.base + "/audio/asr/sse"
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}

    def bad(mutate):
        body = json.loads(json.dumps(good))
        mutate(body)
        return body

    cases = [
        bad(lambda b: b["audio"]["input"]["format"].pop("rate")),
        bad(lambda b: b["audio"]["input"]["format"].update(codec="pcm_mulaw")),
        bad(lambda b: b["audio"]["input"]["transcription"].pop("model")),
        bad(lambda b: b["audio"]["input"]["transcription"].update(model="whisper-1")),
        bad(lambda b: b["audio"]["input"]["transcription"].update(enable_itn="yes")),
        bad(lambda b: b["audio"].update(data="not base64!")),
        bad(lambda b: b["audio"]["input"].update(extra=1)),
        bad(lambda b: b.pop("audio")),
    ]
    for body in cases:
        async with env.session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 400, body
            doc = await resp.json()
            assert set(doc) == {"error"} and doc["error"]["type"] == "request_params_invalid"
            assert doc["error"]["message"] and resp.headers["X-Trace-Id"]
    async with env.session.post(url, data=b"x", headers={**headers, "Content-Type": "text/plain"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "unsupported_content_type"
    with pytest.raises(StepFunRequestError):
        env.asr().stream(np.zeros(0, np.int16), "en")


async def test_missing_key_is_an_auth_error_everywhere(env):
    with pytest.raises(StepFunAuthError) as err:
        await env.asr(None).transcribe(speechlike(0.5), "en")
    assert err.value.status == 401 and err.value.type == "authentication_error" and err.value.trace_id
    with pytest.raises(StepFunAuthError):
        async for _ in env.chat(None).stream([{"role": "user", "content": "hi"}]):
            pass
    with pytest.raises(StepFunAuthError):
        await env.tts(None).synthesize("你好", voice="linjiajiejie")
    with pytest.raises(StepFunAuthError) as ws_err:
        await env.tts(None).open_stream(voice="linjiajiejie")
    assert ws_err.value.status == 401 and ws_err.value.trace_id
    with pytest.raises(StepFunAuthError):
        await env.voices(None).list()


# ---------------------------------------------------------------------------------------------- chat

async def test_chat_streams_deltas_in_order(env):
    messages = [{"role": "system", "content": "You are a phone agent."},
                {"role": "user", "content": "I would like to check my order."}]
    pieces = []
    async with env.chat().stream(messages, temperature=0.3) as s:
        async for piece in s:
            pieces.append(piece)
    assert "".join(pieces) == s.text == "You said: I would like to check my order."
    assert pieces[:3] == ["You", " said:", " I"]
    assert s.finish_reason == "stop" and not s.cut and s.completed
    assert s.usage["completion_tokens"] == len(pieces)
    assert s.usage["total_tokens"] == s.usage["prompt_tokens"] + s.usage["completion_tokens"]
    record = env.records("chat")[-1]
    assert s.trace_id == record.trace_id and record.done
    assert record.body["model"] == "stepaudio-2.5-chat" and record.body["stream"] is True
    assert record.body["modalities"] == ["text"] and record.body["messages"] == messages

    zh = await env.chat().complete([{"role": "user", "content": "你好，我想查询一下我的订单。"}])
    assert zh.text == "你说：你好，我想查询一下我的订单。" and zh.finish_reason == "stop" and zh.trace_id
    verbatim = await env.chat().complete([{"role": "user", "content": "Say exactly: Thanks for calling Acme."}])
    assert verbatim.text == "Thanks for calling Acme."


async def test_chat_cut_replies_are_surfaced(env):
    s = env.chat().stream([{"role": "user", "content": "one two three four five"}], max_tokens=3)
    assert [p async for p in s] == ["You", " said:", " one"]
    assert s.finish_reason == "length" and s.cut
    env.emulator.faults.chat_finish_reason_once = "content_filter"
    s = env.chat().stream([{"role": "user", "content": "something"}])
    assert "".join([p async for p in s]) == "You said:"
    assert s.finish_reason == "content_filter" and s.cut


async def test_chat_cancel_aborts_the_request(env):
    env.emulator.faults.chat_token_delay_s = 0.25
    got: list[str] = []

    async def consume():
        async with env.chat().stream([{"role": "user", "content": "a b c d e f g h i j k l"}]) as s:
            async for piece in s:
                got.append(piece)

    task = asyncio.create_task(consume())
    await wait_until(lambda: len(got) >= 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - started < 0.1
    record = env.records("chat")[-1]
    await wait_until(lambda: record.aborted, 2.0)  # the server saw the connection go at its next write
    assert not record.done

    # Leaving the iteration early (break, then the async with closes the stream) aborts too.
    async with env.chat().stream([{"role": "user", "content": "a b c d e f g h"}]) as s:
        async for _ in s:
            break
    record = env.records("chat")[-1]
    await wait_until(lambda: record.aborted, 2.0)
    assert len(s.text) < len("You said: a b c d e f g h.")


async def test_chat_bad_bodies_are_request_errors_with_trace_id(env):
    with pytest.raises(StepFunRequestError) as err:
        await env.chat().complete([{"role": "user", "content": "hi"}], extra={"modalities": ["text", "audio"]})
    record = env.records("chat")[-1]
    assert err.value.status == 400 and err.value.type == "request_params_invalid"
    assert err.value.trace_id == record.trace_id and "audio" in err.value.message
    with pytest.raises(StepFunRequestError):
        async for _ in env.chat().stream([{"role": "robot", "content": "hi"}]):
            pass
    with pytest.raises(StepFunRequestError):
        await env.chat(model="stepaudio-2.5-nope").complete([{"role": "user", "content": "hi"}])
    async with env.session.post(env.base + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                json={"model": "stepaudio-2.5-chat", "messages": []}) as resp:
        assert resp.status == 400 and resp.headers["X-Trace-Id"]
        assert (await resp.json())["error"]["type"] == "request_params_invalid"
    env.emulator.faults.chat_fail_once = 500
    with pytest.raises(StepFunUnavailable):
        await env.chat().complete([{"role": "user", "content": "hi"}])


async def test_chat_raw_stream_has_documented_chunks(env):
    body = {"model": "stepaudio-2.5-chat", "stream": True, "modalities": ["text"],
            "messages": [{"role": "user", "content": "hello"}]}
    async with env.session.post(env.base + "/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in (await resp.text()).split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [""] * (len(chunks) - 1) + ["stop"]
    assert [c["usage"]["completion_tokens"] for c in chunks[:-1]] == list(range(1, len(chunks)))


# ---------------------------------------------------------------------------------------------- TTS (HTTP)

async def test_tts_http_returns_8k_pcm_of_plausible_duration(env):
    text = "Hello, I would like to check the status of my order please."
    speech = await env.tts().synthesize(text, voice="linjiajiejie")
    assert speech.sample_rate == 8000 and speech.pcm.dtype == np.int16
    assert 2.5 < speech.duration_s < 6.0          # ~65 ms per character
    assert -26 < dbfs(speech.pcm) < -14            # speech level, not silence
    spectrum = np.abs(np.fft.rfft(speech.pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(speech.pcm), 1 / 8000)
    assert spectrum[(freqs > 80) & (freqs < 1000)].sum() > spectrum[freqs > 3000].sum()  # voiced, band-limited
    record = env.records("tts")[-1]
    assert speech.trace_id == record.trace_id
    assert record.body == {"model": "stepaudio-2.5-tts", "input": text, "voice": "linjiajiejie",
                           "response_format": "pcm", "sample_rate": 8000, "speed": 1.0, "volume": 1.0}

    fast = await env.tts().synthesize(text, voice="linjiajiejie", speed=2.0)
    assert abs(fast.duration_s - speech.duration_s / 2) < 0.05
    longer = await env.tts().synthesize(text + " " + text, voice="linjiajiejie")
    assert longer.duration_s > 1.8 * speech.duration_s
    zh = await env.tts().synthesize("你好，我想查询一下我的订单。", voice="linjiajiejie", sample_rate=16000,
                                    instruction="语气温柔")
    assert zh.sample_rate == 16000 and 2.0 < zh.duration_s < 4.0


async def test_tts_http_sse_stream_matches_one_shot(env):
    text = "Thanks for calling. How can I help?"
    whole = await env.tts().synthesize(text, voice="lively-girl")
    async with env.tts().stream_http(text, voice="lively-girl") as s:
        parts = [p async for p in s]
    assert len(parts) > 1 and s.completed
    assert np.array_equal(np.concatenate(parts), whole.pcm)


async def test_tts_local_checks_send_nothing(env):
    tts = env.tts()
    for kwargs in ({"text": "x" * 1001}, {"text": "  "}, {"text": "hi", "instruction": "y" * 201},
                   {"text": "hi", "speed": 3.0}, {"text": "hi", "sample_rate": 44100}):
        text = kwargs.pop("text")
        with pytest.raises(StepFunRequestError) as err:
            await tts.synthesize(text, voice="linjiajiejie", **kwargs)
        assert err.value.status is None and err.value.type == "request_params_invalid"
    assert env.records("tts") == []
    pieces = split_text("第一句。" * 300 + "tail")
    assert all(len(p) <= 1000 for p in pieces) and "".join(pieces) == "第一句。" * 300 + "tail"
    assert pieces[0].endswith("。")


async def test_tts_http_bad_bodies_get_the_documented_errors(env):
    url = env.base + "/audio/speech"
    headers = {"Authorization": f"Bearer {KEY}"}
    base = {"model": "stepaudio-2.5-tts", "input": "你好", "voice": "linjiajiejie", "response_format": "pcm",
            "sample_rate": 8000}
    cases = [
        ({**base, "voice_label": {"emotion": "happy"}}, "voice_label is not supported"),
        ({**base, "input": "字" * 1001}, "1000"),
        ({**base, "voice": "no-such-voice"}, "no-such-voice"),
        ({**base, "sample_rate": 44100}, "sample_rate"),
        ({**base, "speed": 2.5}, "speed"),
        ({**base, "instruction": "慢" * 201}, "200"),
        ({k: v for k, v in base.items() if k != "voice"}, "voice"),
    ]
    for body, words in cases:
        async with env.session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 400, body
            doc = await resp.json()
            assert doc["error"]["type"] == "request_params_invalid" and words in doc["error"]["message"]
            assert resp.headers["X-Trace-Id"]
    with pytest.raises(StepFunRequestError) as err:
        await env.tts().synthesize("你好", voice="voice-tone-unknown")
    assert err.value.status == 400 and err.value.trace_id == env.records("tts")[-1].trace_id
    env.emulator.faults.tts_http_fail_once = 451
    with pytest.raises(StepFunRequestError) as blocked:
        await env.tts().synthesize("你好", voice="linjiajiejie")
    assert blocked.value.status == 451 and blocked.value.type == "censorship_block"


# ---------------------------------------------------------------------------------------------- TTS (WebSocket)

async def test_tts_ws_full_sequence_with_client(env):
    stream = await env.tts().open_stream(voice="linjiajiejie", mode="default")
    assert stream.session_id
    for piece in ["你好，", "我是客服。", "请问有什么", "可以帮您？", "Thanks for calling"]:
        await stream.send_text(piece)
    await stream.finish()
    await stream.finish()  # idempotent: a second tts.text.done is never sent
    pcm = await stream.collect()
    await stream.close()
    assert stream.audio_done and stream.error is None
    assert [s.text for s in stream.sentences] == ["你好，我是客服。", "请问有什么可以帮您？", "Thanks for calling"]
    assert stream.sentences[0].start_sample == 0
    assert stream.sentences[-1].end_sample == len(pcm) == stream.samples_received
    assert 3.0 < len(pcm) / 8000 < 6.0 and -26 < dbfs(pcm) < -14
    record = env.records("tts.ws")[-1]
    assert record.done and not record.aborted and record.body == {"model": "stepaudio-2.5-tts"}


async def test_tts_ws_raw_event_sequence(env):
    url = env.ws_base + "/realtime/audio?model=stepaudio-2.5-tts"
    async with env.session.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
        hello = await ws.receive_json()
        assert hello["type"] == "tts.connection.done" and hello["event_id"]
        sid = hello["data"]["session_id"]
        await ws.send_json({"type": "tts.create", "data": {
            "session_id": sid, "voice_id": "linjiajiejie", "response_format": "pcm", "sample_rate": 8000,
            "speed_ratio": 1.0, "volume_ratio": 1.0, "mode": "sentence"}})
        assert (await ws.receive_json())["type"] == "tts.response.created"
        await ws.send_json({"type": "tts.text.delta", "data": {"session_id": sid, "text": "你好。我是客服"}})
        await ws.send_json({"type": "tts.text.done", "data": {"session_id": sid}})
        await ws.send_json({"type": "tts.text.done", "data": {"session_id": sid}})
        events = []
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT
            events.append(json.loads(msg.data))
        assert ws.closed  # the server closed after tts.response.audio.done
    types = [e["type"] for e in events]
    errors = [e for e in events if e["type"] == "tts.response.error"]
    assert len(errors) == 1 and "tts.text.done already" in errors[0]["data"]["message"]
    assert errors[0]["data"]["code"] == "400"
    types = [t for t in types if t != "tts.response.error"]
    assert types[-1] == "tts.response.audio.done" and events[-1]["data"] == {"session_id": sid, "audio": ""}
    sentences = [e["data"]["text"] for e in events if e["type"] == "tts.response.sentence.start"]
    assert sentences == ["你好。", "我是客服"]
    # start, deltas, end per sentence
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert collapsed == ["tts.response.sentence.start", "tts.response.audio.delta", "tts.response.sentence.end"] * 2 \
        + ["tts.response.audio.done"]
    deltas = [e["data"] for e in events if e["type"] == "tts.response.audio.delta"]
    assert all(d["session_id"] == sid and d["status"] in ("unfinished", "finished") for d in deltas)
    audio = b"".join(base64.b64decode(d["audio"]) for d in deltas)
    assert abs(len(audio) / 2 / 8000 - sum(d["duration"] for d in deltas)) < 0.01


async def test_tts_ws_errors_are_typed(env):
    env.emulator.faults.tts_ws_error_once = 503
    stream = await env.tts().open_stream(voice="linjiajiejie")
    await stream.send_text("你好。")
    await stream.finish()
    with pytest.raises(StepFunUnavailable) as err:
        await stream.collect()
    assert err.value.code == "503" and "overloaded" in err.value.message
    assert err.value.trace_id == stream.session_id
    with pytest.raises(StepFunUnavailable):
        await stream.send_text("more")
    await stream.close()

    env.emulator.faults.tts_ws_fail_once = 503
    with pytest.raises(StepFunUnavailable) as refused:
        await env.tts().open_stream(voice="linjiajiejie")
    assert refused.value.status == 503 and refused.value.trace_id

    with pytest.raises(StepFunRequestError) as bad:
        await env.tts().open_stream(voice="nobody")
    assert bad.value.code == "400" and "nobody" in bad.value.message

    with pytest.raises(StepFunRequestError):
        await TtsClient(env.session, env.base, KEY, model="tts-unknown").open_stream(voice="linjiajiejie")


async def test_tts_ws_close_aborts_the_job(env):
    env.emulator.faults.tts_chunk_delay_s = 0.05
    stream = await env.tts().open_stream(voice="linjiajiejie", mode="sentence")
    await stream.send_text("This is a rather long sentence that takes a few seconds to speak!")
    await stream.finish()
    async for _ in stream.audio():
        break
    await stream.close()
    record = env.records("tts.ws")[-1]
    await wait_until(lambda: record.aborted, 2.0)
    assert not record.done


# ---------------------------------------------------------------------------------------------- voices

async def test_voices_round_trip_and_clone_used_by_tts(env):
    voices = env.voices()
    clip = wav_file(speechlike(4.0, f0=210.0, seed=5), 16000)
    uploaded = await voices.upload(clip, "ref.wav")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(clip) and uploaded.purpose == "storage"
    assert uploaded.status == "processed" and uploaded.trace_id

    preview = await voices.preview(uploaded.id, "今天天气不错", text="reference transcript")
    with wave.open(io.BytesIO(preview.wav), "rb") as w:
        assert w.getnchannels() == 1 and w.getframerate() == 24000 and w.getnframes() > 0.5 * 24000
    assert preview.sample_text == "今天天气不错" and preview.request_id

    cloned = await voices.clone(uploaded.id, text="reference transcript")
    assert cloned.id.startswith("voice-tone-") and not cloned.duplicated
    again = await voices.clone(uploaded.id)
    assert again.id == cloned.id and again.duplicated

    page = await voices.list()
    assert [v.id for v in page.voices] == [cloned.id] and page.voices[0].file_id == uploaded.id
    assert page.first_id == page.last_id == cloned.id and not page.has_more

    speech = await env.tts().synthesize("Hello from my own voice.", voice=cloned.id)
    official = await env.tts().synthesize("Hello from my own voice.", voice="linjiajiejie")
    assert speech.duration_s > 1.0 and not np.array_equal(speech.pcm, official.pcm)
    stream = await env.tts().open_stream(voice=cloned.id)
    await stream.send_text("Hello from my own voice.")
    await stream.finish()
    assert len(await stream.collect()) > 8000
    await stream.close()


async def test_voices_errors(env):
    voices = env.voices()
    with pytest.raises(StepFunRequestError, match="not found"):
        await voices.clone("file-missing")
    short = await voices.upload(wav_file(speechlike(1.0), 16000), "short.wav")
    with pytest.raises(StepFunRequestError, match="at least 3 s") as err:
        await voices.clone(short.id)
    assert err.value.trace_id == env.records("voices.clone")[-1].trace_id
    silent = await voices.upload(wav_file(np.zeros(16000 * 5, np.int16), 16000), "silent.wav")
    with pytest.raises(StepFunRequestError, match="no speech"):
        await voices.preview(silent.id, "hello")
    with pytest.raises(StepFunRequestError):
        await voices.upload(b"abc", "x.wav", purpose="nonsense")
    with pytest.raises(StepFunRequestError):
        await voices.list(limit=0)
    async with env.session.get(env.base + "/audio/voices?limit=500", headers={"Authorization": f"Bearer {KEY}"}) \
            as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "request_params_invalid"


async def test_voices_list_pages(env):
    voices = env.voices()
    ids = []
    for i in range(3):
        f = await voices.upload(wav_file(speechlike(3.5, seed=10 + i), 16000), f"ref{i}.wav")
        ids.append((await voices.clone(f.id)).id)
    first = await voices.list(limit=2)
    assert [v.id for v in first.voices] == ids[::-1][:2] and first.has_more
    rest = await voices.list(limit=2, after=first.last_id)
    assert [v.id for v in rest.voices] == [ids[0]] and not rest.has_more
    asc = await voices.list(order="asc")
    assert [v.id for v in asc.voices] == ids
