"""The emulated models call tools (stepfun-api.md §1.7 and §2), spoken to as raw protocol clients:
the realtime WebSocket event by event, the chat endpoint as HTTP and SSE bytes."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import structlog

from voicebot.emulator.tool_calls import ToolCall, inline_call, turn_directives

# The emulator, its HTTP client and a realtime session are the realtime tests' fixtures.
from test_emulator_realtime import (AUTH, URL, VAD, Client, emulator, http, line_noise, rt,  # noqa: F401
                                   speech_like)

HANG_UP = {"type": "function", "function": {"name": "hang_up", "description": "End the call.",
                                            "parameters": {"type": "object", "properties": {}}}}
TRANSFER = {"type": "function", "function": {
    "name": "transfer", "description": "Hand the caller to a person.",
    "parameters": {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]}}}
CHECK_ORDER = {"type": "function", "function": {
    "name": "check_order", "description": "Look up an order by its number.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
TOOLS = [HANG_UP, TRANSFER, CHECK_ORDER]

MESSAGE_TAIL = ["response.audio.done", "response.audio_transcript.done", "response.content_part.done",
                "response.output_item.done"]


def user_text(text: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def function_output(call_id: str, output: str, **event) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}, **event}


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def call_events(events: list[dict]) -> list[dict]:
    """The events of a response's function call, from its output_item.added on."""
    start = next(i for i, e in enumerate(events) if e["type"] == "response.output_item.added"
                 and e["item"]["type"] == "function_call")
    return events[start:]


async def reply_to(rt: Client, text: str) -> list[dict]:
    await rt.send(user_text(text))
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    return await rt.until("response.done", timeout=10)


# ---------------------------------------------------------------------------------------------- directives

def test_directives_are_read_from_plain_sentences():
    instructions = ("You answer the Acme line. Keep it short.\n"
                    'On caller turn 2, say "Let me put you through." and call transfer {"target": "sales"}.\n'
                    "On caller turn 3, call hang_up.\n"
                    'On caller turn 4, call check_order {"order_id": \n')
    assert turn_directives(instructions) == {
        2: ToolCall("transfer", '{"target": "sales"}', "Let me put you through."),
        3: ToolCall("hang_up", "{}"),
        4: ToolCall("check_order", '{"order_id":'),
    }
    assert turn_directives("Call hang_up when the caller says goodbye.") == {}
    before, call = inline_call('Say exactly: One moment. Call tool: check_order {"order_id": "A-7"}.')
    assert before == "Say exactly: One moment." and call == ToolCall("check_order", '{"order_id": "A-7"}')
    assert inline_call("Call tool: hang_up") == ("", ToolCall("hang_up", "{}"))
    assert inline_call("please call me back") is None


# ---------------------------------------------------------------------------------------------- realtime

