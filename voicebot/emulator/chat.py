"""Chat completions endpoint of the emulator: ``POST {prefix}/chat/completions`` (docs/stepfun-api.md §2).

Checked strictly where the docs are precise: ``model`` must be ``stepaudio-2.5-chat``; ``messages`` a non-empty
array of ``system``/``user``/``assistant``/``tool`` messages (user content a string or ``text``/``input_audio``
parts; assistant content may be ``null`` with ``tool_calls``; ``tool`` needs ``tool_call_id``);
``modalities`` only ``["text"]`` (``"audio"`` → 400, as is the ``audio`` output parameter); ``temperature``
0–2, ``top_p`` 0–1, ``frequency_penalty`` 0–1, ``max_tokens`` ≥ 1, ``n`` 1–8, ``stop`` a string or up to 4
strings, ``tools`` function tools, ``response_format`` ``text``/``json_object`` (``json_schema`` is for step-3.5
models only). Other top-level fields are ignored, as OpenAI-compatible servers do.

Reply (deterministic; same conventions as the realtime emulator):

* the newest ``tool`` message → ``"The tool returned: <content>"``;
* else the newest ``user`` message: its text with a marker (``Say exactly:``, ``verbatim:``, ``原样输出:``) →
  the text after the marker, verbatim; the emulator ASR's transcript of speech it cannot read
  (``"(caller speech 1.42 s)"``) or audio only → ``"You said something for 1.4 seconds."``, as the realtime
  emulator answers the same speech; other plain text → ``"You said: <text>."`` (Chinese text →
  ``"你说：<text>。"``);
* else a ``system`` message with a marker → that text; else ``"Hello, how can I help you?"``.

Tool calls, steered by the directives of :mod:`.tool_calls` (``On caller turn N, say "…" and call <name>
<json-args>.`` in a ``system`` message, where N counts the user messages; ``Call tool: <name> <json-args>``
in the newest user message) for a function the request's ``tools`` offer: the reply's ``content`` is the
spoken line (``null`` without one, non-streamed) and its ``tool_calls`` one call ``{id: "call_…", type:
"function", function: {name, arguments}}`` with the arguments verbatim, ``finish_reason: "tool_calls"``.
Streamed, the line's pieces come first, then ``delta.tool_calls[{index: 0, id, type, function: {name,
arguments}}]`` with the first piece of the arguments and further chunks with the rest
(``{index: 0, function: {arguments}}``). A following request may carry that assistant message
(``tool_calls`` with ``id``, ``type: "function"``, ``function.name`` and ``function.arguments`` strings) and a
``tool`` message whose ``tool_call_id`` names one of its calls (else 400, as is a second answer to the
same call); the reply to it is "The tool returned: …". A function's ``parameters`` must be a JSON Schema
of ``type: "object"``.

``stop`` cuts the reply before the first stop string; ``max_tokens`` cuts it to that many pieces with
``finish_reason: "length"``; ``response_format: json_object`` wraps it as ``{"reply": …}``. Streaming sends one
piece per chunk (a CJK character, or a word with its leading space), every chunk with cumulative ``usage``
and ``finish_reason: ""`` until the last, then ``data: [DONE]``.

Faults: ``chat_fail_once`` (HTTP status of the next request), ``chat_finish_reason_once`` (the next reply
stops after two pieces with this ``finish_reason``, e.g. ``content_filter``), ``chat_token_delay_s`` (pause
before each streamed piece), ``http_delay_s``. A client that disconnects mid-stream is seen at the next write
(its :class:`HttpRecord` gets ``aborted=True``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import time
import uuid
import wave
from typing import Any

import numpy as np
from aiohttp import web

from .app import Emulator
from .asr import speech_span_s
from .http_common import (BadRequest, HttpRecord, elide_audio, endpoint, fault, get, open_event_stream, read_json,
                          sse, take_fault)
from ..stepfun import models
from .realtime import DEFAULT_REPLY
from .realtime_events import MARKER_RE, spoken_text
from .tool_calls import (FUNCTION_NAME_RE, ToolCall, allowed, fragments, inline_call, new_call_id, offered_functions,
                         parameters_problem, turn_directives)

CHAT_MODELS = frozenset(models.CHAT_MODELS)    # the names StepFun documents, as the client knows them
ROLES = frozenset({"system", "user", "assistant", "tool"})
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls"})
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_CJK_RE = re.compile(f"[{_CJK}]")
_ASR_PLACEHOLDER_RE = re.compile(r"\(caller speech (\d+(?:\.\d+)?) s\)")
_PIECE_RE = re.compile(f"\\s*[{_CJK}]|\\s*[^\\s{_CJK}]+|\\s+")


def pieces(text: str) -> list[str]:
    """Streaming pieces whose concatenation is ``text``: each CJK character, or a word with leading space."""
    return _PIECE_RE.findall(text)


def _text_parts(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _audio_seconds(content: Any) -> float | None:
    """Speech seconds of the first decodable ``input_audio`` part (WAV), else None."""
    if not isinstance(content, list):
        return None
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "input_audio"):
            continue
        data = part["input_audio"]["data"]
        raw = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            with wave.open(io.BytesIO(base64.b64decode(raw)), "rb") as w:
                rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                frames = w.readframes(w.getnframes())
        except (wave.Error, EOFError, binascii.Error, ValueError):
            return None
        if width != 2:
            return None
        pcm = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], dtype="<i2")
        if channels > 1:
            pcm = pcm.reshape(-1, channels).mean(axis=1)
        return speech_span_s(pcm, rate)
    return None


def _echo(text: str) -> str:
    """The reply to a user's text."""
    if MARKER_RE.search(text):
        return spoken_text(text) or DEFAULT_REPLY
    if placeholder := _ASR_PLACEHOLDER_RE.fullmatch(text):
        return f"You said something for {float(placeholder.group(1)):.1f} seconds."
    if _CJK_RE.search(text):
        return f"你说：{text.rstrip('。！？!?.')}。"
    return f"You said: {text.rstrip('.!?。！？')}."


