"""What a realtime client may send the emulator: event validation, the conversation's items and responses, and
the input audio stream.

Split from :mod:`.realtime` (the session and its socket) so that the protocol's rules read in one place.
Every check raises :class:`ProtocolError`, which the session turns into an ``error`` event.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import speech
from .tool_calls import FUNCTION_NAME_RE, parameters_problem

BYTES_PER_MS = speech.SAMPLE_RATE * 2 // 1000     # PCM16 at 24 kHz
DEFAULT_VOICE = "linjiajiejie"
REALTIME_VOICES = frozenset({
    "linjiajiejie", "cixingnansheng", "qingchunshaonv", "wenrounansheng", "elegantgentle-female",
    "livelybreezy-female", "wenrougongzi", "yuanqinansheng", "jingdiannvsheng", "wenroushunv",
    "tianmeinvsheng", "yuanqishaonv", "zhengpaiqingnian", "qingniandaxuesheng", "boyinnansheng",
    "ruyananshi", "shenchennanyin", "qinqienvsheng", "wenrounvsheng", "jilingshaonv", "ruanmengnvsheng",
    "youyanvsheng", "lengyanyujie", "shuangkuaijiejie", "wenjingxuejie", "linjiameimei", "zhixingjiejie",
    "zixinnansheng", "shuangkuainansheng", "ganliannvsheng", "qinhenvsheng", "huolinvsheng",
    "vibrant-youth", "lively-girl", "soft-spoken-gentleman", "magnetic-voiced-male",
    "energeticconfident-female",
})
CLONE_VOICE_PREFIX = "voice-tone-"
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "prefix_padding_ms": 500,
    "silence_duration_ms": 100,
    "energy_awakeness_threshold": 2500,
}
MAX_APPEND_BASE64 = 15 * 1024 * 1024

MARKER_RE = re.compile(r"(?:say\s+exactly|verbatim|原样输出)\s*[:：]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’「」『』"


def new_id(prefix: str) -> str:
    """``prefix_`` and 24 random hex digits. Not secret, so no system call (uuid4 reads the OS's random source):
    one is made for every event sent."""
    return f"{prefix}_{random.getrandbits(96):024x}"


def spoken_text(text: str) -> str:
    """What the emulator says for ``text``: the part after a marker ("Say exactly:" …) if any, unquoted."""
    match = MARKER_RE.search(text)
    said = text[match.end():] if match else text
    said = said.strip()
    if len(said) >= 2 and said[0] in _QUOTES and said[-1] in _QUOTES:
        said = said[1:-1].strip()
    return said


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type


# ---------------------------------------------------------------------------------------------- validation

def missing(param: str) -> ProtocolError:
    return ProtocolError("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def bad_type(param: str, expected: str) -> ProtocolError:
    return ProtocolError("invalid_type", f"Invalid type for '{param}': expected {expected}.", param)


def bad_value(param: str, message: str) -> ProtocolError:
    return ProtocolError("invalid_value", f"Invalid value for '{param}': {message}", param)


def check_keys(obj: dict, allowed: set[str], where: str = "") -> None:
    for key in obj:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ProtocolError("unknown_parameter", f"Unknown parameter: '{name}'.", name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_field(obj: dict, key: str, param: str, *, required: bool, lo: int = 0, hi: int | None = None):
    if key not in obj:
        if required:
            raise missing(param)
        return None
    value = obj[key]
    if not _is_int(value):
        raise bad_type(param, "integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad_value(param, f"must be an integer {bound}, got {value}.")
    return value


def str_field(obj: dict, key: str, param: str, *, required: bool, nonempty: bool = False):
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise missing(param)
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise bad_type(param, "string")
    if nonempty and not value:
        raise bad_value(param, "must not be empty.")
    return value


def decode_audio(value: Any, param: str) -> bytes:
    if not isinstance(value, str):
        raise bad_type(param, "base64 string")
    try:
        # strict_mode accepts exactly what b64decode(validate=True) does, without its regex pass
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad_value(param, "audio is not valid base64.") from None
    if len(raw) % 2:
        raise bad_value(param, "pcm16 audio must have an even number of bytes.")
    return raw


def _validate_modalities(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise bad_type(param, "array of strings")
    if sorted(value) not in (["text"], ["audio", "text"]):
        raise bad_value(param, "supported combinations are ['text'] and ['text', 'audio'].")
    return list(value)


def _validate_voice(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad_type(param, "string")
    if value not in REALTIME_VOICES and not (value.startswith(CLONE_VOICE_PREFIX)
                                             and len(value) > len(CLONE_VOICE_PREFIX)):
        raise bad_value(param, f"unknown voice '{value}'.")
    return value


def _validate_format(value: Any, param: str) -> str:
    if value != "pcm16":
        raise bad_value(param, f"only 'pcm16' is supported, got {value!r}.")
    return value


def _validate_turn_detection(value: Any, param: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_type(param, "object or null")
    check_keys(value, {"type", "prefix_padding_ms", "silence_duration_ms", "energy_awakeness_threshold"}, param)
    if "type" not in value:
        raise missing(f"{param}.type")
    if value["type"] != "server_vad":
        raise bad_value(f"{param}.type", f"only 'server_vad' is supported, got {value['type']!r}.")
    result = dict(DEFAULT_TURN_DETECTION)
    for key, hi in (("prefix_padding_ms", 60_000), ("silence_duration_ms", 60_000),
                    ("energy_awakeness_threshold", 5000)):
        got = int_field(value, key, f"{param}.{key}", required=False, lo=0, hi=hi)
        if got is not None:
            result[key] = got
    return result


def _validate_tools(value: Any, param: str) -> list[dict]:
    if not isinstance(value, list):
        raise bad_type(param, "array")
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise bad_type(where, "object")
        check_keys(tool, {"type", "function"}, where)
        kind = tool.get("type")
        if kind not in ("function", "web_search", "retrieval"):
            raise bad_value(f"{where}.type", "must be 'function', 'web_search' or 'retrieval'.")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise missing(f"{where}.function") if fn is None else bad_type(f"{where}.function", "object")
        if kind == "function":
            check_keys(fn, {"name", "description", "parameters"}, f"{where}.function")
            name = str_field(fn, "name", f"{where}.function.name", required=True)
            if not FUNCTION_NAME_RE.match(name):
                raise bad_value(f"{where}.function.name", "use 1-64 ASCII letters, digits, '_' or '-'.")
            str_field(fn, "description", f"{where}.function.description", required=False)
            if "parameters" in fn:
                if not isinstance(fn["parameters"], dict):
                    raise bad_type(f"{where}.function.parameters", "object")
                problem = parameters_problem(fn["parameters"])
                if problem is not None:
                    raise bad_value(f"{where}.function.parameters", problem)
        else:
            check_keys(fn, {"description", "options"}, f"{where}.function")
    return copy.deepcopy(value)


def _validate_tool_choice(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("invalid_event", "invalid event format", param)
    if value not in ("auto", "required", "none"):
        raise bad_value(param, "must be 'auto', 'required' or 'none'.")
    return value


def _validate_temperature(value: Any, param: str) -> float:
    if not _is_number(value):
        raise bad_type(param, "number")
    if not 0.0 <= value <= 2.0:
        raise bad_value(param, "must be between 0 and 2.")
    return value


def _validate_max_tokens(value: Any, param: str) -> int | str:
    if value == "inf":
        return value
    if not _is_int(value) or value < 1:
        raise bad_value(param, "must be a positive integer or 'inf'.")
    return value


def _validate_transcription(value: Any, param: str) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise bad_type(param, "object or null")
    return value


def _validate_instructions(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad_type(param, "string")
    return value


SESSION_FIELDS = {
    "modalities": _validate_modalities,
    "instructions": _validate_instructions,
    "voice": _validate_voice,
    "input_audio_format": _validate_format,
    "output_audio_format": _validate_format,
    "turn_detection": _validate_turn_detection,
    "tools": _validate_tools,
    "tool_choice": _validate_tool_choice,
    "temperature": _validate_temperature,
    "max_response_output_tokens": _validate_max_tokens,
    "input_audio_transcription": _validate_transcription,
}
RESPONSE_FIELDS = {
    "modalities": _validate_modalities,
    "instructions": _validate_instructions,
    "voice": _validate_voice,
    "output_audio_format": _validate_format,
    "tools": _validate_tools,
    "tool_choice": _validate_tool_choice,
    "temperature": _validate_temperature,
    "max_response_output_tokens": _validate_max_tokens,
}


def validate_fields(obj: Any, validators: dict, where: str) -> dict:
    if not isinstance(obj, dict):
        raise bad_type(where, "object")
    out = {}
    for key, value in obj.items():
        validate = validators.get(key)
        if validate is None:
            raise ProtocolError("unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}")
        out[key] = validate(value, f"{where}.{key}")
    return out


# ---------------------------------------------------------------------------------------------- conversation

@dataclass
class Item:
    """One conversation item; ``audio`` is its 24 kHz PCM16 (user audio, or assistant audio generated)."""

    id: str
    type: str
    role: str | None = None
    status: str = "completed"
    content: list[dict] = field(default_factory=list)
    call_id: str | None = None
    output: str | None = None             # function_call_output items
    name: str | None = None               # function_call items: the tool and its arguments (verbatim)
    arguments: str | None = None
    audio: bytearray = field(default_factory=bytearray)
    speech_ms: int | None = None          # VAD items: audio_end_ms - audio_start_ms
    truncated_ms: int | None = None       # set by conversation.item.truncate
    response_id: str | None = None        # assistant items: the response that produced it

    def public(self) -> dict:
        item: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "message":
            item["role"] = self.role
            item["content"] = copy.deepcopy(self.content)
        elif self.type == "function_call":
            item.update(call_id=self.call_id, name=self.name, arguments=self.arguments)
        else:
            item.update(call_id=self.call_id, output=self.output)
        return item

    @property
    def audio_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS


class InputAudio:
    """The PCM16 appended to a session, addressed by sample position in the whole stream. Appends are kept as
    the chunks they came in (no copy per append) and joined when a slice is read; the front can be forgotten
    (:meth:`keep_from`) so that a long call holds only its recent audio."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._bytes = 0           # held
        self.base = 0             # samples forgotten at the front

    @property
    def samples(self) -> int:
        """Samples appended so far (forgotten ones included): the position of the next one."""
        return self.base + self._bytes // 2

    @property
    def held_samples(self) -> int:
        return self._bytes // 2

    def append(self, raw: bytes) -> None:
        self._chunks.append(raw)
        self._bytes += len(raw)

    def held(self) -> bytes:
        """Every sample still held, from position ``base``."""
        chunks = self._chunks
        if len(chunks) > 1:
            chunks[:] = [b"".join(chunks)]
        return chunks[0] if chunks else b""

    def slice(self, start: int, end: int | None = None) -> bytes:
        """The samples from position ``start`` to ``end`` (the end of the stream when None) still held."""
        lo = max(0, start - self.base) * 2
        hi = self._bytes if end is None else max(0, end - self.base) * 2
        return self.held()[lo:hi]

    def keep_from(self, start: int) -> None:
        """Forget the samples before position ``start``."""
        if start > self.base:
            self._chunks[:] = [self.slice(start)]
            self._bytes = len(self._chunks[0])
            self.base = start


@dataclass
class Response:
    id: str
    modalities: list[str]
    voice: str
    instructions: str | None
    tools: frozenset[str] = frozenset()   # the function tools this response may call
    status: str = "in_progress"
    status_details: dict | None = None
    item: Item | None = None       # the assistant message (output 0), if the reply says anything
    call: Item | None = None       # the function_call that follows it, once emitted
    text: str = ""                 # what the reply says in full
    transcript_sent: str = ""      # what has been streamed so far
    planned_ms: float | None = None  # length of the full reply audio, once known
    task: asyncio.Task | None = None
    created_at: float = field(default_factory=time.monotonic)
    first_delta_at: float | None = None

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities


def validate_item(item: Any) -> Item:
    if not isinstance(item, dict):
        raise missing("item") if item is None else bad_type("item", "object")
    check_keys(item, {"id", "type", "object", "status", "role", "content", "call_id", "output"}, "item")
    item_id = str_field(item, "id", "item.id", required=False, nonempty=True)
    if item_id is not None and len(item_id) > 64:
        raise bad_value("item.id", "must be at most 64 characters.")
    if "object" in item and item["object"] != "realtime.item":
        raise bad_value("item.object", "must be 'realtime.item'.")
    if "status" in item and item["status"] not in ("completed", "incomplete", "in_progress"):
        raise bad_value("item.status", "must be 'completed', 'incomplete' or 'in_progress'.")
    kind = str_field(item, "type", "item.type", required=True)
    new_item_id = item_id or new_id("item")
    if kind == "function_call_output":
        for key in ("role", "content"):
            if key in item:
                raise ProtocolError("unknown_parameter", f"Unknown parameter for function_call_output: "
                                    f"'item.{key}'.", f"item.{key}")
        call_id = str_field(item, "call_id", "item.call_id", required=True, nonempty=True)
        output = str_field(item, "output", "item.output", required=True)
        return Item(id=new_item_id, type=kind, call_id=call_id, output=output)
    if kind != "message":
        raise bad_value("item.type", f"must be 'message' or 'function_call_output', got {kind!r}.")
    for key in ("call_id", "output"):
        if key in item:
            raise ProtocolError("unknown_parameter", f"Unknown parameter for message: 'item.{key}'.",
                                f"item.{key}")
    role = str_field(item, "role", "item.role", required=True)
    allowed = {"system": ("input_text",), "user": ("input_text", "input_audio"), "assistant": ("text",)}
    if role not in allowed:
        raise bad_value("item.role", f"must be 'system', 'user' or 'assistant', got {role!r}.")
    content = item.get("content")
    if content is None:
        raise missing("item.content")
    if not isinstance(content, list):
        raise bad_type("item.content", "array")
    if not content:
        raise bad_value("item.content", "must not be empty.")
    parts: list[dict] = []
    audio = bytearray()
    for i, part in enumerate(content):
        where = f"item.content[{i}]"
        if not isinstance(part, dict):
            raise bad_type(where, "object")
        ptype = str_field(part, "type", f"{where}.type", required=True)
        if ptype not in allowed[role]:
            raise bad_value(f"{where}.type", f"{role} items take only {' or '.join(allowed[role])} "
                                              f"content, got {ptype!r}.")
        if ptype == "input_audio":
            check_keys(part, {"type", "audio", "transcript"}, where)
            if "audio" not in part:
                raise missing(f"{where}.audio")
            audio += decode_audio(part["audio"], f"{where}.audio")
            transcript = str_field(part, "transcript", f"{where}.transcript", required=False)
            parts.append({"type": "input_audio", "transcript": transcript})
        else:
            check_keys(part, {"type", "text"}, where)
            text = str_field(part, "text", f"{where}.text", required=True)
            parts.append({"type": ptype, "text": text})
    return Item(id=new_item_id, type="message", role=role, content=parts, audio=audio)