async def test_spoken_line_then_function_call_event_by_event(rt, emulator):
    line = "Let me put you through."
    await rt.update(tools=TOOLS, turn_detection=None, instructions=(
        f'You answer the Acme line.\nOn caller turn 1, say "{line}" and call transfer {{"target": "sales"}}.'))
    events = await reply_to(rt, "I would like to talk to sales.")

    message_id = events[1]["item"]["id"]
    call = call_events(events)
    assert kinds(events[:4]) == ["response.created", "response.output_item.added", "conversation.item.created",
                                 "response.content_part.added"]
    assert kinds(events[:len(events) - len(call)])[-4:] == MESSAGE_TAIL
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
    assert transcript == line
    assert sum(e["type"] == "response.audio.delta" for e in events) >= 10          # the line is spoken

    n_deltas = len(call) - 5
    assert n_deltas >= 2
    assert kinds(call) == (["response.output_item.added", "conversation.item.created"]
                           + ["response.function_call_arguments.delta"] * n_deltas
                           + ["response.function_call_arguments.done", "response.output_item.done",
                              "response.done"])
    response_id = events[0]["response"]["id"]
    added, created, *deltas, args_done, item_done, done = call
    item = added["item"]
    call_id, item_id = item["call_id"], item["id"]
    assert call_id.startswith("call_") and len(call_id) == 29 and item_id != message_id
    assert added["response_id"] == response_id and added["output_index"] == 1
    assert item == {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                    "call_id": call_id, "name": "transfer", "arguments": ""}
    assert created["previous_item_id"] == message_id
    assert created["item"] == dict(item, status="incomplete")
    for delta in deltas:
        assert set(delta) == {"type", "event_id", "response_id", "item_id", "output_index", "call_id", "name",
                              "arguments"}                         # the fragment is under `arguments`, no `delta`
        assert (delta["response_id"], delta["item_id"], delta["output_index"], delta["call_id"], delta["name"]) == \
            (response_id, item_id, 1, call_id, "transfer")
    assert "".join(d["arguments"] for d in deltas) == '{"target": "sales"}'
    assert {k: args_done[k] for k in ("response_id", "item_id", "output_index", "call_id", "name", "arguments")} == \
        {"response_id": response_id, "item_id": item_id, "output_index": 1, "call_id": call_id, "name": "transfer",
         "arguments": '{"target": "sales"}'}
    assert item_done["output_index"] == 1
    assert item_done["item"] == dict(item, status="completed", arguments='{"target": "sales"}')

    response = done["response"]
    assert response["status"] == "completed" and response["id"] == response_id
    message, function_call = response["output"]
    assert message["id"] == message_id and message["content"][0]["transcript"] == line
    assert function_call == item_done["item"]
    assert response["usage"]["output_tokens"] > len('{"target": "sales"}')

    # The tool's result goes back; the next response speaks it and calls nothing.
    await rt.send(function_output(call_id, '{"status": "ringing"}'))
    created = await rt.expect("conversation.item.created")
    assert created["previous_item_id"] == item_id
    assert created["item"] == {"id": created["item"]["id"], "object": "realtime.item",
                               "type": "function_call_output", "status": "completed", "call_id": call_id,
                               "output": '{"status": "ringing"}'}
    await rt.send({"type": "response.create"})
    after = await rt.until("response.done", timeout=10)
    said = "".join(e["delta"] for e in after if e["type"] == "response.audio_transcript.delta")
    assert said == 'The tool returned: {"status": "ringing"}'
    assert not any(e["type"].startswith("response.function_call") for e in after)
    assert [o["type"] for o in after[-1]["response"]["output"]] == ["message"]
    session = emulator.sessions[0]
    assert [(i.type, i.role) for i in session.items] == [("message", "user"), ("message", "assistant"),
                                                         ("function_call", None), ("function_call_output", None),
                                                         ("message", "assistant")]


