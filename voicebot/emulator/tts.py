"""TTS endpoints of the emulator (docs/stepfun-api.md §3 and §4).

``POST {prefix}/audio/speech``
    Body checked strictly (unknown fields → 400): ``model`` (``stepaudio-2.5-tts``, ``step-tts-2``,
    ``step-tts-mini``), ``input`` (1–1000 characters), ``voice`` (an official id or a clone made on this
    emulator, see :mod:`.voices`), ``instruction`` (≤ 200, 2.5 only), ``response_format`` (default ``mp3``),
    ``sample_rate`` (8000/16000/22050/24000 default/48000), ``speed`` 0.5–2.0, ``volume`` 0.1–2.0,
    ``voice_label`` (rejected by 2.5: "voice_label is not supported…"), ``pronunciation_map``,
    ``stream_format`` (``audio`` default, or ``sse``), ``markdown_filter``, ``return_url``.
    The answer is the raw audio (``pcm``: headerless s16le mono; ``wav``). ``mp3``/``flac``/``opus`` and
    ``return_url: true`` are valid requests the emulator cannot serve offline (400 saying so). With
    ``stream_format: "sse"``: ``speech.audio.delta`` events (200 ms of audio each), ``speech.audio.done``,
    ``data: [DONE]``.

``GET {prefix}/realtime/audio?model=stepaudio-2.5-tts`` (WebSocket)
    ``tts.connection.done`` → client ``tts.create`` → ``tts.response.created`` → client ``tts.text.delta``…
    For each sentence: ``tts.response.sentence.start`` ``{session_id, text, started_at, sentence_id}``,
    ``tts.response.audio.delta`` ``{session_id, status, audio, duration}`` (200 ms chunks; ``status``
    ``finished`` on the last chunk of a sentence), ``tts.response.sentence.end`` ``{…, ended_at}``
    (``started_at``/``ended_at`` in ms of the job's audio). ``tts.text.flush`` → ``tts.text.flushed`` and the
    buffered text is spoken; ``tts.text.done`` → the rest is spoken, ``tts.response.audio.done``
    ``{session_id, audio: ""}``, and the server closes the socket. Sentences end at ``。！？!?`` in
    ``mode: "sentence"``; in ``mode: "default"`` also at ``；;`` and at ``.`` followed by a space. A second
    ``tts.text.done`` (or text after it) gets ``tts.response.error`` "tts.text.done already received";
    client events with a wrong ``session_id``, an unknown ``type``, text over 1000 characters or text before
    ``tts.create`` get ``tts.response.error`` (code ``"400"``) and the socket stays open; an invalid
    ``tts.create`` gets the error and the socket closes. 60 s without a client event ends the job as if
    ``tts.text.done`` had been sent. The upgrade itself is refused with an HTTP error body for a bad key
    (401) or a missing/unknown ``model`` (400).

Audio: :func:`voicebot.emulator.speech.synthesize_speech` per phrase (text in ``()``/``（）`` is a direction and
is not spoken; phrases are cut so none is clamped to 8 s, with 150 ms pauses), ``speed`` applied by
resampling (pitch moves with it), ``volume`` as gain, then resampled to the requested rate.

Faults: ``tts_http_fail_once`` (HTTP status of the next ``/audio/speech``), ``tts_ws_fail_once`` (HTTP status
refusing the next WebSocket upgrade), ``tts_ws_error_once`` (the next WebSocket job answers its first
sentence with ``tts.response.error`` carrying this code — 503 says "engine overloaded" — and closes),
``tts_chunk_delay_s`` (pause before each audio chunk, WS and SSE), ``http_delay_s``, and, once, mid-way
through the next synthesis that streams audio (SSE or WebSocket, after ``tts_fault_after_chunks`` of its
chunks), ``tts_fault_once`` = :data:`~.app.MID_SPEECH_FAULTS`: ``reset`` — the TCP connection reset (RST, no
close frame, no end of body); ``stall`` — nothing more is sent (the connection and the WebSocket's close
handshake still work, as behind a live gateway) until the client leaves; ``garbage`` — :func:`sse_garbage` / :func:`ws_garbage` (a proxy's HTML error page,
cut-off JSON, JSON that is no event, events with missing or mistyped fields, undecodable audio, an unknown
event type, a binary frame), then the audio goes on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import uuid
import wave
from typing import Any

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from ..audio.resample import Resampler
from . import speech
from .app import MID_SPEECH_FAULTS, TRACE_ID, Emulator, check_bearer, error_response
from .http_common import (BadRequest, HttpRecord, check_keys, endpoint, fault, fault_response, get,
                          new_record, open_event_stream, read_json, reset_connection, sse, take_fault,
                          until_client_gone)
from .voices import TTS_MODELS, registry

log = structlog.get_logger("voicebot.emulator")

SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 48000})
FORMATS = frozenset({"wav", "mp3", "flac", "opus", "pcm"})
WS_FORMATS = FORMATS | {"mp3_stream", "opus_stream", "flac_stream"}
SERVED_FORMATS = frozenset({"pcm", "wav"})
MAX_INPUT = 1000
MAX_INSTRUCTION = 200
CHUNK_MS = 200
PAUSE_S = 0.15
MAX_PHRASE_S = 7.5
IDLE_TIMEOUT_S = 60.0
MAX_WS_MESSAGE = 4 * 1024 * 1024

_DIRECTION_RE = re.compile(r"\([^()]*\)|（[^（）]*）")
_PHRASE_END_RE = re.compile(r"(?<=[。！？!?；;])|(?<=[.…])(?=\s)")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD_RE = re.compile(f"[{_CJK}]\\s*|[^\\s{_CJK}]+\\s*|\\s+")


# ---------------------------------------------------------------------------------------------- audio

def spoken(text: str) -> str:
    """``text`` without its inline directions (``(…)`` / ``（…）`` are not spoken by 2.5)."""
    return " ".join(_DIRECTION_RE.sub(" ", text).split())


def phrases(text: str) -> list[str]:
    """Sentences of the spoken text, further cut so that none lasts over ``MAX_PHRASE_S``."""
    out: list[str] = []
    for sentence in _PHRASE_END_RE.split(spoken(text)):
        current = ""
        for word in _WORD_RE.findall(sentence):
            if current.strip() and speech.speech_duration_s(current + word) > MAX_PHRASE_S:
                out.append(current.strip())
                current = ""
            current += word
        if current.strip():
            out.append(current.strip())
    return out


def resample_once(pcm: np.ndarray, src: int, dst: int) -> np.ndarray:
    """One-shot resampling with the filter delay removed: ``len * dst / src`` samples, aligned."""
    if src == dst or len(pcm) == 0:
        return pcm.astype(np.int16, copy=False)
    r = Resampler(src, dst)
    pad = np.zeros(int(np.ceil((r.delay_samples + 2) * src / dst)) + 2 * src, dtype=np.int16)
    out = np.concatenate([r.process(pcm.astype(np.int16, copy=False)), r.process(pad)])
    n = int(round(len(pcm) * dst / src))
    return out[r.delay_samples:r.delay_samples + n]


def render_speech_sync(text: str, voice_key: str, rate: int, *, speed: float = 1.0,
                       volume: float = 1.0) -> np.ndarray:
    """int16 speech for ``text`` at ``rate``; 200 ms of silence if nothing in it is spoken."""
    parts: list[np.ndarray] = []
    pause = np.zeros(int(PAUSE_S * speech.SAMPLE_RATE), dtype=np.int16)
    for phrase in phrases(text):
        if parts:
            parts.append(pause)
        # Cached per phrase, as the realtime emulator's speech is: a repeated phrase costs no synthesis.
        parts.append(np.frombuffer(speech.synthesize_speech_bytes(phrase, voice_key), dtype="<i2"))
    if not parts:
        return np.zeros(rate // 5, dtype=np.int16)
    pcm = np.concatenate(parts)
    if volume != 1.0:
        pcm = np.clip(np.rint(pcm.astype(np.float64) * volume), -32768, 32767).astype(np.int16)
    # Playing 24 kHz samples as if they were recorded at 24 kHz * speed makes them speed times faster.
    src = int(round(speech.SAMPLE_RATE * float(speed) / 1200.0)) * 1200
    return resample_once(pcm, src, rate)


async def render_speech(text: str, voice_key: str, rate: int, *, speed: float = 1.0,
                        volume: float = 1.0) -> np.ndarray:
    return await asyncio.to_thread(render_speech_sync, text, voice_key, rate, speed=speed, volume=volume)


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
    return buf.getvalue()


def encode(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    return wav_bytes(pcm, rate) if fmt == "wav" else np.ascontiguousarray(pcm, dtype="<i2").tobytes()


def chunks(pcm: np.ndarray, rate: int) -> list[np.ndarray]:
    step = max(1, rate * CHUNK_MS // 1000)
    return [pcm[i:i + step] for i in range(0, len(pcm), step)] or [pcm]


async def chunk_pause(emulator: Emulator) -> None:
    await asyncio.sleep(fault(emulator, "tts_chunk_delay_s", 0.0) or 0.0)


def take_speech_fault(emulator: Emulator, chunks_sent: int) -> str | None:
    """The mid-speech fault due once ``chunks_sent`` audio chunks of a synthesis have gone out (taken: the
    next synthesis does not get it), or None."""
    faults = emulator.faults
    kind = getattr(faults, "tts_fault_once", None)
    if kind is None or chunks_sent < getattr(faults, "tts_fault_after_chunks", 0):
        return None
    faults.tts_fault_once = None
    if kind not in MID_SPEECH_FAULTS:
        log.error("emulator_tts_fault_unknown", fault=kind, known=MID_SPEECH_FAULTS)
        return None
    return kind


def sse_garbage() -> list[bytes]:
    """What a broken server or a proxy in the way may put in the middle of a speech event stream: none of it
    is a valid event, and a client must drop each one and carry on."""
    return [
        b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n\n",
        b'data: {"type":"speech.audio.delta","audio":"AAAA\n\n',                       # cut off
        b"data: [1, 2, 3]\n\n",
        b"data: null\n\n",
        sse({"no_type": True}),
        sse({"type": "speech.audio.delta", "audio": "@@ not base64 @@"}),
        sse({"type": "speech.audio.delta", "audio": 12345}),                              # mistyped
        sse({"type": "speech.audio.delta", "audio": ["AAAA"]}),
        sse({"type": "speech.audio.imaginary"}),
    ]


def ws_garbage(session_id: str) -> list[str | bytes]:
    """The same for the TTS WebSocket: text and binary frames that are no valid server event."""
    def event(kind: str, data: Any) -> str:
        return json.dumps({"event_id": uuid.uuid4().hex, "type": kind, "data": data})

    return [
        "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
        '{"type":"tts.response.audio.delta","data":{"session_id":"' + session_id + '","audio":"AAAA',  # cut off
        "[1, 2, 3]",
        "null",
        json.dumps({"event_id": uuid.uuid4().hex}),                                                   # no type
        event("tts.response.audio.delta", "garbled"),
        event("tts.response.audio.delta", {"session_id": session_id, "audio": "@@ not base64 @@"}),
        event("tts.response.audio.delta", {"session_id": session_id, "audio": 12345, "status": 7}),
        event("tts.response.sentence.start", {"session_id": session_id, "text": None, "sentence_id": []}),
        event("tts.response.imaginary", {"session_id": session_id}),
        b"\x00\xff\x13\x37 binary junk",
    ]


# ---------------------------------------------------------------------------------------------- checks

def _check_common(obj: dict, path: str, model: str, emulator: Emulator, *, voice_key: str, speed_key: str,
                  volume_key: str, formats: frozenset[str]) -> dict:
    if "voice_label" in obj and obj["voice_label"] is not None:
        if model == "stepaudio-2.5-tts":
            raise BadRequest(f"voice_label is not supported by {model}")
        label = get(obj, "voice_label", path, "obj")
        if len(label) != 1 or not set(label) <= {"language", "emotion", "style"}:
            raise BadRequest("'voice_label' takes exactly one of language, emotion, style")
    voice = get(obj, voice_key, path, "str", required=True)
    if not registry(emulator).is_known(voice):
        raise BadRequest(f"voice '{voice}' not found")
    instruction = get(obj, "instruction", path, "str")
    if instruction is not None:
        if model != "stepaudio-2.5-tts":
            raise BadRequest(f"instruction is not supported by {model}")
        if len(instruction) > MAX_INSTRUCTION:
            raise BadRequest(f"'instruction' is {len(instruction)} characters; the limit is {MAX_INSTRUCTION}")
    fmt = get(obj, "response_format", path, "str", default="mp3", choices=formats)
    if fmt not in SERVED_FORMATS:
        raise BadRequest(f"response_format {fmt} is valid, but the emulator produces only pcm and wav")
    pmap = get(obj, "pronunciation_map", path, "obj")
    if pmap is not None:
        tone = pmap.get("tone")
        if set(pmap) != {"tone"} or not isinstance(tone, list) or not all(isinstance(t, str) for t in tone):
            raise BadRequest("'pronunciation_map' must be {\"tone\": [\"word/pinyin\", ...]}")
    get(obj, "markdown_filter", path, "bool")
    return {
        "voice": voice,
        "voice_key": registry(emulator).synthesis_key(voice),
        "format": fmt,
        "rate": get(obj, "sample_rate", path, "int", default=24000, choices=SAMPLE_RATES),
        "speed": float(get(obj, speed_key, path, "number", default=1.0, lo=0.5, hi=2.0)),
        "volume": float(get(obj, volume_key, path, "number", default=1.0, lo=0.1, hi=2.0)),
    }


def _check_speech(body: dict, emulator: Emulator) -> dict:
    check_keys(body, {"model", "input", "voice", "instruction", "response_format", "sample_rate", "speed", "volume",
                      "voice_label", "pronunciation_map", "stream_format", "markdown_filter", "return_url"}, "")
    model = get(body, "model", "", "str", required=True)
    if model not in TTS_MODELS:
        raise BadRequest(f"model {model} not supported")
    text = get(body, "input", "", "str", required=True)
    if not text.strip():
        raise BadRequest("'input' is empty")
    if len(text) > MAX_INPUT:
        raise BadRequest(f"'input' is {len(text)} characters; the limit is {MAX_INPUT}")
    opts = _check_common(body, "", model, emulator, voice_key="voice", speed_key="speed", volume_key="volume",
                         formats=FORMATS)
    opts["text"] = text
    opts["sse"] = get(body, "stream_format", "", "str", default="audio", choices={"audio", "sse"}) == "sse"
    if get(body, "return_url", "", "bool", default=False):
        if opts["sse"]:
            raise BadRequest("return_url is only for non-stream requests")
        raise BadRequest("return_url is valid, but the emulator has no file storage to serve it")
    return opts


# ---------------------------------------------------------------------------------------------- HTTP

async def _speech(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.StreamResponse:
    body = await read_json(request)
    record.body = body
    opts = _check_speech(body, emulator)
    record.result = opts["text"]
    pcm = await render_speech(opts["text"], opts["voice_key"], opts["rate"], speed=opts["speed"],
                              volume=opts["volume"])
    ctype = "audio/wav" if opts["format"] == "wav" else "audio/pcm"
    if not opts["sse"]:
        record.done = True
        return web.Response(body=encode(pcm, opts["rate"], opts["format"]), content_type=ctype)
    resp = await open_event_stream(request)
    try:
        for sent, part in enumerate(chunks(pcm, opts["rate"])):
            await chunk_pause(emulator)
            kind = take_speech_fault(emulator, sent)
            if kind is not None:
                log.warning("emulator_tts_fault", fault=kind, transport="sse", trace_id=request.get(TRACE_ID))
                record.error = f"fault: {kind}"
                if kind == "reset":
                    reset_connection(request.transport)
                    record.aborted = True
                    return resp
                if kind == "stall":
                    await until_client_gone(request.transport)
                    record.aborted = True
                    return resp
                for line in sse_garbage():
                    await resp.write(line)
            await resp.write(sse({"type": "speech.audio.delta",
                                  "audio": base64.b64encode(encode(part, opts["rate"], opts["format"])).decode()}))
        await resp.write(sse({"type": "speech.audio.done", "audio": ""}))
        await resp.write(sse("[DONE]"))
        await resp.write_eof()
        record.done = True
    except ConnectionError:
        record.aborted = True
    return resp


# ---------------------------------------------------------------------------------------------- WebSocket

class _Closed(Exception):
    """The job is over (error sent, or the client went away)."""


class TtsSocket:
    """One ``/realtime/audio`` connection = one synthesis job."""

    def __init__(self, emulator: Emulator, ws: web.WebSocketResponse, record: HttpRecord,
                 transport: asyncio.Transport | None = None) -> None:
        self.emulator = emulator
        self.ws = ws
        self.transport = transport
        self.chunks_sent = 0
        self.fault: str | None = None       # the mid-speech fault this job got, if any
        self.record = record
        self.session_id = uuid.uuid4().hex
        self.options: dict | None = None
        self.mode = "default"
        self.done_received = False
        self.buffer = ""
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.samples_sent = 0
        self.sentence_no = 0
        self.spoken: list[str] = []
        self.sent_types: list[str] = []
        self.error_code: int | None = None
        self.failed = False
        self.worker: asyncio.Task | None = None

    async def send(self, kind: str, **data: Any) -> None:
        if self.ws.closed:
            raise _Closed()
        event = {"event_id": uuid.uuid4().hex, "type": kind, "data": {"session_id": self.session_id, **data}}
        try:
            await self.ws.send_str(json.dumps(event, ensure_ascii=False))
        except ConnectionError:
            raise _Closed() from None
        self.sent_types.append(kind)

    async def error(self, message: str, code: str = "400") -> None:
        self.record.error = self.record.error or message
        await self.send("tts.response.error", code=code, message=message, details={"error": message})

    async def run(self) -> None:
        try:
            try:
                await self.send("tts.connection.done")
                await self.read_loop()
            except _Closed:
                pass
            if self.worker is not None and not self.worker.done():
                if self.done_received:
                    await self.worker  # finishing: it sends the rest, or stops at its first failed send
                else:
                    self.worker.cancel()
            if not self.ws.closed:
                await self.ws.close()
        except asyncio.CancelledError:  # the server cancels handlers whose client went away
            if self.worker is not None:
                self.worker.cancel()
            raise
        finally:
            if self.options is not None and not self.record.done and not self.failed:
                self.record.aborted = True
            self.record.result = "".join(self.spoken)

    async def read_loop(self) -> None:
        while not self.ws.closed:
            try:
                msg = await self.ws.receive(timeout=IDLE_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.info("emulator_tts_idle", session_id=self.session_id)
                if self.worker is not None and not self.done_received:
                    self.done_received = True  # idle: finish the job as if tts.text.done had come
                    self.queue.put_nowait(("done", ""))
                return
            if msg.type == WSMsgType.TEXT:
                await self.on_event(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.error("binary frames are not supported; send JSON text events")
            else:
                return

    async def on_event(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            await self.error("invalid event format: not JSON")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("invalid event format: missing type")
            return
        kind = event["type"]
        data = event.get("data")
        if not isinstance(data, dict):
            await self.error(f"{kind}: data must be an object")
            return
        if data.get("session_id") != self.session_id:
            await self.error(f"{kind}: session_id does not match this connection")
            return
        if kind == "tts.create":
            await self.on_create(data)
        elif kind in ("tts.text.delta", "tts.text.flush", "tts.text.done"):
            if self.options is None:
                await self.error(f"{kind} before tts.create")
            elif self.done_received:
                await self.error("tts.text.done already received; this job takes no more events")
            elif kind == "tts.text.delta":
                text = data.get("text")
                if not isinstance(text, str):
                    await self.error("tts.text.delta: text must be a string")
                elif len(text) > MAX_INPUT:
                    await self.error(f"tts.text.delta: text is {len(text)} characters; the limit is {MAX_INPUT}")
                else:
                    self.queue.put_nowait(("text", text))
            elif kind == "tts.text.flush":
                self.queue.put_nowait(("flush", ""))
            else:
                self.done_received = True
                self.queue.put_nowait(("done", ""))
        else:
            await self.error(f"unknown event type '{kind}'")

    async def on_create(self, data: dict) -> None:
        if self.options is not None:
            await self.error("tts.create already received")
            return
        try:
            check_keys(data, {"session_id", "voice_id", "response_format", "sample_rate", "speed_ratio",
                              "volume_ratio", "mode", "instruction", "pronunciation_map", "markdown_filter",
                              "voice_label", "features"}, "data")
            model = self.record.body.get("model") if isinstance(self.record.body, dict) else None
            opts = _check_common(data, "data", model or "stepaudio-2.5-tts", self.emulator, voice_key="voice_id",
                                 speed_key="speed_ratio", volume_key="volume_ratio", formats=WS_FORMATS)
            self.mode = get(data, "mode", "data", "str", default="default", choices={"default", "sentence"})
            get(data, "features", "data", "obj")
        except BadRequest as exc:
            await self.error(f"tts.create: {exc.message}")
            await self.ws.close()
            raise _Closed() from None
        self.options = opts
        self.error_code = take_fault(self.emulator, "tts_ws_error_once")
        await self.send("tts.response.created")
        self.worker = asyncio.create_task(self.work())

    # -- synthesis

    def take_sentences(self) -> list[str]:
        ends = "。！？!?" if self.mode == "sentence" else "。！？!?；;"
        out: list[str] = []
        start = 0
        for i, ch in enumerate(self.buffer):
            nxt = self.buffer[i + 1] if i + 1 < len(self.buffer) else ""
            if ch in ends or (self.mode == "default" and ch == "." and nxt.isspace()):
                out.append(self.buffer[start:i + 1])
                start = i + 1
        self.buffer = self.buffer[start:]
        return [s for s in out if s.strip()]

    async def work(self) -> None:
        try:
            while True:
                kind, text = await self.queue.get()
                if kind == "text":
                    self.buffer += text
                    for sentence in self.take_sentences():
                        await self.speak(sentence)
                elif kind == "flush":
                    await self.send("tts.text.flushed")
                    rest, self.buffer = self.buffer, ""
                    if rest.strip():
                        await self.speak(rest)
                else:
                    rest, self.buffer = self.buffer, ""
                    if rest.strip():
                        await self.speak(rest)
                    await self.send("tts.response.audio.done", audio="")
                    self.record.done = True
                    await self.ws.close()
                    return
        except _Closed:
            return

    async def speak(self, sentence: str) -> None:
        assert self.options is not None
        opts = self.options
        if self.error_code is not None:
            code = int(self.error_code)
            self.failed = True
            await self.error("engine overloaded" if code == 503 else f"injected fault {code}", code=str(code))
            await self.ws.close()
            raise _Closed()
        text = sentence.strip()
        pcm = await render_speech(text, opts["voice_key"], opts["rate"], speed=opts["speed"], volume=opts["volume"])
        rate = opts["rate"]
        self.sentence_no += 1
        self.spoken.append(sentence)
        await self.send("tts.response.sentence.start", text=text, started_at=self.samples_sent * 1000 // rate,
                        sentence_id=self.sentence_no)
        parts = chunks(pcm, rate)
        for i, part in enumerate(parts):
            await chunk_pause(self.emulator)
            kind = take_speech_fault(self.emulator, self.chunks_sent)
            if kind is not None:
                await self.apply_fault(kind)
            self.chunks_sent += 1
            await self.send("tts.response.audio.delta", status="finished" if i == len(parts) - 1 else "unfinished",
                            audio=base64.b64encode(encode(part, rate, opts["format"])).decode("ascii"),
                            duration=round(len(part) / rate, 3))
            self.samples_sent += len(part)
        await self.send("tts.response.sentence.end", text=text, ended_at=self.samples_sent * 1000 // rate,
                        sentence_id=self.sentence_no)


    async def apply_fault(self, kind: str) -> None:
        """A :data:`~.app.MID_SPEECH_FAULTS` fault; returns only for ``garbage`` (the audio then goes on)."""
        self.fault = kind
        self.record.error = f"fault: {kind}"
        log.warning("emulator_tts_fault", fault=kind, transport="ws", session_id=self.session_id)
        if kind == "garbage":
            for message in ws_garbage(self.session_id):
                try:
                    if isinstance(message, bytes):
                        await self.ws.send_bytes(message)
                    else:
                        await self.ws.send_str(message)
                except ConnectionError:
                    raise _Closed() from None
            return
        self.failed = True
        if kind == "reset":
            reset_connection(self.transport)
        else:   # stall: no more audio (a synthesis stuck behind a live gateway) until the client leaves
            await until_client_gone(self.transport, also=lambda: self.ws.closed)
        raise _Closed()


async def _websocket(request: web.Request, emulator: Emulator) -> web.StreamResponse:
    record = new_record(emulator, request, "tts.ws")
    record.body = dict(request.query)
    denied = check_bearer(request)
    if denied is not None:
        record.status, record.error, record.done = 401, "unauthorized", True
        return denied
    status = take_fault(emulator, "tts_ws_fail_once")
    if status is not None:
        record.status, record.error, record.done = int(status), "injected fault", True
        return fault_response(int(status), "tts")
    model = request.query.get("model")
    if not model:
        record.status, record.error = 400, "missing model"
        return error_response(400, "Missing required query parameter 'model'", "request_params_invalid")
    if model not in TTS_MODELS:
        record.status, record.error = 400, "unknown model"
        return error_response(400, f"model '{model}' is not supported on this endpoint", "request_params_invalid")
    ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, autoping=True)
    if not ws.can_prepare(request).ok:
        record.status = 400
        return error_response(400, "this endpoint needs a WebSocket upgrade", "request_params_invalid")
    await ws.prepare(request)
    session = TtsSocket(emulator, ws, record, request.transport)
    log.info("emulator_tts_ws_open", session_id=session.session_id, trace_id=request.get(TRACE_ID))
    await session.run()
    return ws


def add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None:
    registry(emulator)

    @endpoint(emulator, "tts", "tts_http_fail_once")
    async def speech_(request: web.Request, record: HttpRecord) -> web.StreamResponse:
        return await _speech(request, record, emulator)

    async def websocket(request: web.Request) -> web.StreamResponse:
        return await _websocket(request, emulator)

    app.router.add_post(f"{prefix}/audio/speech", speech_)
    app.router.add_get(f"{prefix}/realtime/audio", websocket)
