"""What the simulated JSON-stream carriers share (Telnyx, Exotel, Plivo): connecting without a webhook,
message numbering, and a strict check of every server message against the carrier's documented shape.

A carrier module declares ``server_schema`` -- for each event the server may send, the exact fields and
their types (nested objects as dicts) -- and turns a checked message into playback events. Anything else
(binary frames, bad JSON, unknown events, missing or extra fields, wrong types, undecodable audio) is a
:class:`~voicebot.simulator.caller.ProtocolViolation`, recorded in ``CallResult.protocol_errors``.
"""

from __future__ import annotations

import abc

import base64
import binascii
import inspect
import json
import secrets

import aiohttp
import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, CarrierProtocol, ClearPlayback, Message, PlayAudio,
                                       ProtocolViolation, QueueMark, ServerEvent, SimulatedCall, Step, StreamTarget)

Schema = type | tuple | dict


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def new_uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ws_url(base_url: str, path: str) -> str:
    scheme, rest = base_url.rstrip("/").split("://", 1)
    return {"https": "wss", "http": "ws"}.get(scheme, scheme) + "://" + rest + path


def check_shape(value: object, schema: Schema, where: str) -> None:
    """``value`` has exactly ``schema``'s fields (dict), or is of ``schema``'s type(s)."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ProtocolViolation(f"{where} is not an object")
        missing, extra = sorted(set(schema) - set(value)), sorted(set(value) - set(schema))
        if missing or extra:
            problems = [f"missing {missing}"] * bool(missing) + [f"extra {extra}"] * bool(extra)
            raise ProtocolViolation(f"{where}: {'; '.join(problems)}")
        for key, inner in schema.items():
            check_shape(value[key], inner, f"{where}.{key}")
    elif isinstance(value, bool) or not isinstance(value, schema):
        raise ProtocolViolation(f"{where} is {type(value).__name__} {value!r}, expected "
                                f"{getattr(schema, '__name__', schema)}")


class JsonCarrierProtocol(CarrierProtocol):
    """A carrier that connects straight to the server's media WebSocket and speaks JSON text frames."""

    server_schema: dict[str, dict] = {}
    seq_key, seq_as_text = "sequence_number", True    # how the carrier numbers its messages
    stream_key = "stream_id"                          # and names the stream in them

    def __init__(self, url: str, headers: dict[str, str] | None = None, *, call_id: str, stream_id: str) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self._call_id, self._stream_id = call_id, stream_id
        self._seq = 0

    @property
    def call_id(self) -> str:
        return self._call_id

    @property
    def stream_id(self) -> str:
        return self._stream_id

    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        return StreamTarget(self.url, self.headers)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def numbered(self, event: str, **body) -> str:
        """One carrier message: event, the next sequence number, the stream id, then ``body``."""
        seq = self.next_seq()
        return dumps({"event": event, self.seq_key: str(seq) if self.seq_as_text else seq,
                      self.stream_key: self._stream_id, **body})

    def decode(self, message: Message) -> list[ServerEvent]:
        if isinstance(message, bytes):
            raise ProtocolViolation(f"binary frame of {len(message)} bytes ({self.name} takes JSON text frames only)")
        excerpt = message if len(message) <= 120 else message[:117] + "..."
        try:
            obj = json.loads(message)
        except ValueError:
            raise ProtocolViolation(f"not JSON: {excerpt!r}") from None
        if not isinstance(obj, dict):
            raise ProtocolViolation(f"not a JSON object: {excerpt!r}")
        event = obj.get("event")
        if event not in self.server_schema:
            raise ProtocolViolation(f"unknown event {event!r} (only {', '.join(self.server_schema)}): {excerpt!r}")
        try:
            check_shape(obj, self.server_schema[event], event)
        except ProtocolViolation as exc:
            raise ProtocolViolation(f"{exc}: {excerpt!r}") from None
        return self.on_server_message(event, obj)

    @abc.abstractmethod
    def on_server_message(self, event: str, obj: dict) -> list[ServerEvent]:
        """One server JSON message, already checked for shape and stream id."""

    def check_stream_id(self, event: str, key: str, value: str) -> None:
        if value != self.stream_id:
            raise ProtocolViolation(f"{event} for {key} {value!r}, this stream is {self.stream_id}")

    def check_audio_bytes(self, event: str, size: int, codec: WireCodec) -> None:
        """Sizes the carrier refuses; by default only a partial 16-bit sample."""
        if codec.encoding == "l16" and size % 2:
            raise ProtocolViolation(f"{event}: L16 payload of {size} bytes is not whole samples")

    def play(self, event: str, payload: str, codec: WireCodec) -> PlayAudio:
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolViolation(f"{event}: payload is not valid base64 ({len(payload)} chars)") from None
        self.check_audio_bytes(event, len(raw), codec)
        return PlayAudio(codec.decode(raw), len(raw))

    @staticmethod
    def payload(codec: WireCodec, pcm: np.ndarray) -> str:
        return base64.b64encode(codec.encode(pcm)).decode("ascii")


def snake_case_schema(stream_key: str | None) -> dict[str, dict]:
    """What a server may send to a carrier speaking Twilio's event set in snake_case; ``stream_key``: the
    field naming the stream in every message (None: no stream id at all)."""
    head = {"event": str, **({stream_key: str} if stream_key else {})}
    return {"media": {**head, "media": {"payload": str}}, "mark": {**head, "mark": {"name": str}}, "clear": head}


class SnakeCaseProtocol(JsonCarrierProtocol):
    """Twilio's event set in snake_case (Telnyx, Exotel): ``media``/``mark``/``clear`` from the server,
    marks answered with ``mark``. Subclasses set ``server_schema`` and ``playback_codec``."""

    playback_codec: WireCodec

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        return [self.numbered("mark", mark={"name": name})]

    def on_server_message(self, event: str, obj: dict) -> list[ServerEvent]:
        if self.stream_key in self.server_schema[event]:
            self.check_stream_id(event, self.stream_key, obj[self.stream_key])
        if event == "clear":
            return [ClearPlayback()]
        if event == "mark":
            return [QueueMark(obj["mark"]["name"])]
        return [self.play("media", obj["media"]["payload"], self.playback_codec)]


def _init_parameters(cls: type) -> set[str]:
    """Keyword parameters of ``cls(...)``, following ``**kwargs`` up to the base classes' ``__init__``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        parameters = inspect.signature(klass.__dict__["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self", "base_url"}


async def simulate(protocol_cls: type[CarrierProtocol], base_url: str, script: list[Step], max_duration_s: float,
                   options: dict) -> CallResult:
    """Run one call: ``options`` that ``protocol_cls`` takes configure the carrier, the rest go to
    :class:`SimulatedCall` (``noise_dbfs``, ``seed``, ``audible_dbfs``, …)."""
    accepted = _init_parameters(protocol_cls)
    carrier = {name: options.pop(name) for name in list(options) if name in accepted}
    protocol = protocol_cls(base_url, **carrier)
    return await SimulatedCall(protocol, script, max_duration_s=max_duration_s, **options).run()
