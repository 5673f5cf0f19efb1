"""End to end: a call a campaign placed, on the real server with the emulated model and a simulated callee on
the signed Twilio path — the bot waits for the callee (AMD verdict in-process or found by polling, or the end of
the callee's first words), greets with the contact's variables, leaves the voicemail message or hangs up on a
machine, and reports set_outcome / opt_out to the campaign service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest

from voicebot.campaigns.outbound import OPT_OUT_GOODBYE, OutboundContext, personalised
from voicebot.campaigns.templates import fill
from voicebot.config import TwilioSettings
from voicebot.emulator.app import Emulator, start_emulator
from voicebot.simulator.caller import Hangup, Say, StreamRefused
from voicebot.simulator.carrier_api import FakeTwilioApi
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import read_transcript

from conftest import AUTH_TOKEN, start_voice_server, until

ACCOUNT_SID = "AC" + "5" * 32
ADMIN_TOKEN = "test-admin-token-campaign-41c2"
OUR_NUMBER = "+15550002000"
CALLEE = "+15557654321"
CAMPAIGN_ID = "c0ffee00c0ffee00"
VARIABLES = {"first_name": "Jane", "day": "Tuesday"}
GREETING = "Hello {first_name}, this is Acme Dental about your visit on {day}."
VOICEMAIL = "Hi {first_name}, this is Acme Dental. Please call us back to confirm your visit on {day}. Goodbye."
OUTCOMES = ("confirmed", "reschedule", "not_interested")


NAMES: list[str] = []


def persona(name: str, directives: str = "", *, engine: str = "realtime", default: bool = False) -> str:
    NAMES.append(name)
    return f"""
  - name: {name}
    numbers: ["+1555030{len(NAMES):04d}"]
    default: {str(default).lower()}
    engine: {engine}
    language: en
    voice: lively-girl
    greeting: {GREETING}
    instructions: |
      You remind {{first_name}} of a dental visit on {{day}}. Keep answers short.
      {directives}
    chain: {{silence_ms: 500}}
