"""Dialplan reload in a running server: a changed file is noticed and taken for new calls, while a call in progress
keeps the persona it started with; an invalid change is refused naming its file and field, and the dialplans in
use stay. SIGHUP under voicebot serve (and its workers): test_drain_serve.py."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import structlog

from voicebot.config import StepFunSettings
from voicebot.emulator.app import Emulator, start_emulator
from voicebot.server import DIALPLAN_WATCH, SERVICES
from voicebot.simulator.caller import Hangup
from voicebot.simulator.twilio import simulate_twilio_call

from conftest import AUTH_TOKEN, start_voice_server, until
from drain_checks import DRAIN_LINE, persona, post_voice_webhook
from test_drain import records_of, said

ONE = ("Hello from version one.", "Goodbye from version one.")
TWO = ("Hello from version two.", "Goodbye from version two.")
OTHER_LINE = "+15550100002"


def version(greeting_goodbye: tuple[str, str], extra: str = "", **options) -> str:
    greeting, goodbye = greeting_goodbye
    return persona("reload-en", greeting=greeting, goodbye=goodbye, extra="max_call_seconds: 6\n" + extra, **options)


@pytest.fixture
async def emulator():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    yield emulator
    await runner.cleanup()


@pytest.fixture
async def server(tmp_path, emulator):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "reload.yaml").write_text(version(ONE))
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator)
    try:
        yield settings, app, plans
    finally:
        await runner.cleanup()


def greeting_heard(result) -> bool:
    return bool(result.segments) and result.segments[0].ended_by == "drained" and result.protocol_errors == []


async def test_a_changed_file_applies_to_new_calls_and_the_call_in_progress_keeps_its_persona(server):
    settings, app, plans = server
    services = app[SERVICES]
    with structlog.testing.capture_logs() as logs:
        before = asyncio.create_task(simulate_twilio_call(settings.public_url, to=DRAIN_LINE, auth_token=AUTH_TOKEN,
                                                          max_duration_s=20, script=[Hangup(at_s=15)]))
        await until(lambda: services.calls, what="the first call to start")
        (plans / "reload.yaml").write_text(version(TWO))
        (plans / "other.yaml").write_text(persona("reload-other", number=OTHER_LINE, greeting="Other line.",
                                                  default=False))
        await until(lambda: services.dialplan.named("reload-other") is not None, timeout=5,
                    what="the change noticed (the folder is looked at every second)")
        after = await simulate_twilio_call(settings.public_url, to=DRAIN_LINE, auth_token=AUTH_TOKEN,
                                           max_duration_s=20, script=[Hangup(after_bot_done=True, pause_s=0.3)])
        other = await simulate_twilio_call(settings.public_url, to=OTHER_LINE, auth_token=AUTH_TOKEN,
                                           max_duration_s=20, script=[Hangup(after_bot_done=True, pause_s=0.3)])
        first = await before            # max_call_seconds 6: it ends with its persona's goodbye
    assert all(greeting_heard(r) for r in (first, after, other))
    # One reload, or two when the folder was looked at between the two writes.
    reloaded = [e for e in logs if e["event"] == "dialplans_reloaded"]
    assert {e["trigger"] for e in reloaded} == {"file change"}
    assert [sorted({name for e in reloaded for name in e[key]}) for key in ("added", "removed", "changed")] == \
        [["reload-other"], [], ["reload-en"]]
    records: dict = {}

    async def all_written() -> bool:
        records.update({r.carrier_call_id: r for r in await records_of(settings) if r.outcome is not None})
        return len(records) == 3
    await until(all_written, what="the three call records written")
    assert said(records[first.call_id]) == [("assistant", ONE[0]), ("assistant", ONE[1])]
    assert said(records[after.call_id])[0] == ("assistant", TWO[0])
    assert records[other.call_id].persona == "reload-other"


BAD_CHANGES = {
    "a field": ("reload.yaml", version(ONE).replace("language: en", "language: fr"), "reload.yaml", "language",
                "expected one of zh, en"),
    "YAML syntax": ("reload.yaml", version(ONE) + "numbers: [unclosed\n", "reload.yaml", "line ", "invalid YAML"),
    "a number claimed twice": ("second.yaml", persona("reload-two", default=False), "second.yaml", "numbers",
                               "claimed by persona"),
    "a second default": ("second.yaml", persona("reload-two", number=OTHER_LINE), "second.yaml", "default",
                         "only one default persona"),
}


@pytest.mark.parametrize("change", sorted(BAD_CHANGES))
async def test_an_invalid_change_is_refused_naming_file_and_field_and_the_old_dialplans_stay(server, change):
    settings, app, plans = server
    name, text, file, field, problem = BAD_CHANGES[change]
    services = app[SERVICES]
    in_use = list(services.dialplan.personas)
    with structlog.testing.capture_logs() as logs:
        (plans / name).write_text(text)
        await until(lambda: [e for e in logs if e["event"] == "dialplan_reload_rejected"], timeout=5,
                    what="the change noticed and refused")
        assert services.dialplan.personas == in_use
        status, twiml = await post_voice_webhook(settings.public_url, AUTH_TOKEN)   # still answered
        assert status == 200 and "<Stream " in twiml
        # Put right, it is taken.
        if name == "reload.yaml":
            (plans / name).write_text(version(TWO))
        else:
            (plans / name).unlink()
            (plans / "reload.yaml").write_text(version(TWO))
        await until(lambda: [e for e in logs if e["event"] == "dialplans_reloaded"], timeout=5,
                    what="the corrected change taken")
    # The last refusal is the change's (an earlier one may be of the file caught half written).
    rejected = [e for e in logs if e["event"] == "dialplan_reload_rejected"][-1]
    assert rejected["file"].endswith(file) and rejected["field"].startswith(field) and problem in rejected["problem"]
    assert rejected["log_level"] == "error"
    assert services.dialplan.named("reload-en").greeting == TWO[0]


async def test_a_reload_may_not_drop_a_persona_a_carrier_is_configured_to_answer_with(tmp_path, emulator):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "reload.yaml").write_text(version(ONE))
    (plans / "plivo.yaml").write_text(persona("plivo-line", number=OTHER_LINE, default=False))
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator, source=str(tmp_path / "config.yaml"),
                                                     carriers={"plivo": {"persona": "plivo-line"}})
    try:
        (plans / "plivo.yaml").unlink()
        with structlog.testing.capture_logs() as logs:
            assert await app[DIALPLAN_WATCH].reload("SIGHUP") is False
    finally:
        await runner.cleanup()
    (rejected,) = [e for e in logs if e["event"] == "dialplan_reload_rejected"]
    assert rejected["field"] == "carriers.plivo.persona" and "no persona named 'plivo-line'" in rejected["problem"]
    assert rejected["file"].endswith("config.yaml")
    assert app[SERVICES].dialplan.named("plivo-line") is not None


@pytest.mark.parametrize("strict", [False, True])
async def test_a_reload_checks_model_names_as_serve_does(tmp_path, emulator, strict):
    """An undocumented model name in a changed file: a warning naming file and field, the change taken; with
    stepfun.strict_models, refused like any invalid change and the dialplans in use stay."""
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "reload.yaml").write_text(version(ONE))
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator, stepfun=dataclasses.replace(
        StepFunSettings(base_url=emulator.base_url, api_key="test-key", connect_timeout_s=3.0), strict_models=strict))
    try:
        (plans / "reload.yaml").write_text(version(TWO, extra="realtime: {model: gpt-nonsense}\n"))
        with structlog.testing.capture_logs() as logs:
            taken = await app[DIALPLAN_WATCH].reload("SIGHUP")
    finally:
        await runner.cleanup()
    greeting = app[SERVICES].dialplan.named("reload-en").greeting
    if strict:
        assert taken is False and greeting == ONE[0]
        (rejected,) = [e for e in logs if e["event"] == "dialplan_reload_rejected"]
        assert rejected["file"].endswith("reload.yaml") and rejected["field"] == "realtime.model"
        assert "strict_models" in rejected["problem"]
        return
    assert taken is True and greeting == TWO[0]
    (warning,) = [e for e in logs if e["event"] == "stepfun_model_unknown"]
    assert warning["file"].endswith("reload.yaml") and warning["field"] == "realtime.model"
    assert warning["model"] == "gpt-nonsense" and "stepaudio-2.5-realtime" in warning["known"]