def plan_reply(messages: list[dict]) -> str:
    """The emulator's reply to a conversation that offers no tools (see the module docstring)."""
    return plan_turn(messages, set())[0] or DEFAULT_REPLY


def plan_turn(messages: list[dict], tools: set[str]) -> tuple[str | None, ToolCall | None]:
    """(what the reply says -- None: nothing --, the tool it calls or None) for a conversation (see the
    module docstring); ``tools``: the function names the request offers."""
    for index in range(len(messages) - 1, -1, -1):
        msg = messages[index]
        role = msg["role"]
        if role == "tool":
            return f"The tool returned: {_text_parts(msg.get('content'))}", None
        if role != "user":
            continue
        text = _text_parts(msg.get("content")).strip()
        inline = inline_call(text)
        if inline is not None:
            before, call = inline
            if allowed(call, tools, endpoint="chat"):
                return (_echo(before) if before else None), call
            text = before
        turn = sum(1 for m in messages[:index + 1] if m["role"] == "user")
        system = "\n".join(_text_parts(m.get("content")) for m in messages if m["role"] == "system")
        call = allowed(turn_directives(system).get(turn), tools, endpoint="chat", caller_turn=turn)
        if call is not None:
            return call.say, call
        if text:
            return _echo(text), None
        seconds = _audio_seconds(msg.get("content"))
        if seconds is not None:
            return f"You said something for {seconds:.1f} seconds.", None
    for msg in messages:
        if msg["role"] == "system":
            text = _text_parts(msg.get("content"))
            if MARKER_RE.search(text):
                return spoken_text(text) or DEFAULT_REPLY, None
    return DEFAULT_REPLY, None


# ---------------------------------------------------------------------------------------------- checks

