"""StepFun ASR over HTTP + SSE: ``POST {base}/audio/asr/sse`` with ``stepaudio-2.5-asr``.

The whole utterance goes up in one JSON request (PCM16 mono 16 kHz, base64) and the transcript streams back
as ``data:`` lines: ``transcript.text.delta`` (appended pieces), then ``transcript.text.done`` whose ``text``
is the authoritative transcript. An ``error`` event mid-stream, or a stream that ends without ``done``, is an
error (never an empty transcript)::

    asr = AsrClient(session, base_url, api_key)
    result = await asr.transcribe(pcm16k, "en")          # Transcript(text, trace_id, deltas, ...)

    async with asr.stream(pcm16k, "zh") as s:            # or piece by piece
        async for delta in s:
            ...
    s.text, s.trace_id
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import structlog

from .errors import StepFunError, StepFunRequestError, StepFunUnavailable, error_for_status
from .http import SseStream, StepFunClient, StepFunHttp, Timeouts
from .models import ASR_MODELS

log = structlog.get_logger("voicebot.stepfun")

ASR_MODEL = ASR_MODELS[0]
ASR_RATE = 16000
ASR_PATH = "audio/asr/sse"


@dataclass
class Transcript:
    text: str                       # transcript.text.done "text" (authoritative)
    trace_id: str | None            # X-Trace-Id of the answer
    deltas: list[str] = field(default_factory=list)
    session_id: str | None = None   # meta.session_id of the events
    usage: dict | None = None


def pcm16_bytes(pcm: np.ndarray) -> bytes:
    """Mono samples as little-endian PCM16 bytes (int16 as is; floats in [-1, 1] are scaled)."""
    a = np.asarray(pcm)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {a.shape}")
    if a.dtype.kind == "f":
        a = np.clip(np.rint(a * 32767.0), -32768, 32767)
    elif a.dtype != np.int16:
        a = np.clip(a, -32768, 32767)
    return np.ascontiguousarray(a, dtype="<i2").tobytes()


def asr_request_body(pcm16k: np.ndarray, language: str, *, model: str = ASR_MODEL, enable_itn: bool = True,
                     hotwords: Sequence[str] | None = None, enable_timestamp: bool = False,
                     sample_rate: int = ASR_RATE) -> dict[str, Any]:
    """The documented JSON body for PCM16 mono audio (16 kHz unless ``sample_rate`` says otherwise)."""
    transcription: dict[str, Any] = {"model": model, "language": language, "enable_itn": bool(enable_itn),
                                     "enable_timestamp": bool(enable_timestamp)}
    if hotwords:
        transcription["hotwords"] = [str(w) for w in hotwords]
    return {"audio": {
        "data": base64.b64encode(pcm16_bytes(pcm16k)).decode("ascii"),
        "input": {
            "transcription": transcription,
            "format": {"type": "pcm", "codec": "pcm_s16le", "rate": int(sample_rate), "bits": 16, "channel": 1},
        },
    }}


def _stream_error(event: dict, what: str, trace_id: str | None) -> StepFunError:
    """An ``error`` event as a typed error: its status/code if it has one, else unavailable (blocks: request)."""
    message = event.get("message")
    if not message and isinstance(event.get("error"), dict):
        message = event["error"].get("message")
    message = str(message or "error event without a message")
    status = event.get("status") or event.get("code")
    try:
        status_int = int(status) if status is not None else None
    except (TypeError, ValueError):
        status_int = None
    text = f"{what}: error in stream: {message}"
    if status_int is not None and 400 <= status_int < 600:
        return error_for_status(status_int, text, type="stream_error", trace_id=trace_id)
    if "block" in message.lower() or "censor" in message.lower():
        return StepFunRequestError(text, type="censorship_block", trace_id=trace_id)
    return StepFunUnavailable(text, type="stream_error", trace_id=trace_id)


class AsrStream(SseStream[str]):
    """One transcription: async iterator of text deltas; ``text`` is final once iteration has ended.

    Starts the request on ``async with`` or on the first ``__anext__``; ``aclose()`` (or leaving the
    ``async with``, or cancelling the task that iterates) drops the connection.
    """

    _log_started = "stepfun.asr_started"
    _log_bad_event = "stepfun.asr_bad_event"

    def __init__(self, http: StepFunHttp, body: dict, timeouts: Timeouts, what: str = "asr") -> None:
        super().__init__(http, ASR_PATH, body, timeouts, what)
        self.text: str | None = None
        self.deltas: list[str] = []
        self.session_id: str | None = None
        self.usage: dict | None = None

    def _on_event(self, event: dict) -> str | None:
        meta = event.get("meta")
        if isinstance(meta, dict) and meta.get("session_id") and not self.session_id:
            self.session_id = str(meta["session_id"])
        kind = event.get("type")
        if kind == "transcript.text.delta":
            delta = event.get("delta")
            if isinstance(delta, str) and delta:
                self.deltas.append(delta)
                return delta
        elif kind == "transcript.text.done":
            text = event.get("text")
            self.text = text if isinstance(text, str) else "".join(self.deltas)
            self.usage = event.get("usage") if isinstance(event.get("usage"), dict) else None
            log.debug("stepfun.asr_done", trace_id=self.trace_id, session_id=self.session_id, chars=len(self.text))
            raise StopAsyncIteration
        elif kind == "error":
            raise _stream_error(event, self._what, self.trace_id)
        else:
            log.debug("stepfun.asr_unknown_event", type=kind, trace_id=self.trace_id)
        return None

    def _on_done_marker(self) -> bool:
        return False  # only transcript.text.done ends a transcription

    def _on_end(self) -> None:
        raise StepFunUnavailable(f"{self._what}: stream ended without transcript.text.done", trace_id=self.trace_id)

    def result(self) -> Transcript:
        if self.text is None:
            raise RuntimeError("the transcript is not complete")
        return Transcript(self.text, self.trace_id, list(self.deltas), self.session_id, self.usage)


class AsrClient(StepFunClient):
    """``stepaudio-2.5-asr`` over ``POST {base}/audio/asr/sse``."""

    default_model = ASR_MODEL
    default_total_timeout = 30.0

    def stream(self, pcm16k: np.ndarray, language: str = "zh", *, enable_itn: bool = True,
               hotwords: Sequence[str] | None = None, sample_rate: int = ASR_RATE,
               connect_timeout: float | None = None, total_timeout: float | None = None) -> AsrStream:
        """Transcribe mono PCM16 (16 kHz by default) piece by piece; see :class:`AsrStream`."""
        pcm = np.asarray(pcm16k)
        if pcm.size == 0:
            raise StepFunRequestError("asr: no audio to transcribe")
        body = asr_request_body(pcm, language, model=self.model, enable_itn=enable_itn, hotwords=hotwords,
                                sample_rate=sample_rate)
        return AsrStream(self._http, body, self._http.timeouts.override(connect_timeout, total_timeout))

    async def transcribe(self, pcm16k: np.ndarray, language: str = "zh", *, enable_itn: bool = True,
                         hotwords: Sequence[str] | None = None, sample_rate: int = ASR_RATE,
                         connect_timeout: float | None = None, total_timeout: float | None = None) -> Transcript:
        """The final transcript of one utterance."""
        async with self.stream(pcm16k, language, enable_itn=enable_itn, hotwords=hotwords,
                               sample_rate=sample_rate, connect_timeout=connect_timeout,
                               total_timeout=total_timeout) as s:
            async for _ in s:
                pass
        return s.result()
