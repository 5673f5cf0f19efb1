"""End to end: the emulated model calls tools on real calls (signed Twilio path, Telnyx, Asterisk), on both
engines — hang-up and transfer after the last words were heard, webhooks, bad arguments, keypad input,
silence, recordings, call records through the admin API, call events."""

from __future__ import annotations

import asyncio
import json
import wave

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from voicebot.emulator.app import Emulator, start_emulator
from voicebot.simulator.asterisk import AsteriskProtocol
from voicebot.simulator.caller import Hangup, Press, Say, SimulatedCall
from voicebot.simulator.carrier_api import FakeTelnyxApi, FakeTwilioApi
from voicebot.simulator.telnyx import simulate_call as simulate_telnyx_call
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import read_transcript
from voicebot.webhooks import SIGNATURE_HEADER, signature_matches

from conftest import AUTH_TOKEN, CARRIER_SECRETS, start_voice_server, until

ACCOUNT_SID = "AC" + "7" * 32
TELNYX_KEY = "KEY-test-telnyx-0c4e"
WEBHOOK_SECRET = "test-webhook-secret-2b7a"
EVENTS_SECRET = "test-events-secret-93d1"
ADMIN_TOKEN = "test-admin-token-6f0e"
GOODBYE = "Thank you so much for calling the test line today, goodbye."
TRANSFER_LINE = "Let me transfer you to sales."

TOOLS = """
    tools:
      hang_up: true
      send_dtmf: true
      transfer: {sales: "+15550001111", support: "sip:support@pbx.example.com"}
      webhook_secret_env: E2E_WEBHOOK_SECRET
      webhooks:
        - name: check_order
          description: Look up an order by its number
          url: {crm}/orders
          parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
          timeout_s: 1
"""


def persona(name: str, number: str, directive: str, *, engine: str = "realtime", extra: str = "") -> str:
    return f"""
  - name: {name}
    numbers: ["{number}"]
    engine: {engine}
    language: en
    voice: lively-girl
    greeting: Hello, tools line.
    instructions: |
      You are a test assistant.
      {directive}
    chain: {{silence_ms: 500}}
    record: true
    events_webhook: {{url: "{{crm}}/events", secret_env: E2E_EVENTS_SECRET}}
{TOOLS}{extra}"""


NUMBERS = {}


def _line(name, directive, engine="realtime", extra=""):
    number = f"+1555010{len(NUMBERS):04d}"
    NUMBERS[name] = number
    return persona(name, number, directive, engine=engine, extra=extra)


PERSONAS = "personas:" + "".join([
    _line("hangup", f'On caller turn 1, say "{GOODBYE}" and call hang_up.'),
    _line("hangup-chain", f'On caller turn 1, say "{GOODBYE}" and call hang_up.', "chain"),
    _line("transfer", f'On caller turn 1, say "{TRANSFER_LINE}" and call transfer {{"target": "sales"}}.'),
    _line("transfer-chain", 'On caller turn 1, say "One moment." and call transfer {"target": "support"}.', "chain"),
    _line("order", 'On caller turn 1, call check_order {"order_id": "A-1001"}.'),
    _line("order-chain", 'On caller turn 1, call check_order {"order_id": "A-1001"}.', "chain"),
    _line("order-auto", 'On caller turn 1, call check_order {"order_id": "A-1001"}.', "auto"),
    _line("order-slow", 'On caller turn 1, call check_order {"order_id": "slow"}.'),
    _line("order-broken", 'On caller turn 1, call check_order {"order_id": "broken"}.', "chain"),
    _line("bad-target", 'On caller turn 1, call transfer {"target": "billing"}.'),
    _line("not-json", 'On caller turn 1, call check_order {order_id: A-1}.', "chain"),
    _line("keys", "Answer briefly."),
    _line("press", 'On caller turn 1, call send_dtmf {"digits": "19#"}.'),
    _line("keys-collect", "Answer briefly.", extra="    dtmf: {mode: collect, max_digits: 6, terminator: '#', timeout_s: 2}\n"),
    _line("silent", "Answer briefly.", extra="    silence: {reprompt_s: 2, reprompt: 'Are you still there?', hang_up_s: 4,"
                                              " goodbye: 'Goodbye for now.'}\n"),
])


