"""StepFun voice cloning: upload a reference clip, preview, clone, list clones.

    voices = VoicesClient(session, base_url, api_key)
    f = await voices.upload(wav_bytes, "ref.wav")                       # POST {base}/files (purpose=storage)
    p = await voices.preview(f.id, "今天天气不错", text="<clip transcript>")  # POST {base}/audio/voices/preview
    v = await voices.clone(f.id, text="<clip transcript>")              # POST {base}/audio/voices → "voice-tone-…"
    page = await voices.list()                                          # GET  {base}/audio/voices

The clone id goes into ``voice`` (``/audio/speech``, realtime ``session.update``) or ``voice_id`` (TTS
WebSocket). Cloning is billed (9.9 元 per voice) on success; repeating it for the same file answers the same id
with ``duplicated: true``. StepFun does not say whether ``/step_plan/v1/files`` exists: an upload may need an
open-platform key and base URL (``https://api.stepfun.com/v1``), hence the separate ``files_base_url``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

import aiohttp
import structlog

from .errors import StepFunRequestError, StepFunUnavailable
from .http import DEFAULT_BASE_URL, StepFunClient, StepFunHttp
from .models import TTS_MODELS

log = structlog.get_logger("voicebot.stepfun")

VOICE_MODEL = TTS_MODELS[0]


@dataclass
class UploadedFile:
    id: str
    bytes: int | None
    filename: str | None
    purpose: str | None
    status: str | None
    created_at: int | None
    trace_id: str | None


@dataclass
class VoicePreview:
    sample_text: str
    wav: bytes                 # decoded sample_audio (a WAV file)
    request_id: str | None
    trace_id: str | None


@dataclass
class ClonedVoice:
    id: str                    # "voice-tone-…"
    duplicated: bool
    trace_id: str | None


@dataclass
class VoiceInfo:
    id: str
    file_id: str | None
    created_at: int | None


@dataclass
class VoiceList:
    voices: list[VoiceInfo] = field(default_factory=list)
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
    trace_id: str | None = None


def _need_str(doc: Any, key: str, what: str, trace_id: str | None) -> str:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise StepFunUnavailable(f"{what}: answer has no {key!r}", trace_id=trace_id)
    return value


class VoicesClient(StepFunClient):
    """Voice preview, cloning and listing; reference clips are uploaded to ``/files``, which may live
    elsewhere (``files_base_url``, ``files_api_key``: stepfun-api.md §5)."""

    default_model = VOICE_MODEL
    default_total_timeout = 60.0

    def __init__(self, session: aiohttp.ClientSession, base_url: str = DEFAULT_BASE_URL,
                 api_key: str | None = None, *, files_base_url: str | None = None,
                 files_api_key: str | None = None, **options) -> None:
        super().__init__(session, base_url, api_key, **options)
        self._files = StepFunHttp(session, files_base_url or base_url,
                                  files_api_key if files_api_key is not None else api_key,
                                  timeouts=self._http.timeouts)

    async def upload(self, data: bytes, filename: str = "ref.wav", *, purpose: str = "storage",
                     content_type: str | None = None) -> UploadedFile:
        """Upload a reference clip (wav or mp3, 5–10 s is StepFun's advice; ≤ 128 MB)."""
        if not data:
            raise StepFunRequestError("files: the file is empty", type="request_params_invalid")
        if content_type is None:
            content_type = "audio/mpeg" if filename.lower().endswith(".mp3") else "audio/wav"
        form = aiohttp.FormData()
        form.add_field("purpose", purpose)
        form.add_field("file", bytes(data), filename=filename, content_type=content_type)
        doc, trace_id = await self._files.request_json("POST", "files", what="files", data=form)
        file_id = _need_str(doc, "id", "files", trace_id)
        log.info("stepfun.file_uploaded", file_id=file_id, bytes=len(data), trace_id=trace_id)
        return UploadedFile(file_id, doc.get("bytes"), doc.get("filename"), doc.get("purpose"), doc.get("status"),
                            doc.get("created_at"), trace_id)

    async def preview(self, file_id: str, sample_text: str, *, text: str | None = None,
                      instruction: str | None = None, sample_rate: int | None = None, speed: float | None = None,
                      volume: float | None = None, extra: Mapping[str, Any] | None = None) -> VoicePreview:
        """Synthesize ``sample_text`` (keep it ≤ ~50 characters) in the voice of the clip; no voice is created."""
        body: dict[str, Any] = {"model": self.model, "file_id": file_id, "sample_text": sample_text,
                                "response_format": "wav"}
        for key, value in (("text", text), ("instruction", instruction), ("sample_rate", sample_rate),
                           ("speed", speed), ("volume", volume)):
            if value is not None:
                body[key] = value
        if extra:
            body.update(extra)
        doc, trace_id = await self._http.request_json("POST", "audio/voices/preview", what="voices.preview",
                                                      json_body=body)
        audio = _need_str(doc, "sample_audio", "voices.preview", trace_id)
        try:
            wav = base64.b64decode(audio, validate=True)
        except ValueError:
            raise StepFunUnavailable("voices.preview: sample_audio is not base64", trace_id=trace_id) from None
        return VoicePreview(str(doc.get("sample_text") or sample_text), wav, doc.get("request_id"), trace_id)

    async def clone(self, file_id: str, *, text: str | None = None) -> ClonedVoice:
        """Create (and pay for) a voice from an uploaded clip; returns its ``voice-tone-…`` id."""
        body: dict[str, Any] = {"model": self.model, "file_id": file_id}
        if text:
            body["text"] = text
        doc, trace_id = await self._http.request_json("POST", "audio/voices", what="voices.clone", json_body=body)
        voice_id = _need_str(doc, "id", "voices.clone", trace_id)
        log.info("stepfun.voice_cloned", voice_id=voice_id, file_id=file_id, duplicated=bool(doc.get("duplicated")),
                 trace_id=trace_id)
        return ClonedVoice(voice_id, bool(doc.get("duplicated")), trace_id)

    async def list(self, *, limit: int = 20, order: str = "desc", before: str | None = None,
                   after: str | None = None) -> VoiceList:
        """One page of cloned voices (``limit`` 1–100)."""
        if not 1 <= int(limit) <= 100:
            raise StepFunRequestError(f"voices.list: limit {limit} is outside 1–100", type="request_params_invalid")
        params = {"limit": str(int(limit)), "order": order}
        if before:
            params["before"] = before
        if after:
            params["after"] = after
        doc, trace_id = await self._http.request_json("GET", "audio/voices", what="voices.list", params=params)
        items = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise StepFunUnavailable("voices.list: answer has no 'data' list", trace_id=trace_id)
        voices = [VoiceInfo(str(v["id"]), v.get("file_id"), v.get("created_at"))
                  for v in items if isinstance(v, dict) and v.get("id")]
        return VoiceList(voices, bool(doc.get("has_more")), doc.get("first_id"), doc.get("last_id"), trace_id)
