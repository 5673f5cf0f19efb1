"""Realtime engine event handling that the emulator does not exercise: StepFun's documented orderings."""


import numpy as np

from voicebot.audio.playout import HeardItem
from voicebot.config import StepFunSettings
from voicebot.dialplan import load_dialplan
from voicebot.engines import realtime
from voicebot.engines.realtime import RealtimeEngine

from conftest import REPO_DIALPLANS, until


class Sink:
    def __init__(self):
        self.turns, self.audio, self.failed = [], [], []

    def transcript(self, role, text, item_id):
        self.turns.append((role, text))

    def bot_audio(self, item_id, pcm):
        self.audio.append((item_id, len(pcm)))

    def bot_audio_done(self, item_id):
        pass

    def caller_speech_started(self):
        pass

    def note(self, kind, **fields):
        pass

    def engine_failed(self, reason):
        self.failed.append(reason)

    async def run_tool(self, call_id, name, arguments):
        from voicebot.tools import ToolResult
        self.tools = getattr(self, "tools", []) + [(call_id, name, arguments)]
        return ToolResult({"result": "shipped"})


class Conn:
    def __init__(self):
        self.sent = []

    def send(self, event):
        self.sent.append(event)


def engine():
    persona = load_dialplan(REPO_DIALPLANS).default
    sink = Sink()
    eng = RealtimeEngine(persona, StepFunSettings(), sink)
    eng._conn = Conn()
    return eng, sink


async def test_a_late_caller_transcript_keeps_spoken_order():
    eng, sink = engine()
    eng._dispatch({"type": "input_audio_buffer.committed", "item_id": "u1"})
    eng._dispatch({"type": "response.audio_transcript.done", "item_id": "a1", "transcript": "Sure, one moment."})
    assert sink.turns == []            # held until the caller's own words are known
    eng._dispatch({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
                   "transcript": "Where is my order?"})
    assert sink.turns == [("user", "Where is my order?"), ("assistant", "Sure, one moment.")]


async def test_a_transcript_that_never_comes_does_not_hold_the_reply_forever(monkeypatch):
    monkeypatch.setattr(realtime, "USER_TRANSCRIPT_WAIT_S", 0.05)
    eng, sink = engine()
    eng._dispatch({"type": "input_audio_buffer.committed", "item_id": "u1"})
    eng._dispatch({"type": "response.audio_transcript.done", "item_id": "a1", "transcript": "Hello."})
    await until(lambda: sink.turns, timeout=1.0, what="the held reply to be released")
    assert sink.turns == [("assistant", "Hello.")]


async def test_late_deltas_of_a_cancelled_response_are_dropped_and_truncate_is_bounded():
    eng, sink = engine()
    pcm = np.zeros(2400, dtype="<i2").tobytes()      # 100 ms at 24 kHz
    import base64
    delta = {"type": "response.audio.delta", "response_id": "r1", "item_id": "a1",
             "delta": base64.b64encode(pcm).decode()}
    eng._dispatch({"type": "response.created", "response": {"id": "r1"}})
    eng._dispatch(delta)
    eng._dispatch(delta)
    eng.interrupt([HeardItem("a1", heard_ms=500, generated_ms=200)])   # heard can't exceed generated
    assert [e["type"] for e in eng._conn.sent] == ["response.cancel", "conversation.item.truncate"]
    assert eng._conn.sent[1]["audio_end_ms"] == 200
    before = len(sink.audio)
    eng._dispatch(delta)
    assert len(sink.audio) == before
    eng.interrupt([HeardItem("a1", heard_ms=0, generated_ms=200)])     # nothing heard: no truncate at 0
    assert [e["type"] for e in eng._conn.sent] == ["response.cancel", "conversation.item.truncate"]


async def test_fatal_and_recoverable_errors():
    eng, sink = engine()
    eng._dispatch({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                              "message": "bad field"}})
    assert sink.failed == []
    eng._dispatch({"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",
                                              "message": "limit"}})
    assert sink.failed and "session_expired" in sink.failed[0]


async def test_a_malformed_audio_delta_is_skipped_and_the_good_ones_still_play():
    eng, sink = engine()
    t = np.arange(2400) / 24000
    speech = (8000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype("<i2")  # 100 ms
    import base64
    good = base64.b64encode(speech.tobytes()).decode()
    eng._dispatch({"type": "response.created", "response": {"id": "r1"}})
    for delta in (good, good[:-4] + "!!!!", good[:-1], 12345, good):   # bad alphabet, bad padding, not a string
        eng._dispatch({"type": "response.audio.delta", "response_id": "r1", "item_id": "a1", "delta": delta})
    assert sink.failed == []                       # a bad delta is logged and dropped, the call goes on
    assert [n for _, n in sink.audio] == [800, 800]   # the two good deltas, 100 ms each at 8 kHz
    assert eng._item_model_ms["a1"] == 200


async def test_a_function_call_runs_after_its_response_and_its_output_waits_for_an_idle_session():
    eng, sink = engine()
    eng._dispatch({"type": "response.created", "response": {"id": "r1"}})
    eng._dispatch({"type": "conversation.item.created", "item": {"type": "function_call", "call_id": "call_1",
                                                                "name": "check_order", "status": "incomplete"}})
    for piece in ('{"order', '_id": "A-1"}'):       # StepFun puts the fragment under "arguments"
        eng._dispatch({"type": "response.function_call_arguments.delta", "call_id": "call_1", "arguments": piece})
    assert not hasattr(sink, "tools")               # nothing runs before response.done
    eng._dispatch({"type": "response.done", "response": {"id": "r1", "status": "completed", "output": [
        {"type": "function_call", "call_id": "call_1", "name": "check_order"}]}})
    await until(lambda: getattr(sink, "tools", None), what="the tool to run")
    assert sink.tools == [("call_1", "check_order", '{"order_id": "A-1"}')]   # from the fragments
    await until(lambda: len(eng._conn.sent) >= 2, what="the output and the response.create")
    output, create = eng._conn.sent
    assert output["item"] == {"type": "function_call_output", "call_id": "call_1",
                              "output": '{"result": "shipped"}'}
    assert create["type"] == "response.create"


async def test_events_refused_because_a_response_started_are_sent_again_in_order_after_it():
    eng, sink = engine()
    eng.user_text("The caller pressed 5 on the phone keypad.")
    item, create = eng._conn.sent
    # The server had just started a response of its own (caller speech): both are refused.
    for event in (item, create):
        eng._dispatch({"type": "error", "error": {"type": "invalid_request_error", "event_id": event["event_id"],
                                                  "code": "conversation_already_has_active_response",
                                                  "message": "ongoing response already exists"}})
    eng._dispatch({"type": "response.created", "response": {"id": "r9"}})
    assert len(eng._conn.sent) == 2                 # nothing while that response runs
    eng._dispatch({"type": "response.done", "response": {"id": "r9", "status": "completed", "output": []}})
    assert [e["type"] for e in eng._conn.sent[2:]] == ["conversation.item.create", "response.create"]
    assert eng._conn.sent[2]["item"]["content"][0]["text"] == "The caller pressed 5 on the phone keypad."