def _check_message(msg: Any, i: int) -> dict:
    p = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise BadRequest(f"'{p}' must be an object")
    role = get(msg, "role", p, "str", required=True, choices=ROLES)
    content = msg.get("content")
    if role == "user":
        if isinstance(content, list):
            if not content:
                raise BadRequest(f"'{p}.content' is empty")
            for j, part in enumerate(content):
                pp = f"{p}.content[{j}]"
                if not isinstance(part, dict):
                    raise BadRequest(f"'{pp}' must be an object")
                ptype = get(part, "type", pp, "str", required=True, choices={"text", "input_audio"})
                if ptype == "text":
                    get(part, "text", pp, "str", required=True)
                else:
                    audio = get(part, "input_audio", pp, "obj", required=True)
                    data = get(audio, "data", f"{pp}.input_audio", "str", required=True)
                    if not data:
                        raise BadRequest(f"'{pp}.input_audio.data' is empty")
        elif not isinstance(content, str):
            raise BadRequest(f"'{p}.content' must be a string or an array of content parts")
    elif role == "assistant":
        if content is None:
            if not msg.get("tool_calls"):
                raise BadRequest(f"'{p}.content' may be null only with tool_calls")
        elif not isinstance(content, (str, list)):
            raise BadRequest(f"'{p}.content' must be a string")
        for j, call in enumerate(get(msg, "tool_calls", p, "list") or ()):
            pc = f"{p}.tool_calls[{j}]"
            if not isinstance(call, dict):
                raise BadRequest(f"'{pc}' must be an object")
            get(call, "id", pc, "str", required=True)
            get(call, "type", pc, "str", required=True, choices={"function"})
            fn = get(call, "function", pc, "obj", required=True)
            get(fn, "name", f"{pc}.function", "str", required=True)
            get(fn, "arguments", f"{pc}.function", "str", required=True)
    elif role == "tool":
        get(msg, "content", p, "str", required=True)
        get(msg, "tool_call_id", p, "str", required=True)
    else:  # system
        if not isinstance(content, (str, list)):
            raise BadRequest(f"'{p}.content' must be a string")
    return msg


def _check_tool_results(messages: list[dict]) -> None:
    """Each ``tool`` message answers a call made by an earlier assistant message, once."""
    calls: set[str] = set()
    answered: set[str] = set()
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            calls.update(call["id"] for call in msg.get("tool_calls") or ())
        elif msg["role"] == "tool":
            call_id = msg["tool_call_id"]
            if call_id not in calls:
                raise BadRequest(f"'messages[{i}].tool_call_id' {call_id!r} does not match the id of a tool "
                                 "call in a preceding assistant message")
            if call_id in answered:
                raise BadRequest(f"'messages[{i}].tool_call_id' {call_id!r}: that tool call was already answered")
            answered.add(call_id)


def _check(body: dict) -> dict:
    model = get(body, "model", "", "str", required=True)
    if model not in CHAT_MODELS:
        raise BadRequest(f"model {model} not supported")
    messages = get(body, "messages", "", "list", required=True)
    if not messages:
        raise BadRequest("'messages' must not be empty")
    for i, msg in enumerate(messages):
        _check_message(msg, i)
    _check_tool_results(messages)
    modalities = get(body, "modalities", "", "list")
    if modalities is not None:
        if "audio" in modalities:
            raise BadRequest(f"modalities 'audio' is not supported by {model}; only ['text']")
        if modalities != ["text"]:
            raise BadRequest(f"'modalities' must be ['text']; got {modalities!r}")
    if body.get("audio") is not None:
        raise BadRequest(f"'audio' output is not supported by {model}")
    opts = {
        "model": model,
        "messages": messages,
        "stream": get(body, "stream", "", "bool", default=False),
        "temperature": get(body, "temperature", "", "number", default=0.5, lo=0.0, hi=2.0),
        "top_p": get(body, "top_p", "", "number", default=0.9, lo=0.0, hi=1.0),
        "max_tokens": get(body, "max_tokens", "", "int", lo=1),
        "n": get(body, "n", "", "int", default=1, lo=1, hi=8),
        "frequency_penalty": get(body, "frequency_penalty", "", "number", default=0.0, lo=0.0, hi=1.0),
    }
    stop = body.get("stop")
    if stop is None:
        opts["stop"] = []
    elif isinstance(stop, str):
        opts["stop"] = [stop] if stop else []
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        opts["stop"] = list(stop)
    else:
        raise BadRequest("'stop' must be a string or an array of up to 4 non-empty strings")
    tools = get(body, "tools", "", "list")
    for i, tool in enumerate(tools or ()):
        p = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"'{p}' must be an object")
        get(tool, "type", p, "str", required=True, choices={"function"})
        fn = get(tool, "function", p, "obj", required=True)
        name = get(fn, "name", f"{p}.function", "str", required=True)
        if not FUNCTION_NAME_RE.match(name):
            raise BadRequest(f"'{p}.function.name' may use only ASCII letters, digits, _ and -, at most 64")
        get(fn, "description", f"{p}.function", "str")
        parameters = get(fn, "parameters", f"{p}.function", "obj")
        problem = None if parameters is None else parameters_problem(parameters)
        if problem is not None:
            raise BadRequest(f"'{p}.function.parameters' {problem}")
    opts["tools"] = offered_functions(tools)
    fmt = get(body, "response_format", "", "obj")
    opts["json"] = False
    if fmt is not None:
        ftype = get(fmt, "type", "response_format", "str", required=True,
                    choices={"text", "json_object", "json_schema"})
        if ftype == "json_schema":
            raise BadRequest(f"response_format json_schema is not supported by {model}")
        opts["json"] = ftype == "json_object"
    return opts


