"""Voice endpoints of the emulator (docs/stepfun-api.md §5, §7) and the voice registry.

Routes (under each prefix):

* ``POST /files`` — multipart ``purpose`` + ``file``. Answers the documented file object
  (``id: "file-…"``, ``status: "processed"``). Files live in memory on the :class:`VoiceRegistry`.
* ``POST /audio/voices/preview`` — ``{model, file_id, sample_text, text?, response_format?, speed?, volume?,
  instruction?, sample_rate?, pronunciation_map?, markdown_filter?}`` → ``{sample_text, sample_audio (base64
  WAV), request_id}``. Creates no voice.
* ``POST /audio/voices`` — ``{model, file_id, text?}`` → ``{id: "voice-tone-…", object: "audio.voice"}``;
  the same file again → the same id with ``duplicated: true``.
* ``GET /audio/voices?limit=&order=&before=&after=`` → ``{object: "list", data: [{id, file_id, created_at}],
  has_more, first_id, last_id}``.
* ``GET /audio/system_voices?model=`` → ``{voices: [...], "voices-details": {...}}``.

Emulator conventions: a reference clip must be a WAV (16-bit PCM, mono or stereo) or an MP3 (recognised by
its header, not decoded); a WAV must last at least 3 s and hold at least 1 s of speech (StepFun asks for
5–10 s; the 2.5 model page says 3 s is enough). ``sample_text`` is limited to 100 characters. A clone speaks
with a pitch derived from its file id, so preview and clone sound alike and differ from official voices.
Unknown body fields are rejected.
"""

from __future__ import annotations

import base64
import io
import secrets
import string
import time
import wave
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from ..stepfun import models
from .app import Emulator
from .http_common import BadRequest, HttpRecord, check_keys, endpoint, get, read_json

OFFICIAL_VOICES: tuple[str, ...] = (
    "linjiajiejie", "cixingnansheng", "qingchunshaonv", "wenrounansheng", "elegantgentle-female",
    "livelybreezy-female", "wenrougongzi", "yuanqinansheng", "jingdiannvsheng", "wenroushunv", "tianmeinvsheng",
    "yuanqishaonv", "zhengpaiqingnian", "qingniandaxuesheng", "boyinnansheng", "ruyananshi", "shenchennanyin",
    "qinqienvsheng", "wenrounvsheng", "jilingshaonv", "ruanmengnvsheng", "youyanvsheng", "lengyanyujie",
    "shuangkuaijiejie", "wenjingxuejie", "linjiameimei", "zhixingjiejie", "zixinnansheng", "shuangkuainansheng",
    "ganliannvsheng", "qinhenvsheng", "huolinvsheng", "vibrant-youth", "lively-girl", "soft-spoken-gentleman",
    "magnetic-voiced-male", "energeticconfident-female",
)
OFFICIAL_VOICE_SET = frozenset(OFFICIAL_VOICES)
TTS_MODELS = frozenset(models.TTS_MODELS)      # the names StepFun documents, as the client knows them
FILE_PURPOSES = frozenset({"storage", "file-extract", "retrieval-text", "retrieval-image"})
MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_FILES = 1000
MIN_CLIP_S = 3.0
MIN_CLIP_SPEECH_S = 1.0
MAX_SAMPLE_TEXT = 100
_ALNUM = string.ascii_letters + string.digits


def _rand(n: int = 10) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class ClonedVoice:
    id: str
    file_id: str
    created_at: int
    text: str | None = None


@dataclass
class VoiceRegistry:
    """Uploaded files and cloned voices of one emulator (in memory, insertion ordered)."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    voices: dict[str, ClonedVoice] = field(default_factory=dict)

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        if len(self.files) >= MAX_FILES:
            raise BadRequest(f"file limit reached: at most {MAX_FILES} files per user")
        stored = StoredFile(f"file-{_rand()}", filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def clone(self, file_id: str, text: str | None = None) -> tuple[ClonedVoice, bool]:
        """(voice, duplicated): the same file gives the same voice."""
        for voice in self.voices.values():
            if voice.file_id == file_id:
                return voice, True
        voice = ClonedVoice(f"voice-tone-{_rand()}", file_id, int(time.time()), text)
        self.voices[voice.id] = voice
        return voice, False

    def is_known(self, voice: str) -> bool:
        return voice in OFFICIAL_VOICE_SET or voice in self.voices

    def synthesis_key(self, voice: str) -> str:
        """What :func:`voicebot.emulator.speech.synthesize_speech` gets as ``voice`` (its pitch)."""
        clone = self.voices.get(voice)
        return clone.file_id if clone is not None else voice


def registry(emulator: Emulator) -> VoiceRegistry:
    """The emulator's voice registry (created on first use if the emulator has none)."""
    reg = getattr(emulator, "voice_registry", None)
    if not isinstance(reg, VoiceRegistry):
        reg = VoiceRegistry()
        emulator.voice_registry = reg  # type: ignore[attr-defined]
    return reg


