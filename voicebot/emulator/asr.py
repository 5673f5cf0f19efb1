"""ASR endpoint of the emulator: ``POST {prefix}/audio/asr/sse`` (docs/stepfun-api.md §6).

The body is checked field by field against the documented shape (unknown fields, wrong types, a missing
``model``/``format``/``rate``… → HTTP 400 ``request_params_invalid``; a non-JSON Content-Type → 400
``unsupported_content_type``). Accepted: ``format.type`` ``pcm`` (``codec: "pcm_s16le"``, ``bits: 16``,
``channel`` 1 or 2, ``rate`` 8000–48000) or ``wav`` (16-bit PCM); ``mp3``/``ogg`` are valid requests that the
emulator cannot decode (400 saying so). ``language`` is ``zh`` (default) or ``en``.

Transcript (emulator convention, the same as the realtime emulator's user transcripts): the audio is cut into
10 ms blocks; a block is speech when its RMS reaches -40 dBFS (``energy_awakeness_threshold`` 2500 in
:mod:`.speech`). With at least 40 ms of speech the transcript is ``"(caller speech 1.42 s)"``, the time from the
first to the last speech block; otherwise it is ``""`` (silence). It streams as a few
``transcript.text.delta`` events (appended pieces, ``start_time``/``end_time`` 0 unless
``enable_timestamp``), then ``transcript.text.done`` with ``text`` and ``usage``, then the stream ends.

Faults: ``asr_fail_once`` (HTTP status for the next request), ``asr_stream_error_once`` (message of an ``error``
event sent after the first delta of the next stream, which then ends without ``done``), ``http_delay_s``.
"""

from __future__ import annotations

import io
import time
import uuid
import wave

import numpy as np
from aiohttp import web

from . import speech
from ..stepfun import models
from .app import Emulator
from .http_common import (BadRequest, HttpRecord, b64decode, check_keys, elide_audio, endpoint, get,
                          open_event_stream, read_json, sse, take_fault)

ASR_MODELS = frozenset(models.ASR_MODELS)      # the names StepFun documents, as the client knows them
LANGUAGES = frozenset({"zh", "en"})
FORMAT_TYPES = frozenset({"ogg", "mp3", "wav", "pcm"})
MIN_RATE, MAX_RATE = 8000, 48000
BLOCK_MS = 10
SPEECH_THRESHOLD = 2500
AUDIO_TOKENS_PER_S = 25