async def test_caller_turns_count_text_and_speech_and_a_bare_call_has_no_message(rt, emulator):
    await rt.update(tools=TOOLS, turn_detection=VAD,
                    instructions="Be helpful.\nOn caller turn 2, call hang_up.")
    first = await reply_to(rt, "1")                                   # turn 1: keypad input as text
    assert not any(e["type"].startswith("response.function_call") for e in first)
    assert "".join(e["delta"] for e in first if e["type"] == "response.audio_transcript.delta") == "1"

    await rt.stream(np.concatenate([line_noise(0.3), speech_like(1.2), line_noise(1.0)]))  # turn 2: speech
    events = await rt.until("response.done", timeout=10)
    start = kinds(events).index("response.created")
    response = events[start:]
    assert kinds(response) == ["response.created", "response.output_item.added", "conversation.item.created",
                               "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                               "response.function_call_arguments.done", "response.output_item.done",
                               "response.done"]
    assert response[1]["output_index"] == 0 and response[1]["item"]["name"] == "hang_up"
    assert response[3]["arguments"] + response[4]["arguments"] == "{}" and response[5]["arguments"] == "{}"
    assert all(e["output_index"] == 0 for e in response[3:6])
    output = response[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["function_call"] and output[0]["arguments"] == "{}"
    session = emulator.sessions[0]
    user_items = [i for i in session.items if i.role == "user"]
    assert [bool(i.audio) for i in user_items] == [False, True]


async def test_inline_call_sends_arguments_verbatim_even_when_not_json(rt):
    await rt.update(tools=TOOLS, turn_detection=None, modalities=["text"])
    events = await reply_to(rt, 'Say exactly: One moment please. Call tool: check_order {"order_id": 42')
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert text == "One moment please."
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "check_order" and done["arguments"] == '{"order_id": 42'
    with pytest.raises(json.JSONDecodeError):
        json.loads(done["arguments"])
    deltas = [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"order_id": 42'


async def test_no_call_for_a_tool_not_offered_or_with_tool_choice_none(rt):
    await rt.update(tools=[TRANSFER], turn_detection=None,
                    instructions='On caller turn 1, say "Goodbye now." and call hang_up.\n'
                                 'On caller turn 2, call transfer {"target": "sales"}.')
    with structlog.testing.capture_logs() as logs:
        first = await reply_to(rt, "Thanks, that is all.")
    assert not any(e["type"].startswith("response.function_call") for e in first)
    assert "".join(e["delta"] for e in first if e["type"] == "response.audio_transcript.delta") == \
        "Thanks, that is all."                                        # answered as usual
    refused = [e for e in logs if e["event"] == "emulator_tool_not_offered"]
    assert refused and refused[0]["tool"] == "hang_up" and refused[0]["offered"] == ["transfer"]

    await rt.update(tool_choice="none")
    second = await reply_to(rt, "Sales please.")
    assert not any(e["type"].startswith("response.function_call") for e in second)
    await rt.update(tool_choice="auto")
    await rt.send({"type": "response.create"})                         # turn 2 again, the tool offered now
    third = await rt.until("response.done", timeout=10)
    assert [o["name"] for o in third[-1]["response"]["output"]] == ["transfer"]


async def test_cancel_during_the_spoken_line_means_no_call(rt, emulator):
    emulator.speed = 2.0
    await rt.update(tools=TOOLS, turn_detection=None,
                    instructions='On caller turn 1, say "' + "Please hold while I look that up. " * 3
                    + '" and call check_order {"order_id": "A-7"}.')
    await rt.send(user_text("Where is my order?"))
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    await rt.expect("response.audio.delta")
    await rt.send({"type": "response.cancel"})
    events = await rt.until("response.done", timeout=5)
    assert kinds(events)[-5:] == MESSAGE_TAIL + ["response.done"]
    assert not any(e["type"].startswith("response.function_call") or e.get("item", {}).get("type") ==
                   "function_call" for e in events)
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and [o["type"] for o in done["output"]] == ["message"]
    with pytest.raises(asyncio.TimeoutError):
        await rt.recv(timeout=0.3)
    assert not any(i.type == "function_call" for i in emulator.sessions[0].items)


async def test_function_call_output_must_answer_a_call_of_this_conversation(rt, emulator):
    await rt.update(tools=TOOLS, turn_detection=None,
                    instructions='On caller turn 1, call check_order {"order_id": "A-7"}.')
    events = await reply_to(rt, "Where is order A-7?")
    call_id = events[-1]["response"]["output"][0]["call_id"]

    async def refused(event: dict) -> dict:
        await rt.send(event)
        error = await rt.recv()
        assert error["type"] == "error", error
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["event_id"] == event["event_id"]
        return error["error"]

    error = await refused(function_output("call_000000000000000000000000", "{}", event_id="e1"))
    assert error["param"] == "item.call_id" and "call_000000000000000000000000" in error["message"]
    error = await refused({**function_output(call_id, "{}"), "previous_item_id": "root", "event_id": "e2"})
    assert error["param"] == "previous_item_id" and "after its function_call" in error["message"]

    await rt.send(function_output(call_id, '{"status": "shipped"}'))
    assert (await rt.expect("conversation.item.created"))["item"]["call_id"] == call_id
    error = await refused(function_output(call_id, '{"status": "lost"}', event_id="e3"))
    assert "already has an output" in error["message"]

    # While a response runs, the output is refused as response.create is.
    await rt.send(user_text("Say exactly: " + "la " * 40))
    await rt.expect("conversation.item.created")
    await rt.send({"type": "response.create"})
    await rt.expect("response.created")
    await rt.send(function_output(call_id, "{}", event_id="e4"))
    error = (await rt.until("error"))[-1]["error"]
    assert error["message"] == "ongoing response already exists" and error["event_id"] == "e4"
    await rt.expect("response.done", timeout=10)
    outputs = [i for i in emulator.sessions[0].items if i.type == "function_call_output"]
    assert [(i.call_id, i.output) for i in outputs] == [(call_id, '{"status": "shipped"}')]


BAD_TOOLS = [
    ([{"type": "function", "function": {"name": "hang up"}}], "invalid_value", "session.tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "invalid_value", "session.tools[0].function.name"),
    ([{"type": "function", "function": {"description": "no name"}}], "missing_required_parameter",
     "session.tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "invalid_value",
     "session.tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "invalid_type",
     "session.tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "a"}}}],
     "invalid_value", "session.tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 7}}], "invalid_type",
     "session.tools[0].function.description"),
    ([{"type": "function", "function": {"name": "f", "strict": True}}], "unknown_parameter",
     "session.tools[0].function.strict"),
    ([{"type": "function", "name": "f", "parameters": {"type": "object"}}], "unknown_parameter",
     "session.tools[0].name"),                                        # OpenAI's flat shape is not StepFun's
    ([HANG_UP, {"type": "code_interpreter", "function": {}}], "invalid_value", "session.tools[1].type"),
]


@pytest.mark.parametrize("tools,code,param", BAD_TOOLS)
async def test_bad_tools_in_session_update_are_errors(rt, emulator, tools, code, param):
    await rt.send({"type": "session.update", "event_id": "u1", "session": {"tools": tools}})
    error = await rt.recv()
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (code, param, "u1")
    assert emulator.sessions[0].config["tools"] == []
    assert (await rt.update(tools=[HANG_UP]))["session"]["tools"] == [HANG_UP]


# ---------------------------------------------------------------------------------------------- chat

CHAT = "/step_plan/v1/chat/completions"
CHAT_AUTH = {"Authorization": "Bearer sk-test-key"}
SYSTEM = ('You answer the Acme line.\n'
          'On caller turn 2, say "Let me check that order." and call check_order {"order_id": "A-7"}.')


def chat_body(messages: list[dict], *, tools: list | None = TOOLS, stream: bool = False) -> dict:
    body = {"model": "stepaudio-2.5-chat", "messages": messages, "modalities": ["text"], "stream": stream}
    if tools is not None:
        body["tools"] = tools
    return body


async def sse_chunks(resp) -> list[dict | str]:
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    text = await resp.text()
    events = [block[len("data: "):] for block in text.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_chat_calls_on_the_directed_turn_non_streamed(http):
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello."}]
    resp = await http.post(CHAT, json=chat_body(first), headers=CHAT_AUTH)
    assert resp.status == 200
    choice = (await resp.json())["choices"][0]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": "You said: Hello."},
                      "finish_reason": "stop"}

    second = first + [{"role": "assistant", "content": "You said: Hello."},
                      {"role": "user", "content": "Where is my order?"}]
    resp = await http.post(CHAT, json=chat_body(second), headers=CHAT_AUTH)
    body = await resp.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me check that order."
    (call,) = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "check_order", "arguments": '{"order_id": "A-7"}'}
    assert body["usage"]["completion_tokens"] > 0

    # The tool's result, answered in the next request.
    third = second + [message, {"role": "tool", "tool_call_id": call["id"], "content": '{"status": "shipped"}'}]
    resp = await http.post(CHAT, json=chat_body(third), headers=CHAT_AUTH)
    choice = (await resp.json())["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": 'The tool returned: {"status": "shipped"}'}
    assert choice["finish_reason"] == "stop"


async def test_chat_streams_the_line_then_the_call_in_fragments(http):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "You said: Hi."}, {"role": "user", "content": "My order?"}]
    chunks = await sse_chunks(await http.post(CHAT, json=chat_body(messages, stream=True), headers=CHAT_AUTH))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons[:-1] == [""] * (len(chunks) - 1) and reasons[-1] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    first_call = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    call_deltas = [d["tool_calls"] for d in deltas[first_call:-1]]
    assert "".join(d["content"] for d in deltas[:first_call]) == "Let me check that order."   # the line first
    assert all(d["content"] == "" for d in deltas[first_call:])
    assert deltas[0]["role"] == "assistant"
    assert len(call_deltas) >= 2 and all(len(c) == 1 and c[0]["index"] == 0 for c in call_deltas)
    head, *rest = [c[0] for c in call_deltas]
    assert head["id"].startswith("call_") and head["type"] == "function" and head["function"]["name"] == "check_order"
    assert all(set(r) == {"index", "function"} and set(r["function"]) == {"arguments"} for r in rest)
    assert "".join(c[0]["function"]["arguments"] for c in call_deltas) == '{"order_id": "A-7"}'


