"""StepFun chat completions: ``POST {base}/chat/completions`` with ``stepaudio-2.5-chat`` (text out only).

Streaming is the normal use: an async iterator of text deltas that ends at ``data: [DONE]``. After the
iteration, ``finish_reason`` says why the model stopped; ``"length"`` and ``"content_filter"`` mean the reply
is cut (``stream.cut`` is True) and it is up to the caller what to say instead::

    chat = ChatClient(session, base_url, api_key)
    async with chat.stream(messages) as s:
        async for piece in s:
            ...
    s.text, s.finish_reason, s.usage, s.trace_id

Closing the stream early (leaving the ``async with``, ``aclose()``, or cancelling the task that iterates)
drops the HTTP connection at once, which ends the generation on the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import structlog

from .errors import StepFunError, StepFunUnavailable, error_for_status
from .http import SseStream, StepFunClient, StepFunHttp, Timeouts
from .models import CHAT_MODELS

log = structlog.get_logger("voicebot.stepfun")

CHAT_MODEL = CHAT_MODELS[0]
CHAT_PATH = "chat/completions"
CUT_REASONS = ("length", "content_filter")


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    usage: dict | None
    trace_id: str | None
    id: str | None = None
    tool_calls: list[dict] = field(default_factory=list)

    @property
    def cut(self) -> bool:
        """The model stopped early: ``finish_reason`` is ``length`` or ``content_filter``."""
        return self.finish_reason in CUT_REASONS


def _error_in_body(doc: dict, what: str, trace_id: str | None) -> StepFunError:
    err = doc.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    err_type = err.get("type") if isinstance(err, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    try:
        status = int(code) if code is not None else None
    except (TypeError, ValueError):
        status = None
    text = f"{what}: error in stream: {message or 'no message'}"
    if status is not None and 400 <= status < 600:
        return error_for_status(status, text, type=err_type, trace_id=trace_id)
    return StepFunUnavailable(text, type=err_type, code=None if code is None else str(code), trace_id=trace_id)


def _merge_tool_calls(calls: list[dict], deltas: Any) -> None:
    """Accumulate OpenAI-style streamed ``tool_calls`` fragments (by ``index``) into full calls."""
    if not isinstance(deltas, list):
        return
    for d in deltas:
        if not isinstance(d, dict):
            continue
        index = d.get("index", len(calls))
        if not isinstance(index, int) or index < 0:
            continue
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if d.get("id"):
            call["id"] = d["id"]
        if d.get("type"):
            call["type"] = d["type"]
        fn = d.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                call["function"]["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["function"]["arguments"] += fn["arguments"]


class ChatStream(SseStream[str]):
    """One streamed completion: async iterator of non-empty text deltas, in order."""

    _log_started = "stepfun.chat_started"
    _log_bad_event = "stepfun.chat_bad_chunk"

    def __init__(self, http: StepFunHttp, body: dict, timeouts: Timeouts, what: str = "chat") -> None:
        super().__init__(http, CHAT_PATH, body, timeouts, what)
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.id: str | None = None
        self.tool_calls: list[dict] = []
        self.completed = False  # [DONE] (or a final finish_reason) was received

    @property
    def cut(self) -> bool:
        return self.finish_reason in CUT_REASONS

    def _on_event(self, event: dict) -> str | None:
        if "error" in event:
            raise _error_in_body(event, self._what, self.trace_id)
        self.id = self.id or event.get("id")
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        piece = ""
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    piece += content
                _merge_tool_calls(self.tool_calls, delta.get("tool_calls"))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
                if reason in CUT_REASONS:
                    log.info("stepfun.chat_cut", finish_reason=reason, trace_id=self.trace_id)
        if piece:
            self.text += piece
            return piece
        return None

    def _on_done_marker(self) -> bool:
        self.completed = True
        log.debug("stepfun.chat_done", trace_id=self.trace_id, finish_reason=self.finish_reason, usage=self.usage)
        return True

    def _on_end(self) -> None:
        if not self.finish_reason:
            super()._on_end()  # raises: ended before [DONE]
        self.completed = True

    async def aclose(self) -> None:
        """Stop now: drop the connection if still open (idempotent)."""
        was_open = self._resp is not None
        await super().aclose()
        if was_open and not self.completed:
            log.debug("stepfun.chat_aborted", trace_id=self.trace_id, chars=len(self.text))

    def result(self) -> ChatResult:
        return ChatResult(self.text, self.finish_reason, self.usage, self.trace_id, self.id,
                          list(self.tool_calls))


class ChatClient(StepFunClient):
    """``stepaudio-2.5-chat`` over ``POST {base}/chat/completions`` (``modalities: ["text"]``)."""

    default_model = CHAT_MODEL
    default_total_timeout = 60.0

    def request_body(self, messages: Sequence[Mapping[str, Any]], *, stream: bool, temperature: float = 0.5,
                     top_p: float | None = None, max_tokens: int | None = None,
                     stop: str | Sequence[str] | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages], "stream": stream,
                                "modalities": ["text"], "temperature": temperature}
        if top_p is not None:
            body["top_p"] = top_p
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if stop is not None:
            body["stop"] = stop if isinstance(stop, str) else list(stop)
        if tools:
            body["tools"] = [dict(t) for t in tools]
        if extra:
            body.update(extra)
        return body

    def stream(self, messages: Sequence[Mapping[str, Any]], *, temperature: float = 0.5,
               top_p: float | None = None, max_tokens: int | None = None, stop: str | Sequence[str] | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None, extra: Mapping[str, Any] | None = None,
               connect_timeout: float | None = None, total_timeout: float | None = None) -> ChatStream:
        """Start a streamed completion (the request goes out on ``async with`` or the first ``__anext__``)."""
        body = self.request_body(messages, stream=True, temperature=temperature, top_p=top_p,
                                 max_tokens=max_tokens, stop=stop, tools=tools, extra=extra)
        return ChatStream(self._http, body, self._http.timeouts.override(connect_timeout, total_timeout))

    async def complete(self, messages: Sequence[Mapping[str, Any]], *, temperature: float = 0.5,
                       top_p: float | None = None, max_tokens: int | None = None,
                       stop: str | Sequence[str] | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                       extra: Mapping[str, Any] | None = None, connect_timeout: float | None = None,
                       total_timeout: float | None = None) -> ChatResult:
        """One non-streamed completion."""
        body = self.request_body(messages, stream=False, temperature=temperature, top_p=top_p,
                                 max_tokens=max_tokens, stop=stop, tools=tools, extra=extra)
        doc, trace_id = await self._http.request_json(
            "POST", CHAT_PATH, what="chat", json_body=body,
            timeouts=self._http.timeouts.override(connect_timeout, total_timeout))
        if not isinstance(doc, dict):
            raise StepFunUnavailable("chat: answer is not a JSON object", trace_id=trace_id)
        if "error" in doc:
            raise _error_in_body(doc, "chat", trace_id)
        choices = doc.get("choices") or []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message") if isinstance(first.get("message"), dict) else {}
        content = message.get("content")
        reason = first.get("finish_reason") or None
        tool_calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
        return ChatResult(content if isinstance(content, str) else "", reason,
                          doc.get("usage") if isinstance(doc.get("usage"), dict) else None, trace_id,
                          doc.get("id"), tool_calls)