def speech_span_s(pcm: np.ndarray, rate: int, threshold: int = SPEECH_THRESHOLD) -> float:
    """Seconds from the first to the last 10 ms block at or above the speech level (0.0 if < 40 ms of speech)."""
    block = max(1, rate * BLOCK_MS // 1000)
    n = len(pcm) // block
    if n == 0:
        return 0.0
    blocks = np.asarray(pcm[: n * block], dtype=np.float64).reshape(n, block)
    level = speech.threshold_to_rms(threshold)
    voiced = np.flatnonzero(np.einsum("ij,ij->i", blocks, blocks) >= level * level * block)
    if len(voiced) * BLOCK_MS < speech.MIN_SPEECH_MS:
        return 0.0
    return (voiced[-1] + 1 - voiced[0]) * block / rate


def transcript_for(pcm: np.ndarray, rate: int) -> str:
    """The emulator's transcript of an utterance: ``"(caller speech 1.42 s)"`` or ``""``."""
    seconds = speech_span_s(pcm, rate)
    return f"(caller speech {seconds:.2f} s)" if seconds > 0 else ""


def _pieces(text: str) -> list[str]:
    """Split into appended pieces: words with their leading space."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


def _parse(body: dict) -> tuple[np.ndarray, int, dict]:
    """Check the body; return (mono int16 samples, rate, transcription options)."""
    check_keys(body, {"audio"}, "")
    audio = get(body, "audio", "", "obj", required=True)
    check_keys(audio, {"data", "input"}, "audio")
    data_b64 = get(audio, "data", "audio", "str", required=True)
    inp = get(audio, "input", "audio", "obj", required=True)
    check_keys(inp, {"transcription", "format"}, "audio.input")
    tr = get(inp, "transcription", "audio.input", "obj", required=True)
    p = "audio.input.transcription"
    check_keys(tr, {"model", "language", "enable_itn", "enable_timestamp", "hotwords", "prompt",
                    "full_rerun_on_commit"}, p)
    model = get(tr, "model", p, "str", required=True, choices=ASR_MODELS)
    options = {
        "model": model,
        "language": get(tr, "language", p, "str", default="zh", choices=LANGUAGES),
        "enable_itn": get(tr, "enable_itn", p, "bool", default=True),
        "enable_timestamp": get(tr, "enable_timestamp", p, "bool", default=False),
    }
    hotwords = get(tr, "hotwords", p, "list")
    if hotwords is not None and not all(isinstance(w, str) for w in hotwords):
        raise BadRequest(f"'{p}.hotwords' must be an array of strings")
    if get(tr, "prompt", p, "str") is not None and model != "stepaudio-2-asr-pro":
        raise BadRequest(f"'{p}.prompt' is only supported by stepaudio-2-asr-pro")
    get(tr, "full_rerun_on_commit", p, "bool")

    fmt = get(inp, "format", "audio.input", "obj", required=True)
    p = "audio.input.format"
    check_keys(fmt, {"type", "codec", "rate", "bits", "channel"}, p)
    ftype = get(fmt, "type", p, "str", required=True, choices=FORMAT_TYPES)
    raw = b64decode(data_b64, "audio.data")
    if not raw:
        raise BadRequest("'audio.data' is empty")
    if ftype == "pcm":
        codec = get(fmt, "codec", p, "str", required=True)
        if codec != "pcm_s16le":
            raise BadRequest(f"'{p}.codec' {codec!r} is not supported; use pcm_s16le")
        rate = get(fmt, "rate", p, "int", required=True, lo=MIN_RATE, hi=MAX_RATE)
        get(fmt, "bits", p, "int", required=True, choices={16})
        channels = get(fmt, "channel", p, "int", required=True, choices={1, 2})
        if len(raw) % (2 * channels):
            raise BadRequest("'audio.data' is not a whole number of 16-bit samples")
        pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    elif ftype == "wav":
        for key, kind in (("codec", "str"), ("rate", "int"), ("bits", "int"), ("channel", "int")):
            get(fmt, key, p, kind)
        try:
            with wave.open(io.BytesIO(raw), "rb") as w:
                if w.getsampwidth() != 2:
                    raise BadRequest("'audio.data': only 16-bit PCM WAV is supported")
                channels, rate = w.getnchannels(), w.getframerate()
                frames = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as exc:
            raise BadRequest(f"'audio.data' is not a readable WAV file ({exc})") from None
        pcm = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], dtype="<i2").astype(np.int16)
    else:
        raise BadRequest(f"the emulator cannot decode {ftype} audio; send pcm or wav")
    if channels == 2:
        pcm = pcm.reshape(-1, 2).mean(axis=1).astype(np.int16)
    if len(pcm) == 0:
        raise BadRequest("'audio.data' holds no samples")
    return pcm, int(rate), options


async def _handle(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.StreamResponse:
    body = await read_json(request)
    record.body = elide_audio(body)
    pcm, rate, options = _parse(body)
    audio_ms = len(pcm) * 1000 // rate
    emulator.asr_requests += 1
    emulator.asr_audio_ms += audio_ms
    text = transcript_for(pcm, rate)
    record.result = text
    pieces = _pieces(text)
    session_id = f"sse_{uuid.uuid4().hex[:20]}"
    stream_error = take_fault(emulator, "asr_stream_error_once")

    def meta() -> dict:
        return {"session_id": session_id, "timestamp": int(time.time() * 1000)}

    resp = await open_event_stream(request)
    try:
        for i, piece in enumerate(pieces):
            event = {"type": "transcript.text.delta", "meta": meta(), "delta": piece, "start_time": 0,
                     "end_time": 0}
            if options["enable_timestamp"]:
                event.update(item_id=f"item_{session_id[4:]}", content_index=0,
                             start_time=audio_ms * i // len(pieces), end_time=audio_ms * (i + 1) // len(pieces))
            await resp.write(sse(event))
            if stream_error is not None:
                break
        if stream_error is not None:
            await resp.write(sse({"type": "error", "meta": meta(), "message": str(stream_error)}))
            record.error = str(stream_error)
        else:
            audio_tokens = max(1, round(len(pcm) / rate * AUDIO_TOKENS_PER_S))
            out_tokens = len(pieces)
            await resp.write(sse({"type": "transcript.text.done", "meta": meta(), "text": text, "usage": {
                "type": "realtime_asr", "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": out_tokens, "total_tokens": audio_tokens + out_tokens}}))
        await resp.write_eof()
        record.done = True
    except (ConnectionResetError, ConnectionError):
        record.aborted = True
    return resp


def add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None:
    @endpoint(emulator, "asr", "asr_fail_once")
    async def asr(request: web.Request, record: HttpRecord) -> web.StreamResponse:
        return await _handle(request, record, emulator)

    app.router.add_post(f"{prefix}/audio/asr/sse", asr)