@pytest.fixture
async def crm(aiohttp_server):
    """The persona's own services: an order lookup (signed requests only) and the call-events receiver."""
    state = {"orders": [], "events": [], "never": asyncio.Event()}

    async def orders(request):
        body = await request.read()
        if not signature_matches(body, WEBHOOK_SECRET, request.headers.get(SIGNATURE_HEADER)):
            return web.json_response({"error": "bad signature"}, status=401)
        order = json.loads(body)["order_id"]
        state["orders"].append(order)
        if order == "slow":
            await state["never"].wait()
        if order == "broken":
            return web.Response(status=503, text="database down")
        return web.json_response({"order_id": order, "status": "shipped"})

    async def events(request):
        body = await request.read()
        assert signature_matches(body, EVENTS_SECRET, request.headers.get(SIGNATURE_HEADER))
        state["events"].append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/orders", orders)
    app.router.add_post("/events", events)
    server = await aiohttp_server(app)
    state["url"] = str(server.make_url("")).rstrip("/")
    return state


@pytest.fixture
async def tools_stack(tmp_path, crm, monkeypatch):
    for name, value in {**CARRIER_SECRETS, "E2E_WEBHOOK_SECRET": WEBHOOK_SECRET, "E2E_EVENTS_SECRET": EVENTS_SECRET,
                        "TELNYX_API_KEY": TELNYX_KEY, "VOICEBOT_ADMIN_TOKEN": ADMIN_TOKEN}.items():
        monkeypatch.setenv(name, value)
    twilio_api = await FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN).start()
    telnyx_api = await FakeTelnyxApi(TELNYX_KEY).start()
    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "tools.yaml").write_text(PERSONAS.replace("{crm}", crm["url"]), encoding="utf-8")
    from voicebot.config import TwilioSettings
    runner, settings, app = await start_voice_server(
        tmp_path, plans, emulator,
        twilio=TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                              api_base_url=twilio_api.base_url),
        carriers={"telnyx": {"auth": False, "call_control": {"api_base_url": telnyx_api.base_url}}})

    class Stack:
        pass
    stack = Stack()
    stack.__dict__.update(url=settings.public_url, settings=settings, emulator=emulator, app=app,
                          twilio=twilio_api, telnyx=telnyx_api, crm=crm)
    try:
        yield stack
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()
        await twilio_api.close()
        await telnyx_api.close()


async def idle(stack) -> None:
    from voicebot.server import SERVICES
    calls = stack.app[SERVICES].calls
    await until(lambda: not calls, timeout=10, what="every call to finish")


async def transcript(stack) -> list[dict]:
    await idle(stack)
    files = sorted(stack.settings.transcripts_dir.glob("*/*.jsonl"))
    assert len(files) == 1, files
    return read_transcript(files[0])


async def api_record(stack, call_id: str) -> dict:
    """The call's record through the admin API, once the writer has stored its end."""
    from voicebot.server import SERVICES
    records = stack.app[SERVICES].records
    await until(lambda: records.stats()["pending"] == 0, what="the record writer to store what it was given")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.get(f"{stack.url}/api/calls/{call_id}") as resp:
            body = await resp.json()
    assert resp.status == 200 and body.get("outcome"), body
    return body


def turns(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "turn"]


def tool_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "tool"]