async def test_chat_stream_read_by_the_project_client(http):
    from voicebot.stepfun.chat import ChatClient

    client = ChatClient(http.session, str(http.make_url("/step_plan/v1")), "sk-test-key")
    messages = [{"role": "user", "content": 'Call tool: transfer {"target": "support"'}]
    async with client.stream(messages, tools=TOOLS) as stream:
        text = "".join([piece async for piece in stream])
    result = stream.result()
    assert text == "" and result.finish_reason == "tool_calls"
    assert [(c["type"], c["function"]) for c in result.tool_calls] == \
        [("function", {"name": "transfer", "arguments": '{"target": "support"'})]   # verbatim, not JSON


async def test_chat_without_the_tool_offered_answers_as_usual(http):
    messages = [{"role": "system", "content": "On caller turn 1, call hang_up."}, {"role": "user", "content": "Bye."}]
    for tools in (None, [TRANSFER]):
        resp = await http.post(CHAT, json=chat_body(messages, tools=tools), headers=CHAT_AUTH)
        choice = (await resp.json())["choices"][0]
        assert choice == {"index": 0, "message": {"role": "assistant", "content": "You said: Bye."},
                          "finish_reason": "stop"}
    resp = await http.post(CHAT, json=chat_body(messages, tools=[HANG_UP]), headers=CHAT_AUTH)
    message = (await resp.json())["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"] == {"name": "hang_up",
                                                                                   "arguments": "{}"}


