"""What StepFun sends back, broken: the event-stream readers of ASR, chat and TTS (voicebot/stepfun/http.py
``SseStream`` and its subclasses), the TTS WebSocket reader, and the realtime event reader
(voicebot/stepfun/realtime.py), each fed real events with fields broken, broken JSON, odd lines and bytes,
cut into network reads at arbitrary points.

Properties: a stream yields items of its type and then ends, or raises a ``StepFunError`` (the clients'
documented error, which the engines turn into a failover) with a message -- never anything else; the
realtime reader hands on JSON objects only and never raises, whatever the socket carries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct

import aiohttp
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.uri import parse_uri

from voicebot.stepfun.asr import AsrStream
from voicebot.stepfun.chat import ChatStream, _merge_tool_calls
from voicebot.stepfun.errors import StepFunError
from voicebot.stepfun.http import SSEReader, Timeouts, error_from_body
from voicebot.stepfun.realtime import RealtimeConnection, _SansIoConnection
from voicebot.stepfun.tts import TtsHttpStream, TtsStream

from fake_transport import FakeTransport
from fuzzing import json_messages

AUDIO = base64.b64encode(np.arange(-300, 301, 7, dtype="<i2").tobytes()).decode()

ASR_EVENTS = [{"type": "transcript.text.delta", "delta": "hello ", "meta": {"session_id": "s1"}},
              {"type": "transcript.text.done", "text": "hello there", "usage": {"seconds": 1.2}},
              {"type": "error", "message": "internal error", "status": 500, "error": {"message": "x"}}]
CHAT_EVENTS = [{"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
               {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
                   {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]},
               {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"total_tokens": 9}},
               {"error": {"message": "overloaded", "type": "server_error", "code": "503"}}]
TTS_EVENTS = [{"type": "speech.audio.delta", "audio": AUDIO},
              {"type": "speech.audio.done", "audio": ""},
              {"type": "speech.audio.error", "error": {"message": "bad voice", "type": "request_error"}}]


# -- a streamed answer, as aiohttp would hand it over ------------------------------------------------------

class Content:
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        return self._reads.pop(0) if self._reads else b""


class Response:
    headers = {"X-Trace-Id": "trace-fuzz", "Content-Type": "text/event-stream"}

    def __init__(self, reads: list[bytes]) -> None:
        self.content = Content(reads)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def sse_lines(events: list[dict]) -> st.SearchStrategy[bytes]:
    """An event-stream body: ``data:`` lines of real and broken events among the other lines SSE allows."""
    line = st.one_of(
        json_messages(events).map(lambda text: b"data: " + text.encode()),
        st.sampled_from([b"data: [DONE]", b"data:[DONE]", b"", b": keep-alive", b"event: message", b"id: 7",
                         b"retry: 10", b"data:", b"data: \xff\xfe", b"\xff", b"nonsense"]),
        st.binary(max_size=30))
    ending = st.sampled_from([b"\n", b"\r\n", b"\n\n"])
    return st.lists(st.tuples(line, ending).map(b"".join), max_size=8).map(b"".join)


def reads_of(body: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.integers(0, len(body)), max_size=6).map(
        lambda points: [body[a:b] for a, b in zip([0, *sorted(points)], [*sorted(points), len(body)])])


def bodies(events: list[dict]):
    return sse_lines(events).flatmap(reads_of)


def drain(stream, reads: list[bytes], item_type) -> None:
    """Iterate the stream over the answer ``reads``; only its items, then its end or a StepFunError."""
    response = Response(reads)
    stream._resp, stream._reader = response, SSEReader(response, stream._what)

    async def go() -> None:
        try:
            async for item in stream:
                assert isinstance(item, item_type), item
                if isinstance(item, np.ndarray):
                    assert item.dtype == np.int16 and item.ndim == 1 and len(item)
        except StepFunError as exc:
            assert str(exc).strip()
        assert response.closed      # whatever ended it, the connection is dropped

    asyncio.run(go())


DEEP = b"[" * 20000      # nested past the JSON reader's recursion limit: a RecursionError, before the fix


@given(bodies(ASR_EVENTS))
@example([b"data: " + DEEP + b"\n"])
@example([b'data: {"type":"error","message":"internal error","status":Infinity}\n'])   # int(inf): OverflowError
def test_the_asr_stream_yields_text_or_a_stepfun_error(reads) -> None:
    drain(AsrStream(None, {}, Timeouts()), reads, str)


@given(bodies(CHAT_EVENTS))
@example([b'data:{"choices":1}\n'])                                                   # iterating an int
@example([b'data: {"error":{"message":"m","code":1e999}}\n'])
def test_the_chat_stream_yields_text_or_a_stepfun_error(reads) -> None:
    stream = ChatStream(None, {}, Timeouts())
    drain(stream, reads, str)
    for call in stream.result().tool_calls:
        assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], str)


@given(bodies(TTS_EVENTS))
@example([b'data: {"type":"speech.audio.delta","audio":true}\n'])                     # b64decode(True)
@example([b'data: {"type":"speech.audio.delta","audio":"A"}\n'])                      # bad padding
def test_the_tts_stream_yields_audio_or_a_stepfun_error(reads) -> None:
    drain(TtsHttpStream(None, {"sample_rate": 8000}, Timeouts()), reads, np.ndarray)


def test_a_tool_call_index_of_a_billion_is_dropped_not_allocated() -> None:
    calls: list[dict] = []
    _merge_tool_calls(calls, [{"index": 10 ** 9, "function": {"name": "f"}}, {"index": 0, "id": "t1"}])
    assert [call["id"] for call in calls] == ["t1"]


@given(st.binary(max_size=300) | json_messages([{"error": {"message": "m", "type": "t", "code": 429}}])
       .map(str.encode), st.sampled_from([400, 401, 402, 404, 429, 500, 503]))
@example(DEEP, 500)
def test_an_error_answer_becomes_a_typed_error_whatever_its_body(body, status) -> None:
    error = error_from_body(status, body, what="fuzz", trace_id=None)
    assert isinstance(error, StepFunError) and error.status == status and error.message.startswith("fuzz: ")


# -- TTS over its WebSocket -------------------------------------------------------------------------------

TTS_WS_EVENTS = [{"type": "tts.response.audio.delta", "data": {"session_id": "s", "audio": AUDIO}},
                 {"type": "tts.response.sentence.start", "data": {"session_id": "s", "text": "Hi.", "sentence_id": 1}},
                 {"type": "tts.response.sentence.end", "data": {"session_id": "s"}},
                 {"type": "tts.response.audio.done", "data": {"session_id": "s", "audio": ""}},
                 {"type": "tts.response.error", "data": {"session_id": "s", "code": "500", "message": "boom",
                                                         "details": {"error": "x"}}}]


class TtsSocket:
    """What the TTS stream reads: the messages given, then the close."""

    def __init__(self, texts: list[str]) -> None:
        self._messages = [aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, text, None) for text in texts]
        self.closed = False

    async def receive(self) -> aiohttp.WSMessage:
        await asyncio.sleep(0)
        if self._messages:
            return self._messages.pop(0)
        return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, 1000, "")

    async def close(self) -> None:
        self.closed = True


@given(st.lists(json_messages(TTS_WS_EVENTS), max_size=8))
@example(['{"type":"tts.response.error","data":{"code":Infinity,"message":"m"}}'])
@example(['{"type":"tts.response.audio.delta","data":{"audio":7}}'])
def test_the_tts_websocket_yields_audio_or_a_stepfun_error(texts) -> None:
    async def go() -> None:
        stream = TtsStream(TtsSocket(texts), "s", 8000, read_timeout=1.0)
        try:
            async for pcm in stream.audio():
                assert isinstance(pcm, np.ndarray) and pcm.dtype == np.int16 and len(pcm)
        except StepFunError as exc:
            assert str(exc).strip()
        for sentence in stream.sentences:
            assert isinstance(sentence.text, str)
        await stream.close()

    asyncio.run(go())


# -- the realtime event reader ---------------------------------------------------------------------------

REALTIME_EVENTS = [
    {"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "model": "stepaudio-2.5-realtime"}},
    {"type": "response.created", "event_id": "e2", "response": {"id": "resp_1", "status": "in_progress"}},
    {"type": "response.audio.delta", "event_id": "e3", "response_id": "resp_1", "item_id": "item_1",
     "output_index": 0, "content_index": 0, "delta": AUDIO},
    {"type": "response.audio_transcript.done", "item_id": "item_1", "transcript": "Hello."},
    {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": [
        {"type": "function_call", "call_id": "call_1", "name": "hang_up", "arguments": "{}"}]}},
    {"type": "input_audio_buffer.committed", "item_id": "item_2"},
    {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_2", "transcript": "hi"},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m", "event_id": "vb_1"}},
]


class Reader(RealtimeConnection):
    """The realtime reader alone (sending is not what is fuzzed here)."""

    def send_raw(self, text, since=None) -> None:
        pass

    async def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def handed_on(events: list) -> None:
    for event in events:
        assert isinstance(event, dict), event


@given(st.lists(st.one_of(json_messages(REALTIME_EVENTS), json_messages(REALTIME_EVENTS).map(str.encode),
                          st.binary(max_size=40)), max_size=8))
@example(['{"type":"session.created","session":["sess_1"]}'])                       # list.get: AttributeError
@example([DEEP.decode()])
def test_the_realtime_reader_hands_on_objects_only_and_never_raises(messages) -> None:
    reader = Reader("ws://stepfun.test/realtime")
    events: list = []
    reader.listen(events.append, lambda: None)
    for message in messages:
        reader._deliver(message)
    handed_on(events)
    assert reader.session_id is None or isinstance(reader.session_id, str), reader.session_id


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes(((0x80 if fin else 0) | opcode,))
    if len(payload) < 126:
        return head + bytes((len(payload),)) + payload
    if len(payload) < 65536:
        return head + bytes((126,)) + struct.pack("!H", len(payload)) + payload
    return head + bytes((127,)) + struct.pack("!Q", len(payload)) + payload


@st.composite
def realtime_frames(draw) -> bytes:
    text = draw(json_messages(REALTIME_EVENTS)).encode()
    kind = draw(st.sampled_from(["text", "text", "text", "binary", "fragmented", "ping", "close", "raw"]))
    if kind == "text":
        return server_frame(0x1, text)
    if kind == "binary":
        return server_frame(0x2, text)
    if kind == "fragmented":
        cut = draw(st.integers(0, len(text)))
        return server_frame(0x1, text[:cut], fin=False) + server_frame(0x0, text[cut:])
    if kind == "ping":
        return server_frame(0x9, draw(st.binary(max_size=10)))
    if kind == "close":
        return server_frame(0x8, draw(st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x0f\xa0", b"\x01"])))
    return draw(st.binary(max_size=20))


def realtime_session(events: list) -> _SansIoConnection:
    """A realtime connection past its handshake, its events going to ``events``."""
    conn = _SansIoConnection("ws://stepfun.test/realtime", parse_uri("ws://stepfun.test/realtime?model=m"))
    loop = asyncio.get_running_loop()
    conn._handshake, conn._lost = loop.create_future(), loop.create_future()
    request = conn._ws.connect()
    conn._ws.send_request(request)
    conn.connection_made(FakeTransport())
    accept = base64.b64encode(hashlib.sha1(request.headers["Sec-WebSocket-Key"].encode()
                                           + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    assert conn._handshake.done() and conn._handshake.exception() is None
    conn.listen(events.append, lambda: None)
    return conn


@given(st.lists(realtime_frames(), max_size=6).map(b"".join).flatmap(reads_of))
def test_realtime_frames_however_they_arrive_give_objects_only(reads) -> None:
    async def go() -> list:
        events: list = []
        conn = realtime_session(events)
        for chunk in reads:
            conn.data_received(chunk)
        handed_on(events)
        return events

    async def whole() -> list:
        events: list = []
        realtime_session(events).data_received(b"".join(reads))
        return events

    assert asyncio.run(go()) == asyncio.run(whole())


# -- the realtime engine's handling of those events ----------------------------------------------------------

ENGINE_EVENTS = REALTIME_EVENTS + [
    {"type": "response.audio.done", "response_id": "resp_1", "item_id": "item_1"},
    {"type": "conversation.item.created", "item": {"id": "item_3", "type": "function_call", "call_id": "call_2",
                                                   "name": "lookup"}},
    {"type": "response.function_call_arguments.delta", "call_id": "call_2", "name": "lookup", "arguments": '{"or'},
    {"type": "response.function_call_arguments.done", "call_id": "call_2", "name": "lookup",
     "arguments": '{"order": "7"}'},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": "item_2"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "item_2"},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "event_id": "vb_idle_1",
                                "message": "Conversation already has an ongoing response"}},
    {"type": "error", "error": {"type": "server_error", "code": "session_expired", "message": "gone"}},
    {"type": "session.updated", "session": {"voice": "lively-girl"}},
]


class EngineSink:
    """What the call would get from the engine, checked for type as it comes."""

    def __init__(self) -> None:
        self.audio = self.turns = self.failed = self.tools = 0
        self.failures: list[str] = []

    def bot_audio(self, item_id, pcm) -> None:
        assert isinstance(item_id, str) and isinstance(pcm, np.ndarray) and pcm.dtype == np.int16, (item_id, pcm)
        self.audio += 1

    def bot_audio_done(self, item_id) -> None:
        assert isinstance(item_id, str), item_id

    def caller_speech_started(self) -> None:
        pass

    def transcript(self, role, text, item_id) -> None:
        assert role in ("user", "assistant") and isinstance(text, str), (role, text)
        assert item_id is None or isinstance(item_id, str), item_id
        self.turns += 1

    def note(self, kind, **fields) -> None:
        pass

    def engine_failed(self, reason) -> None:
        self.failures.append(reason)

    async def run_tool(self, call_id, name, arguments):
        from voicebot.tools import ToolResult
        assert isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str), (call_id, name)
        self.tools += 1
        return ToolResult({"result": "ok"})


class SentEvents:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, event: dict) -> None:
        self.sent.append(event)

    async def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@given(st.lists(json_messages(ENGINE_EVENTS), max_size=10))
@example(['{"type":"response.created","response":["resp_1"]}'])                    # list.get: AttributeError
@example(['{"type":"response.done","response":{"output":{"type":"function_call"}}}'])
@example(['{"type":"response.function_call_arguments.delta","call_id":"c","delta":7}'])
@example(['{"type":"conversation.item.input_audio_transcription.completed","item_id":["i"],"transcript":"hi"}'])
@example(['{"type":"error","error":"boom"}'])
@example(['{"type":"response.done","response":{"id":"r","status":"completed","output":'
          '[{"type":"function_call","call_id":["c"],"name":7}]}}'])              # a call id that is a list
@example(['{"type":"response.done","response":{"id":"r","status":"completed","output":'
          '[{"type":"function_call","call_id":"c","name":{"n":1},"arguments":"{}"}]}}'])
def test_the_realtime_engine_drops_a_bad_event_and_goes_on(texts) -> None:
    """Whatever StepFun sends, the engine hands the call well-typed audio, transcripts and tool calls, fails over
    only on an error event that says the session is gone -- never because an event was malformed -- and after
    any of it still plays a valid reply."""
    from voicebot.config import StepFunSettings
    from voicebot.dialplan import load_dialplan
    from voicebot.engines.realtime import RealtimeEngine

    from conftest import REPO_DIALPLANS

    async def go() -> None:
        sink = EngineSink()
        engine = RealtimeEngine(load_dialplan(REPO_DIALPLANS).default, StepFunSettings(), sink)
        engine._conn = SentEvents()
        reader = Reader("ws://stepfun.test/realtime")        # decoded as the connection does, then handed on
        reader.listen(engine._on_event, lambda: None)
        for text in texts:
            reader._deliver(text)
        await asyncio.sleep(0)                              # tool calls run
        assert not engine._reader_failed, sink.failures
        for reason in sink.failures:
            assert reason.startswith("realtime error "), reason
        audio_before = sink.audio
        for event in ({"type": "response.created", "response": {"id": "resp_9"}},
                      {"type": "response.audio.delta", "response_id": "resp_9", "item_id": "item_9", "delta": AUDIO},
                      {"type": "response.done", "response": {"id": "resp_9", "status": "completed"}}):
            reader._deliver(json.dumps(event))
        assert sink.audio > audio_before and not engine._reader_failed
        await engine.close()

    asyncio.run(go())


# -- the arguments of a function call the model makes --------------------------------------------------------

TOOL_CALLS = [("transfer", {"target": "sales"}), ("send_dtmf", {"digits": "1#"}), ("hang_up", {"reason": "done"})]


@given(st.sampled_from(TOOL_CALLS).flatmap(lambda call: st.tuples(
    st.just(call[0]), json_messages([call[1]]) | st.sampled_from(["", " ", "{}", "null"]))))
@example(("send_dtmf", "[" * 2000))                 # nested past the JSON reader's limit: RecursionError
@example(("transfer", '{"target": "sales", "n": ' + "9" * 5000 + "}"))
def test_any_arguments_from_the_model_give_a_tool_result(call) -> None:
    """A tool call's arguments are the model's text: whatever it is, the call's tools answer with a result the
    model is told (an error saying what was wrong, or the action done), and act only on valid arguments."""
    import tempfile
    from pathlib import Path

    from voicebot.tools import CarrierAbilities, ToolBox, ToolResult, offered

    from test_tools import GOOD_TOOLS, Actions, persona_with

    name, arguments = call
    with tempfile.TemporaryDirectory() as tmp:
        persona = persona_with(Path(tmp), GOOD_TOOLS.format(url="https://hooks.test/orders"))
    actions = Actions()
    box = ToolBox(persona.tools, offered(persona.tools, CarrierAbilities(hang_up=True, transfer=True)), actions,
                  http=None, call_id="c1", persona="tools")
    result = asyncio.run(box.run(name, arguments))
    assert isinstance(result, ToolResult)
    if not result.ok:
        assert isinstance(result.output.get("error"), str) and result.output["error"].strip()
    for action in actions.done:
        assert action[0] in ("end", "dtmf") or action[1:] == ("sales", "+15550001111")
        if action[0] == "dtmf":
            assert action[1] and set(action[1]) <= set("0123456789*#ABCDw"), action