"""


PERSONAS = "personas:" + "".join([
    persona("reminders", default=True),
    persona("outcomes", 'On caller turn 1, call set_outcome {{"outcome": "maybe_later"}}.\n'
                        '      On caller turn 2, say "See you on {day}." and call set_outcome '
                        '{{"outcome": "confirmed", "note": "{first_name} comes on {day}"}}.'),
    persona("optout", 'On caller turn 1, say "I understand." and call opt_out.'),
    persona("optout-chain", 'On caller turn 1, say "I understand." and call opt_out.', engine="chain"),
])


@dataclass(frozen=True)
class Policy:          # what the campaign definition's VoicemailPolicy carries
    action: str
    message: str | None = None


class Campaigns:
    """The campaign service as a call sees it, holding real contexts; records what the calls report."""

    def __init__(self) -> None:
        self.contexts: dict[str, OutboundContext] = {}
        self.verdicts: dict[str, str] = {}
        self.results: list[tuple[str, dict]] = []
        self.polls = 0

    async def resolve(self, meta):
        return self.contexts.get(meta.params["attempt"])

    def call_result(self, attempt_id: str, **result) -> None:
        self.results.append((attempt_id, result))

    async def answered_by(self, attempt_id: str) -> str | None:
        self.polls += 1
        return self.verdicts.get(attempt_id)


@pytest.fixture
async def stack(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", ADMIN_TOKEN)
    twilio_api = await FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN).start()
    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "campaign.yaml").write_text(PERSONAS, encoding="utf-8")
    runner, settings, app = await start_voice_server(
        tmp_path, plans, emulator,
        twilio=TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                              api_base_url=twilio_api.base_url))
    from voicebot.server import SERVICES
    services = app[SERVICES]
    services.campaigns = Campaigns()

    class Stack:
        pass
    s = Stack()
    s.__dict__.update(url=settings.public_url, settings=settings, emulator=emulator, app=app, services=services,
                      twilio=twilio_api, campaigns=services.campaigns)
    try:
        yield s
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()
        await twilio_api.close()


def attempt(stack, attempt_id: str, persona_name: str, *, voicemail: Policy | None = None) -> str:
    persona_ = stack.services.dialplan.named(persona_name)
    stack.campaigns.contexts[attempt_id] = OutboundContext(
        attempt_id=attempt_id, campaign_id=CAMPAIGN_ID, campaign="dental-reminders", contact_id="c" + attempt_id,
        phone=CALLEE, variables=dict(VARIABLES), persona=personalised(persona_, VARIABLES), voicemail=voicemail,
        voicemail_message=fill(voicemail.message, VARIABLES) if voicemail else None, outcomes=OUTCOMES)
    return attempt_id


async def place(stack, attempt_id: str, script, **options):
    """The callee answers the placed call: its stream names the attempt. Returns (the callee's run, our Call)."""
    calls = stack.services.calls
    run = asyncio.create_task(simulate_twilio_call(
        stack.url, to=CALLEE, from_=OUR_NUMBER, auth_token=AUTH_TOKEN, script=script, max_duration_s=40,
        carrier_api=stack.twilio, custom_parameters={"From": OUR_NUMBER, "To": CALLEE, "attempt": attempt_id},
        **options))
    await until(lambda: calls or run.done(), timeout=10, what="the call to start")
    if run.done():
        run.result()
    [call] = calls
    return run, call


async def records_of(stack) -> list[dict]:
    await until(lambda: not stack.services.calls, timeout=15, what="every call to finish")
    [path] = sorted(stack.settings.transcripts_dir.glob("*/*.jsonl"))
    return read_transcript(path)


def said(records) -> list[str]:
    return [r["text"] for r in records if r["type"] == "turn" and r["role"] == "assistant"]


async def api_record(stack, call_id: str) -> dict:
    records = stack.services.records
    await until(lambda: records.stats()["pending"] == 0, what="the record writer to store what it was given")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.get(f"{stack.url}/api/calls/{call_id}") as resp:
            assert resp.status == 200
            return await resp.json()


def hello_then_talk(caller_en):
    """The callee says hello at once, answers the bot once, and hangs up after its reply."""
    return [Say(caller_en, at_s=0.3, label="hello"), Say(caller_en, after_bot_done=True, pause_s=0.3, label="answer"),
            Hangup(after_bot_done=True, pause_s=0.5)]


def assert_outbound_record(record: dict, attempt_id: str) -> None:
    assert record["direction"] == "outbound"
    assert (record["campaign_id"], record["attempt_id"]) == (CAMPAIGN_ID, attempt_id)
    assert (record["from_number"], record["to_number"]) == (OUR_NUMBER, CALLEE)


# -- answering machine detection on ----------------------------------------------------------------------

async def test_with_amd_the_bot_is_silent_until_the_human_verdict_then_greets_the_contact(stack, caller_en):
    aid = attempt(stack, "a1", "reminders", voicemail=Policy("leave_message", VOICEMAIL))
    run, call = await place(stack, aid, hello_then_talk(caller_en))
    # The callee's "hello" came and went: nothing was said, nothing reached the model.
    await until(lambda: call.campaign.utterances_heard == 1, timeout=10, what="the callee's first words to end")
    session = stack.emulator.sessions[0]
    assert session.received_of("input_audio_buffer.append") == []
    assert session.received_of("response.create") == []
    verdict_t = asyncio.get_running_loop().time()
    call.machine_detected("human")
    result = await run
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    assert result.t0 + result.segments[0].start_s >= verdict_t       # the first bot audio came after the verdict
    greeting = fill(GREETING, VARIABLES)
    records = await records_of(stack)
    assert said(records)[0] == greeting
    # The persona the model got is the contact's.
    instructions = session.received_of("session.update")[0]["session"]["instructions"]
    assert "Jane" in instructions and "Tuesday" in instructions and "{" not in instructions
    # Only the answer after the greeting was a caller turn; the hello before it never reached the model.
    assert [r["role"] for r in records if r["type"] == "turn"][:2] == ["assistant", "user"]
    assert sum(1 for r in records if r["type"] == "turn" and r["role"] == "user") == 1
    record = await api_record(stack, records[0]["call_id"])
    assert_outbound_record(record, aid)
    assert record["outcome"] == "completed" and record["user_turns"] == 1
    assert stack.campaigns.results[-1] == (aid, {"call_id": record["id"], "disposition": None, "note": None,
                                                 "opted_out": False})


async def test_a_machine_gets_the_voicemail_message_once_in_full_then_the_hang_up(stack, caller_en):
    aid = attempt(stack, "a2", "reminders", voicemail=Policy("leave_message", VOICEMAIL))
    script = [Say(caller_en, at_s=0.3, label="voicemail greeting"), Hangup(at_s=38)]
    run, call = await place(stack, aid, script)
    await until(lambda: call.campaign.utterances_heard == 1, timeout=10, what="the voicemail greeting to end")
    verdict_t = asyncio.get_running_loop().time()
    call.machine_detected("machine_end_beep")
    call.machine_detected("human")           # a late, contradicting verdict changes nothing
    request = await stack.twilio.wait_for_request(lambda r: r.form.get("Status") == "completed", timeout=20)
    result = await run
    message = fill(VOICEMAIL, VARIABLES)
    assert result.protocol_errors == [] and result.end_reason in ("carrier_ended", "server_closed")
    assert result.t0 + result.segments[0].start_s >= verdict_t
    assert result.segments[-1].ended_by == "drained" and result.clears == []
    assert result.bot_played_ms >= 0.85 * len(message) * 65          # all of it played
    assert request.at - result.t0 >= result.segments[-1].end_s - 0.001   # and only then the hang-up
    records = await records_of(stack)
    assert said(records) == [message]
    assert records[-1]["outcome"] == "voicemail"
    record = await api_record(stack, records[0]["call_id"])
    assert_outbound_record(record, aid)
    assert record["outcome"] == "voicemail" and record["bot_turns"] == 1


async def test_a_machine_under_a_hang_up_policy_is_hung_up_on_at_once_without_a_word(stack, caller_en):
    aid = attempt(stack, "a3", "reminders", voicemail=Policy("hang_up"))
    run, call = await place(stack, aid, [Say(caller_en, at_s=0.3, label="voicemail greeting"), Hangup(at_s=38)])
    await until(lambda: call.campaign.utterances_heard == 1, timeout=10, what="the voicemail greeting to end")
    verdict_t = asyncio.get_running_loop().time()
    call.machine_detected("machine_end_silence")
    request = await stack.twilio.wait_for_request(lambda r: r.form.get("Status") == "completed")
    result = await run
    assert request.at - verdict_t < 0.5
    assert result.segments == [] and result.first_bot_audio_s is None
    assert stack.emulator.sessions[0].received_of("response.create") == []
    records = await records_of(stack)
    assert said(records) == [] and records[-1]["outcome"] == "voicemail"


async def test_the_verdict_found_by_polling_the_campaign_service_starts_the_greeting(stack, caller_en):
    aid = attempt(stack, "a4", "reminders", voicemail=Policy("leave_message", VOICEMAIL))
    run, call = await place(stack, aid, hello_then_talk(caller_en))
    await until(lambda: call.campaign.utterances_heard == 1, timeout=10, what="the callee's first words to end")
    polls_before = stack.campaigns.polls
    assert polls_before >= 1 and call.campaign.answered_by is None
    verdict_t = asyncio.get_running_loop().time()
    stack.campaigns.verdicts[aid] = "human"        # as when the AMD callback landed on another instance
    result = await run
    assert stack.campaigns.polls > polls_before
    assert verdict_t <= result.t0 + result.segments[0].start_s <= verdict_t + 0.5 + 2.0
    assert said(await records_of(stack))[0] == fill(GREETING, VARIABLES)


async def test_no_verdict_in_time_counts_as_unknown_and_the_greeting_waits_for_the_callee_to_pause(
        stack, caller_en, monkeypatch):
    from voicebot.campaigns import outbound
    monkeypatch.setattr(outbound, "AMD_WAIT_S", 1.5)      # the bound runs out while the callee still says hello
    aid = attempt(stack, "a8", "reminders", voicemail=Policy("leave_message", VOICEMAIL))
    result = await place_and_wait(stack, aid, hello_then_talk(caller_en))
    hello = result.utterances[0]
    spoken_until = speech_end(result.sent, hello.start_s, hello.end_s)
    assert spoken_until > 1.5 + 0.5                           # (the callee was mid-word when the bound ran out)
    assert spoken_until < result.segments[0].start_s < spoken_until + 1.5
    records = await records_of(stack)
    assert [r["answered_by"] for r in records if r["type"] == "amd_verdict"] == ["unknown"]
    assert said(records)[0] == fill(GREETING, VARIABLES)


# -- answering machine detection off ---------------------------------------------------------------------

async def test_without_amd_the_bot_greets_when_the_callees_first_words_end_unheard_by_the_model(stack, caller_en):
    aid = attempt(stack, "a5", "reminders")
    result = await place_and_wait(stack, aid, hello_then_talk(caller_en))
    hello = result.utterances[0]
    spoken_until = speech_end(result.sent, hello.start_s, hello.end_s)
    greeting = result.segments[0]
    assert spoken_until < greeting.start_s < spoken_until + 1.5
    session = stack.emulator.sessions[0]
    greet_sent = next(t for t, e in session.received if e.get("type") == "response.create")
    first_audio = next(t for t, e in session.received if e.get("type") == "input_audio_buffer.append")
    assert first_audio >= greet_sent         # no audio from before the greeting went to the model
    records = await records_of(stack)
    assert said(records)[0] == fill(GREETING, VARIABLES)
    assert sum(1 for r in records if r["type"] == "turn" and r["role"] == "user") == 1


def speech_end(pcm, start_s: float, end_s: float) -> float:
    """When the last 20 ms frame louder than -38 dBFS (the local VAD's threshold) between the two times ends."""
    frames = pcm[int(start_s * 8000):int(end_s * 8000)]
    frames = frames[:len(frames) // 160 * 160].reshape(-1, 160).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames ** 2).mean(axis=1)) > 32768 * 10 ** (-38 / 20))
    assert len(loud), "the callee said nothing"
    return start_s + (loud[-1] + 1) * 0.02


async def place_and_wait(stack, attempt_id, script):
    run, _ = await place(stack, attempt_id, script)
    result = await run
    assert result.protocol_errors == []
    return result


# -- the campaign tools ----------------------------------------------------------------------------------

async def test_set_outcome_reports_a_valid_outcome_and_answers_an_invalid_one_with_an_error(stack, caller_en):
    aid = attempt(stack, "a6", "outcomes")
    script = [Say(caller_en, at_s=0.3, label="hello"),
              Say(caller_en, after_bot_done=True, pause_s=0.3, label="turn 1"),
              Say(caller_en, after_bot_done=True, pause_s=0.3, label="turn 2"),
              Hangup(after_bot_done=True, pause_s=0.5)]
    result = await place_and_wait(stack, aid, script)
    assert result.end_reason == "hangup"                       # the callee ended it: the call went on
    records = await records_of(stack)
    tools = [(r["name"], r["ok"]) for r in records if r["type"] == "tool"]
    assert tools == [("set_outcome", False), ("set_outcome", True)]
    error = next(r for r in records if r["type"] == "tool")["result"]["error"]
    assert "maybe_later" in error and "is not one of" in error
    offered = stack.emulator.sessions[0].received_of("session.update")[0]["session"]["tools"]
    outcome_tool = next(t["function"] for t in offered if t["function"]["name"] == "set_outcome")
    assert outcome_tool["parameters"]["properties"]["outcome"]["enum"] == list(OUTCOMES)
    assert "See you on Tuesday." in said(records)
    reports = [r for a, r in stack.campaigns.results if a == aid]
    assert reports[0] == {"call_id": records[0]["call_id"], "disposition": "confirmed",
                          "note": "Jane comes on Tuesday", "opted_out": False}
    assert reports[-1] == reports[0]                           # and again at the end, unchanged
    assert records[-1]["outcome"] == "completed"


@pytest.mark.parametrize("name", ["optout", "optout-chain"])
async def test_opt_out_is_reported_then_the_bot_says_goodbye_and_hangs_up(stack, caller_en, name):
    aid = attempt(stack, "a7", name)
    script = [Say(caller_en, at_s=0.3, label="hello"), Say(caller_en, after_bot_done=True, pause_s=0.3,
                                                             label="please stop calling"), Hangup(at_s=38)]
    run, call = await place(stack, aid, script)
    request = await stack.twilio.wait_for_request(lambda r: r.form.get("Status") == "completed", timeout=30)
    result = await run
    goodbye = OPT_OUT_GOODBYE["en"]
    assert result.protocol_errors == [] and result.end_reason in ("carrier_ended", "server_closed")
    last = result.segments[-1]
    assert last.ended_by == "drained" and last.played_ms >= 0.85 * len(goodbye) * 65
    assert request.at - result.t0 >= last.end_s - 0.001
    records = await records_of(stack)
    assert said(records)[-1] == goodbye
    assert [(r["name"], r["ok"]) for r in records if r["type"] == "tool"] == [("opt_out", True)]
    assert records[-1]["outcome"] == "bot_hung_up" and "opted out" in records[-1]["end_reason"]
    assert all(report["opted_out"] for a, report in stack.campaigns.results if a == aid)
    assert stack.campaigns.results[-1] == (aid, {"call_id": records[0]["call_id"], "disposition": None,
                                                 "note": None, "opted_out": True})
    if name == "optout-chain":
        chats = [r for r in stack.emulator.http_log if r.endpoint == "chat"]
        system = chats[0].body["messages"][0]
        assert system["role"] == "system" and "Jane" in system["content"] and "Tuesday" in system["content"]
        assert "opt_out" in [t["function"]["name"] for t in chats[0].body["tools"]]


# -- the stream of a placed call -------------------------------------------------------------------------

async def test_a_stream_naming_an_unknown_attempt_is_refused(stack, caller_en):
    try:
        result = await simulate_twilio_call(
            stack.url, to=CALLEE, from_=OUR_NUMBER, auth_token=AUTH_TOKEN, script=[Say(caller_en, at_s=0.3)],
            max_duration_s=10, custom_parameters={"From": OUR_NUMBER, "To": CALLEE, "attempt": "forged.token"})
    except StreamRefused as exc:
        pytest.fail(f"the upgrade itself is signed and accepted; the start is what is refused ({exc})")
    assert result.end_reason == "server_closed" and result.close_code == 1008
    assert result.segments == [] and not stack.services.calls
    assert not list(stack.settings.transcripts_dir.glob("*/*.jsonl"))


# -- the parts ---------------------------------------------------------------------------------------------

def test_personalised_fills_instructions_and_greeting_and_names_a_missing_variable(stack_free_persona):
    filled = personalised(stack_free_persona, VARIABLES)
    assert filled.greeting == "Hello Jane, this is Acme Dental about your visit on Tuesday."
    assert filled.instructions.startswith("You remind Jane of a dental visit on Tuesday.")
    assert stack_free_persona.greeting == GREETING          # the dialplan's persona is left as it was
    with pytest.raises(KeyError, match="day"):
        personalised(stack_free_persona, {"first_name": "Jane"})


def test_campaign_tools_are_offered_on_campaign_calls_only_and_their_names_are_reserved():
    from voicebot.config import ConfigError, Fields
    from voicebot.tools import CarrierAbilities, ToolSettings, offered, read_tools
    assert [s.name for s in offered(ToolSettings(hang_up=True), CarrierAbilities())] == ["hang_up"]
    names = [s.name for s in offered(ToolSettings(hang_up=True), CarrierAbilities(), ("confirmed",))]
    assert names == ["hang_up", "set_outcome", "opt_out"]
    assert [s.name for s in offered(ToolSettings(), CarrierAbilities(), ())] == ["opt_out"]
    hook = {"name": "opt_out", "description": "x", "url": "https://crm.example.com/x"}
    with pytest.raises(ConfigError, match="built-in tool"):
        read_tools(Fields("p.yaml", {"webhooks": [hook]}, "personas[0].tools"))


@pytest.fixture
def stack_free_persona(tmp_path):
    from voicebot.dialplan import load_dialplan
    (tmp_path / "campaign.yaml").write_text(PERSONAS, encoding="utf-8")
    return load_dialplan(tmp_path).named("reminders")