def is_known_voice(emulator: Emulator, voice: str) -> bool:
    """An official voice id or a clone made on this emulator (for TTS and realtime voice checks)."""
    return registry(emulator).is_known(voice)


# ---------------------------------------------------------------------------------------------- clips

def clip_seconds(data: bytes, file_id: str) -> float | None:
    """Duration of a WAV clip (``None`` for MP3, which is not decoded); 400 if neither or too short/silent."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data), "rb") as w:
                if w.getsampwidth() != 2:
                    raise BadRequest(f"file {file_id}: only 16-bit PCM WAV is supported")
                channels, rate, frames = w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
        except (wave.Error, EOFError) as exc:
            raise BadRequest(f"file {file_id}: unreadable WAV ({exc})") from None
        pcm = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], dtype="<i2")
        if channels > 1:
            pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
        seconds = len(pcm) / rate
        if seconds < MIN_CLIP_S:
            raise BadRequest(f"file {file_id}: reference audio is {seconds:.1f} s; at least {MIN_CLIP_S:g} s "
                             "is needed (5-10 s recommended)")
        from .asr import speech_span_s  # local: asr imports this module
        if speech_span_s(pcm, rate) < MIN_CLIP_SPEECH_S:
            raise BadRequest(f"file {file_id}: no speech found in the reference audio")
        return seconds
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return None
    raise BadRequest(f"file {file_id}: reference audio must be a wav or mp3 file")


def _file(emulator: Emulator, body: dict) -> StoredFile:
    file_id = get(body, "file_id", "", "str", required=True)
    stored = registry(emulator).files.get(file_id)
    if stored is None:
        raise BadRequest(f"file '{file_id}' not found")
    return stored


def _model(body: dict) -> str:
    return get(body, "model", "", "str", required=True, choices=TTS_MODELS)


# ---------------------------------------------------------------------------------------------- handlers

async def _upload(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.Response:
    if request.content_type != "multipart/form-data":
        raise BadRequest(f"Content-Type must be multipart/form-data, got '{request.content_type}'",
                         type="unsupported_content_type")
    purpose: str | None = None
    filename: str | None = None
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "upload"
            buf = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                buf += chunk
                if len(buf) > MAX_FILE_BYTES:
                    raise BadRequest(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
            data = bytes(buf)
        else:
            raise BadRequest(f"unknown form field '{part.name}'")
    if purpose is None:
        raise BadRequest("missing required parameter 'purpose'")
    if purpose not in FILE_PURPOSES:
        raise BadRequest(f"'purpose' must be one of {', '.join(sorted(FILE_PURPOSES))}; got {purpose!r}")
    if data is None:
        raise BadRequest("missing required parameter 'file'")
    if not data:
        raise BadRequest("the uploaded file is empty")
    stored = registry(emulator).add_file(filename or "upload", purpose, data)
    record.body = {"purpose": purpose, "filename": filename, "bytes": len(data)}
    record.result, record.done = stored.id, True
    return web.json_response(stored.public())


async def _preview(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.Response:
    from .tts import render_speech, wav_bytes  # local: tts imports this module

    body = await read_json(request)
    record.body = body
    check_keys(body, {"model", "file_id", "text", "sample_text", "response_format", "speed", "volume",
                      "instruction", "sample_rate", "pronunciation_map", "markdown_filter"}, "")
    _model(body)
    stored = _file(emulator, body)
    sample_text = get(body, "sample_text", "", "str", required=True)
    if not sample_text.strip():
        raise BadRequest("'sample_text' is empty")
    if len(sample_text) > MAX_SAMPLE_TEXT:
        raise BadRequest(f"'sample_text' is {len(sample_text)} characters; the limit is {MAX_SAMPLE_TEXT}")
    get(body, "text", "", "str")
    get(body, "response_format", "", "str", choices={"wav"})
    speed = get(body, "speed", "", "number", default=1.0, lo=0.5, hi=2.0)
    volume = get(body, "volume", "", "number", default=1.0, lo=0.1, hi=2.0)
    instruction = get(body, "instruction", "", "str")
    if instruction is not None and len(instruction) > 200:
        raise BadRequest(f"'instruction' is {len(instruction)} characters; the limit is 200")
    rate = get(body, "sample_rate", "", "int", default=24000, choices={8000, 16000, 22050, 24000, 48000})
    get(body, "pronunciation_map", "", "obj")
    get(body, "markdown_filter", "", "bool")
    clip_seconds(stored.data, stored.id)
    pcm = await render_speech(sample_text, stored.id, rate, speed=speed, volume=volume)
    record.result, record.done = sample_text, True
    return web.json_response({"sample_text": sample_text,
                              "sample_audio": base64.b64encode(wav_bytes(pcm, rate)).decode("ascii"),
                              "request_id": f"req-{_rand(16)}"})


async def _clone(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.Response:
    body = await read_json(request)
    record.body = body
    check_keys(body, {"model", "file_id", "text"}, "")
    _model(body)
    stored = _file(emulator, body)
    text = get(body, "text", "", "str")
    clip_seconds(stored.data, stored.id)
    voice, duplicated = registry(emulator).clone(stored.id, text)
    answer: dict = {"id": voice.id, "object": "audio.voice"}
    if duplicated:
        answer["duplicated"] = True
    record.result, record.done = voice.id, True
    return web.json_response(answer)


async def _list(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.Response:
    query = request.query
    record.body = dict(query)
    unknown = sorted(set(query) - {"limit", "order", "before", "after"})
    if unknown:
        raise BadRequest(f"unknown parameter '{unknown[0]}'")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise BadRequest("'limit' must be an integer") from None
    if not 1 <= limit <= 100:
        raise BadRequest(f"'limit' must be between 1 and 100; got {limit}")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"'order' must be asc or desc; got {order!r}")
    voices = list(registry(emulator).voices.values())
    if order == "desc":
        voices.reverse()
    ids = [v.id for v in voices]
    for key in ("after", "before"):
        cursor = query.get(key)
        if cursor and cursor not in ids:
            raise BadRequest(f"'{key}': voice '{cursor}' not found")
    if query.get("after"):
        voices = voices[ids.index(query["after"]) + 1:]
    if query.get("before"):
        kept = [v.id for v in voices]
        voices = voices[:kept.index(query["before"])] if query["before"] in kept else []
        page, has_more = voices[-limit:], len(voices) > limit
    else:
        page, has_more = voices[:limit], len(voices) > limit
    data = [{"id": v.id, "file_id": v.file_id, "created_at": v.created_at} for v in page]
    record.done = True
    return web.json_response({"object": "list", "data": data, "has_more": has_more,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})


async def _system_voices(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.Response:
    record.body = dict(request.query)
    model = request.query.get("model")
    if model is not None and model not in TTS_MODELS:
        raise BadRequest(f"model '{model}' not supported")
    details = {v: {"voice-name": v, "voice-description": "emulated voice", "recommended_scene": ""}
               for v in OFFICIAL_VOICES}
    record.done = True
    return web.json_response({"voices": list(OFFICIAL_VOICES), "voices-details": details})


def add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None:
    registry(emulator)

    def bind(name: str, handler):
        @endpoint(emulator, name)
        async def run(request: web.Request, record: HttpRecord) -> web.StreamResponse:
            return await handler(request, record, emulator)
        return run

    app.router.add_post(f"{prefix}/files", bind("files", _upload))
    app.router.add_post(f"{prefix}/audio/voices/preview", bind("voices.preview", _preview))
    app.router.add_post(f"{prefix}/audio/voices", bind("voices.clone", _clone))
    app.router.add_get(f"{prefix}/audio/voices", bind("voices.list", _list))
    app.router.add_get(f"{prefix}/audio/system_voices", bind("voices.system", _system_voices))