def question(caller_en):
    return [Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"), Hangup(at_s=38)]


async def twilio_call(stack, name, script, **options):
    return await simulate_twilio_call(stack.url, to=NUMBERS[name], auth_token=AUTH_TOKEN, script=script,
                                      max_duration_s=40, carrier_api=stack.twilio, **options)


def assert_heard_then_ended(result, request_at: float, line: str) -> None:
    """The bot's last line played in full before the carrier was told to end or move the call."""
    assert result.protocol_errors == []
    last = result.segments[-1]
    assert last.ended_by == "drained", last
    assert last.played_ms >= 0.85 * len(line) * 65, (last, line)
    assert request_at - result.t0 >= last.end_s - 0.001, (request_at - result.t0, last.end_s)


# -- hang-up and transfer ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hangup", "hangup-chain"])
async def test_hang_up_comes_after_the_goodbye_played_in_full(tools_stack, caller_en, caller_interrupt, name):
    # The caller talks over the goodbye once the model has asked to hang up (1.5 s into it): the goodbye is
    # not cut, and the hang-up still follows it.
    script = [Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"),
              Say(caller_interrupt, barge_after_bot_ms=1500, label="talks over the goodbye"), Hangup(at_s=38)]
    result = await twilio_call(tools_stack, name, script)
    request = await tools_stack.twilio.wait_for_request(lambda r: r.form.get("Status") == "completed")
    assert request.path.endswith(f"/Calls/{result.call_id}.json") and request.status == 200
    assert result.end_reason in ("carrier_ended", "server_closed")
    assert len(result.clears) == 0                     # the goodbye was not cut by the caller talking
    assert_heard_then_ended(result, request.at, GOODBYE)
    records = await transcript(tools_stack)
    assert turns(records)[-1]["text"] == GOODBYE and not turns(records)[-1].get("interrupted")
    assert [(t["name"], t["ok"]) for t in tool_records(records)] == [("hang_up", True)]
    end = records[-1]
    assert end["outcome"] == "bot_hung_up" and "bot hung up" in end["end_reason"]


async def test_transfer_dials_the_named_target_with_twiml_after_the_line_played(tools_stack, caller_en):
    result = await twilio_call(tools_stack, "transfer", question(caller_en))
    update = await tools_stack.twilio.wait_for_update(lambda u: u.action == "transfer")
    request = await tools_stack.twilio.wait_for_request(lambda r: "Twiml" in r.form)
    assert "<Response><Dial><Number>+15550001111</Number></Dial></Response>" in request.form["Twiml"]
    assert update.target == "+15550001111" and result.end_reason == "carrier_ended"
    assert_heard_then_ended(result, request.at, TRANSFER_LINE)
    records = await transcript(tools_stack)
    assert records[-1]["outcome"] == "transferred"
    record = await api_record(tools_stack, records[0]["call_id"])
    assert record["outcome"] == "transferred" and record["transfer_target"] == "+15550001111"
    assert record["tools"][0]["name"] == "transfer" and record["tools"][0]["ok"]
    events = [e["type"] for e in tools_stack.crm["events"]]
    assert events[0] == "call.started" and "call.transferred" in events
    await until(lambda: [e["type"] for e in tools_stack.crm["events"]][-1] == "call.ended", what="call.ended")
    ended = tools_stack.crm["events"][-1]["data"]
    assert ended["outcome"] == "transferred" and ended["transcript"]


async def test_chain_transfer_to_a_sip_target(tools_stack, caller_en):
    result = await twilio_call(tools_stack, "transfer-chain", question(caller_en))
    request = await tools_stack.twilio.wait_for_request(lambda r: "Twiml" in r.form)
    assert "<Sip>sip:support@pbx.example.com</Sip>" in request.form["Twiml"]
    assert_heard_then_ended(result, request.at, "One moment.")
    chats = [r for r in tools_stack.emulator.http_log if r.endpoint == "chat"]
    offered = [t["function"]["name"] for t in chats[0].body["tools"]]
    assert offered == ["hang_up", "transfer", "send_dtmf", "check_order"]


async def test_telnyx_hang_up_uses_call_control_after_the_goodbye(tools_stack, caller_en):
    result = await simulate_telnyx_call(tools_stack.url, to=NUMBERS["hangup"], script=question(caller_en),
                                        max_duration_s=40, carrier_api=tools_stack.telnyx)
    request = await tools_stack.telnyx.wait_for_request(lambda r: r.path.endswith("/actions/hangup"))
    assert request.status == 200 and result.call_id in request.path
    assert_heard_then_ended(result, request.at, GOODBYE)
    assert (await transcript(tools_stack))[-1]["outcome"] == "bot_hung_up"


async def test_asterisk_hang_up_is_the_in_band_command_after_the_goodbye(tools_stack, caller_en):
    protocol = AsteriskProtocol(tools_stack.url, to=NUMBERS["hangup"])
    result = await SimulatedCall(protocol, question(caller_en), max_duration_s=40).run()
    assert result.end_reason == "server_closed" and protocol.hangup_at is not None
    assert_heard_then_ended(result, protocol.hangup_at, GOODBYE)
    assert (await transcript(tools_stack))[-1]["outcome"] == "bot_hung_up"


# -- webhooks and bad calls ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["order", "order-chain"])
async def test_a_webhook_tool_answer_reaches_the_model_and_the_caller(tools_stack, caller_en, name):
    result = await twilio_call(tools_stack, name, question(caller_en))
    assert result.protocol_errors == []
    assert tools_stack.crm["orders"] == ["A-1001"]
    records = await transcript(tools_stack)
    [tool] = tool_records(records)
    assert tool["name"] == "check_order" and tool["ok"]
    assert tool["result"] == {"result": {"order_id": "A-1001", "status": "shipped"}}
    reply = turns(records)[-1]
    assert reply["role"] == "assistant" and reply["text"].startswith("The tool returned:")
    assert "shipped" in reply["text"]
    reply_audio = [s for s in result.segments if s.start_s > result.utterances[0].end_s]
    assert reply_audio and reply_audio[0].played_ms > 1000      # the caller heard the answer


@pytest.mark.parametrize("name, problem", [("order-slow", "no answer within 1 s"), ("order-broken", "HTTP 503"),
                                           ("bad-target", "unknown transfer target 'billing'"),
                                           ("not-json", "not valid JSON")])
async def test_a_failing_or_bad_tool_call_is_an_error_for_the_model_and_the_call_goes_on(tools_stack, caller_en,
                                                                                          name, problem):
    script = [Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"),
              Say(caller_en, after_bot_done=True, pause_s=0.3, label="again"), Hangup(after_bot_done=True, pause_s=0.5)]
    result = await twilio_call(tools_stack, name, script)
    assert result.end_reason == "hangup" and result.protocol_errors == []    # the caller, not the bot, ended it
    records = await transcript(tools_stack)
    [tool] = tool_records(records)
    assert not tool["ok"] and problem in tool["result"]["error"]
    said = [t["text"] for t in turns(records) if t["role"] == "assistant"]
    assert any(text.startswith("The tool returned:") and "error" in text for text in said)
    assert turns(records)[-1]["role"] == "assistant"          # the second question was answered too
    assert records[-1]["outcome"] == "completed"
    assert tools_stack.twilio.requests == [] or all("Twiml" not in r.form for r in tools_stack.twilio.requests)


# -- keypad --------------------------------------------------------------------------------------------

async def test_keypad_digits_pass_to_the_model_one_by_one(tools_stack):
    result = await twilio_call(tools_stack, "keys", [Press("5", after_bot_done=True, pause_s=0.3),
                                                     Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    session = tools_stack.emulator.sessions[0]
    items = [e["item"] for e in session.received_of("conversation.item.create") if e["item"]["type"] == "message"]
    assert [i["content"][0]["text"] for i in items] == ["The caller pressed 5 on the phone keypad."]
    records = await transcript(tools_stack)
    assert [r["digit"] for r in records if r["type"] == "dtmf"] == ["5"]
    assert turns(records)[-1]["text"] == "The caller pressed 5 on the phone keypad."   # spoken back by the emulator


async def test_keypad_digits_are_collected_into_one_entry(tools_stack):
    result = await twilio_call(tools_stack, "keys-collect", [Press("1234#", after_bot_done=True, pause_s=0.3),
                                                             Press("98", after_bot_done=True, pause_s=0.3),
                                                             Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    session = tools_stack.emulator.sessions[0]
    texts = [e["item"]["content"][0]["text"] for e in session.received_of("conversation.item.create")
             if e["item"]["type"] == "message"]
    # "1234#" ends at the terminator; "98" ends 2 s after its last key.
    assert texts == ["The caller entered 1234 on the phone keypad.", "The caller entered 98 on the phone keypad."]


async def test_send_dtmf_plays_the_keys_to_the_caller(tools_stack, caller_en):
    from voicebot.audio.dtmf import HIGH, LOW
    result = await twilio_call(tools_stack, "press", [Say(caller_en, after_bot_done=True, pause_s=0.3),
                                                      Hangup(after_bot_done=True, pause_s=1.0)])
    assert result.protocol_errors == []
    heard = result.heard[int(result.utterances[0].end_s * 8000):].astype(np.float64)
    keys = []
    for start in range(0, len(heard) - 640, 160):      # 80 ms windows, 20 ms apart
        window = heard[start:start + 640]
        if np.sqrt(np.mean(window ** 2)) < 1000:
            continue
        spectrum = np.abs(np.fft.rfft(window * np.hanning(640)))
        freqs = np.fft.rfftfreq(640, 1 / 8000)
        low, high = sorted(freqs[np.argsort(spectrum)[-2:]])
        key = next((k for k in LOW if abs(LOW[k] - low) < 20 and abs(HIGH[k] - high) < 20), None)
        if key is not None and (not keys or keys[-1][0] != key or start - keys[-1][1] > 1200):
            keys.append((key, start))
    assert [k for k, _ in keys][:3] == ["1", "9", "#"]
    records = await transcript(tools_stack)
    assert [(t["name"], t["ok"]) for t in tool_records(records)] == [("send_dtmf", True)]
    assert [r["digits"] for r in records if r["type"] == "dtmf_out"] == ["19#"]


# -- silence -------------------------------------------------------------------------------------------

async def test_a_silent_caller_is_reprompted_then_hung_up_after_a_goodbye(tools_stack):
    result = await twilio_call(tools_stack, "silent", [Hangup(at_s=30)])
    request = await tools_stack.twilio.wait_for_request(lambda r: r.form.get("Status") == "completed")
    assert_heard_then_ended(result, request.at, "Goodbye for now.")
    records = await transcript(tools_stack)
    said = [t["text"] for t in turns(records)]
    assert said == ["Hello, tools line.", "Are you still there?", "Goodbye for now."]
    assert [r for r in records if r["type"] == "silence_reprompt"]
    assert records[-1]["outcome"] == "silence"
    # The greeting ends, 2 s of silence, the re-prompt, and the hang-up after 4 s of the caller's silence.
    starts = [s.start_s for s in result.segments]
    assert 1.8 < starts[1] - result.segments[0].end_s < 2.8
    assert 3.5 < (starts[2] - result.segments[0].end_s) - result.segments[1].played_ms / 1000 < 4.8


# -- recording and records -------------------------------------------------------------------------------

def onsets(channel: np.ndarray, threshold: float = 500.0) -> list[float]:
    """Start times (s) of stretches of sound separated by ≥ 300 ms of quiet, in 10 ms windows."""
    windows = channel[: len(channel) // 80 * 80].reshape(-1, 80).astype(np.float64)
    loud = np.sqrt((windows ** 2).mean(axis=1)) > threshold
    starts, quiet = [], 30
    for i, on in enumerate(loud):
        if on and quiet >= 30:
            starts.append(i * 0.01)
        quiet = 0 if on else quiet + 1
    return starts


async def test_the_recording_is_what_the_caller_heard_and_the_record_is_complete(tools_stack, caller_en,
                                                                                  caller_interrupt):
    script = [Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"),
              Say(caller_interrupt, barge_after_bot_ms=900, label="barge"), Hangup(after_bot_done=True, pause_s=1.0)]
    result = await twilio_call(tools_stack, "keys", script)
    assert len(result.clears) == 1
    records = await transcript(tools_stack)
    record = await api_record(tools_stack, records[0]["call_id"])
    path = record["recording_path"]
    assert path and path.endswith(f"twilio-{result.call_id}.wav")
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, bot = stereo[:, 0], stereo[:, 1]
    # Both channels line up with what the simulated caller sent and heard, to ±20 ms.
    for ours, theirs in ((caller, result.sent), (bot, result.heard)):
        a, b = onsets(ours), onsets(theirs)
        assert len(a) == len(b) and len(a) >= 2, (a, b)
        offset = a[0] - b[0]
        assert all(abs((x - y) - offset) <= 0.02 for x, y in zip(a, b)), (a, b)
    # The barge-in cut is in the recording: the bot channel is silent from the clear until the next reply.
    clear = result.clears[0] + (onsets(bot)[0] - onsets(result.heard)[0])
    cut = bot[int((clear + 0.06) * 8000): int((clear + 0.5) * 8000)]
    assert np.sqrt(np.mean(cut.astype(np.float64) ** 2)) < 100
    # The record has it all.
    assert record["outcome"] == "completed" and record["carrier"] == "twilio"
    assert record["carrier_call_id"] == result.call_id and record["to_number"] == NUMBERS["keys"]
    assert record["barge_ins"] == 1 and record["user_turns"] == 2 and record["bot_turns"] >= 3
    assert record["engines"] == ["realtime"] and record["first_audio_ms"] < 1000
    assert record["turn_latencies_ms"] and all(0 < ms < 3000 for ms in record["turn_latencies_ms"])
    cut_turns = [t for t in record["transcript"] if t.get("interrupted")]
    assert len(cut_turns) == 1 and cut_turns[0]["heard_ms"] > 0
    assert record["started_at"] < record["ended_at"] and record["duration_s"] > 5
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.get(f"{tools_stack.url}/api/calls/{record['id']}/recording") as resp:
            assert resp.status == 200 and resp.content_type == "audio/wav"
            assert len(await resp.read()) == 44 + stereo.nbytes


async def test_a_failover_call_has_a_complete_record(tools_stack, caller_en):
    tools_stack.emulator.faults.refuse_realtime_status = 503
    result = await twilio_call(tools_stack, "order-auto", question(caller_en))
    assert result.protocol_errors == []
    records = await transcript(tools_stack)
    record = await api_record(tools_stack, records[0]["call_id"])
    assert record["engines"] == ["realtime", "chain"] and len(record["engine_switches"]) == 1
    assert "503" in record["engine_switches"][0]["reason"]
    assert record["tools"][0]["name"] == "check_order" and record["tools"][0]["ok"]
    assert record["outcome"] == "completed" and record["user_turns"] == 1


async def test_the_admin_api_refuses_missing_or_wrong_tokens(tools_stack):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
            async with http.get(f"{tools_stack.url}/api/calls", headers=headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