def _called(call_id: str = "call_1") -> list[dict]:
    return [{"role": "user", "content": "Hang up please."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "hang_up", "arguments": "{}"}}]}]


@pytest.mark.parametrize("messages,problem", [
    (_called() + [{"role": "tool", "tool_call_id": "call_2", "content": "ok"}],
     "'messages[2].tool_call_id' 'call_2' does not match the id of a tool call in a preceding assistant message"),
    ([{"role": "tool", "tool_call_id": "call_1", "content": "ok"}] + _called(),
     "'messages[0].tool_call_id' 'call_1' does not match"),
    (_called() + [{"role": "tool", "tool_call_id": "call_1", "content": "ok"}] * 2,
     "'messages[3].tool_call_id' 'call_1': that tool call was already answered"),
    (_called() + [{"role": "tool", "content": "ok"}], "missing required parameter 'messages[2].tool_call_id'"),
    ([_called()[0], {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "hang_up", "arguments": "{}"}}]}], "missing required parameter 'messages[1].tool_calls[0].id'"),
    ([_called()[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                           "function": {"name": "hang_up"}}]}],
     "missing required parameter 'messages[1].tool_calls[0].function.arguments'"),
    ([_called()[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                           "function": {"name": "hang_up",
                                                                                        "arguments": {}}}]}],
     "'messages[1].tool_calls[0].function.arguments' must be a string"),
])
async def test_chat_tool_messages_are_checked(http, messages, problem):
    resp = await http.post(CHAT, json=chat_body(messages), headers=CHAT_AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "request_params_invalid" and error["message"].startswith(problem)


@pytest.mark.parametrize("tool,problem", [
    ({"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}},
     "'tools[0].function.parameters' must be a JSON Schema with type 'object'"),
    ({"type": "function", "function": {"name": "f g"}}, "'tools[0].function.name' may use only"),
])
async def test_chat_bad_tools_are_refused(http, tool, problem):
    resp = await http.post(CHAT, json=chat_body([{"role": "user", "content": "hi"}], tools=[tool]),
                           headers=CHAT_AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith(problem)


async def test_chat_reply_cut_short_never_reaches_its_call(http, emulator):
    messages = [{"role": "system", "content": 'On caller turn 1, say "One two three four five." and call hang_up.'},
                {"role": "user", "content": "Bye."}]
    resp = await http.post(CHAT, json={**chat_body(messages), "max_tokens": 3}, headers=CHAT_AUTH)
    choice = (await resp.json())["choices"][0]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == "One two three"