def _prompt_tokens(messages: list[dict]) -> int:
    return sum(4 + (len(_text_parts(m.get("content"))) + 1) // 2 for m in messages)


def _plan(opts: dict, forced_reason: str | None) -> tuple[list[str], str, ToolCall | None]:
    """(pieces, finish_reason, tool call or None) of the reply. A reply cut short (a stop string,
    ``max_tokens``, a forced finish) never gets as far as its tool call."""
    text, call = plan_turn(opts["messages"], opts["tools"])
    text = text or ""
    if opts["json"] and call is None:
        text = json.dumps({"reply": text}, ensure_ascii=False)
    reason = "stop" if call is None else "tool_calls"
    for s in opts["stop"]:
        at = text.find(s)
        if at >= 0:
            text, reason, call = text[:at], "stop", None
    parts = pieces(text)
    if forced_reason:
        parts, reason, call = parts[:2], forced_reason, None
    elif opts["max_tokens"] is not None and len(parts) > opts["max_tokens"]:
        parts, reason, call = parts[: opts["max_tokens"]], "length", None
    return parts, reason, call


async def _handle(request: web.Request, record: HttpRecord, emulator: Emulator) -> web.StreamResponse:
    body = await read_json(request)
    record.body = elide_audio(body)
    opts = _check(body)
    forced = take_fault(emulator, "chat_finish_reason_once")
    parts, reason, call = _plan(opts, forced)
    record.result = "".join(parts)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    prompt_tokens = _prompt_tokens(opts["messages"])
    n = opts["n"]
    call_ids = [new_call_id() for _ in range(n)] if call is not None else []
    arguments = fragments(call.arguments) if call is not None else []

    def usage(completion: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    if not opts["stream"]:
        record.done = True

        def message(index: int) -> dict:
            if call is None:
                return {"role": "assistant", "content": "".join(parts)}
            return {"role": "assistant", "content": "".join(parts) or None, "tool_calls": [{
                "id": call_ids[index], "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}]}

        return web.json_response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": opts["model"],
            "choices": [{"index": i, "message": message(i), "finish_reason": reason} for i in range(n)],
            "usage": usage((len(parts) + len(arguments)) * n)})

    def chunk(index: int, content: str, role: str, finish: str, completion: int,
              tool_call: dict | None = None) -> dict:
        delta = {"role": role, "content": content}
        if tool_call is not None:
            delta["tool_calls"] = [{"index": 0, **tool_call}]
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": opts["model"],
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
                "usage": usage(completion)}

    def tool_call_delta(index: int, k: int) -> dict:
        """The call's ``k``-th streamed piece: its id, type and name come with the first."""
        assert call is not None
        if k == 0:
            return {"id": call_ids[index], "type": "function",
                    "function": {"name": call.name, "arguments": arguments[0]}}
        return {"function": {"arguments": arguments[k]}}

    resp = await open_event_stream(request)
    sent = 0
    try:
        for k, piece in enumerate(parts):
            delay = fault(emulator, "chat_token_delay_s", 0.0) or 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            for index in range(n):
                sent += 1
                await resp.write(sse(chunk(index, piece, "assistant" if k == 0 else "", "", sent)))
        for k in range(len(arguments)):
            for index in range(n):
                sent += 1
                role = "assistant" if k == 0 and not parts else ""
                await resp.write(sse(chunk(index, "", role, "", sent, tool_call_delta(index, k))))
        for index in range(n):
            await resp.write(sse(chunk(index, "", "", reason, sent)))
        await resp.write(sse("[DONE]"))
        await resp.write_eof()
        record.done = True
    except (ConnectionResetError, ConnectionError):
        record.aborted = True
    except asyncio.CancelledError:
        record.aborted = True
        raise
    return resp


def add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None:
    @endpoint(emulator, "chat", "chat_fail_once")
    async def chat(request: web.Request, record: HttpRecord) -> web.StreamResponse:
        return await _handle(request, record, emulator)

    app.router.add_post(f"{prefix}/chat/completions", chat)
