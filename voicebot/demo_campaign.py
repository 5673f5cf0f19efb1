"""``voicebot demo --campaign`` (and the second part of ``voicebot demo``): the shipped example campaign, dialled
offline by the real server through Twilio's REST API faked on loopback.

Four contacts, four fates: a person who answers and confirms, a voicemail box, a busy line (retried once), a number
on the do-not-call list (never dialled). The report shows the dial requests as Twilio received them, the status and
answering-machine callbacks it sent back, the answered call's transcript, what the voicemail box recorded after its
beep, the campaign's status and its export."""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import yaml

from .audio import RATE
from .demo import fake_twilio_account, free_port, offline_settings, replace_persona, transcript_lines
from .simulator.caller import Hangup, Say
from .simulator.carrier_api.callees import Busy, Human, Voicemail, speech

EXAMPLES = Path(__file__).resolve().parent.parent / "dialplans"
CAMPAIGN = EXAMPLES / "campaigns" / "dental-reminders.yaml"

# The shipped example as it is, but for when and how often it calls: a demo runs at any hour and within a minute.
ALL_HOURS = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}
BUSY_RETRY_S = 3
CHANGES = {"window": ALL_HOURS, "retry": {"busy": {"retries": 1, "after": f"{BUSY_RETRY_S}s"}}}
WAIT_S = 60.0

# The emulated model follows such a line (a real model would confirm on its own). Persona texts are templates on
# campaign calls, so the JSON's braces are doubled; {appointment} is the contact's.
CONFIRM = ('On caller turn 1, say "Wonderful, you are confirmed for {appointment}. See you then!" and call '
           'set_outcome {{"outcome": "confirmed", "note": "will come"}}.')

# The shipped contacts (dialplans/campaigns/contacts.csv), by their E.164 numbers.
ANN, BEN, CHIE, DORA = "+12125550100", "+442079460958", "+81312345678", "+4930901820"


def callees() -> dict:
    """Who is at each of the example's numbers."""
    person = Human(script=(Say(speech("Hello? Who is this?"), at_s=0.3, label="hello"),
                           Say(speech("Yes, I will be there."), after_bot_done=True, pause_s=0.4, label="yes"),
                           Hangup(after_bot_done=True, pause_s=1.0)))
    return {ANN: person, BEN: Voicemail(), CHIE: Busy(), DORA: person}


ROLES = {ANN: "answers, says yes", BEN: "voicemail", CHIE: "busy", DORA: "on the do-not-call list"}


def demo_definition(example: dict, work: Path) -> Path:
    """The example's definition with the demo's window and retries, in ``work``, naming the example's contacts."""
    data = {**example, **CHANGES, "contacts": str(CAMPAIGN.parent / example["contacts"])}
    path = work / CAMPAIGN.name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def demo_dialplan(dialplan, persona_name: str):
    """The dialplan with the campaign's persona asked (as the emulated model understands) to confirm."""
    persona = dialplan.named(persona_name)
    replace_persona(dialplan, persona,
                    dataclasses.replace(persona, instructions=f"{persona.instructions.rstrip()}\n{CONFIRM}"))
    return dialplan


async def run_campaign_demo(config: str | None = None) -> int:
    from .campaigns import manage
    from .campaigns_cli import status_text
    from .config import load_settings
    from .dialplan import load_dialplan
    from .logs import configure_logging
    from .server import start_server
    from .simulator.carrier_api import FakeTwilioApi
    from .store import Store

    settings = load_settings(config)
    configure_logging(settings.log_format, "warning")
    port = free_port()
    example = yaml.safe_load(CAMPAIGN.read_text(encoding="utf-8"))
    twilio_api = FakeTwilioApi(*fake_twilio_account(), owned_numbers=example["from"])
    twilio_api.callees.update(callees())
    await twilio_api.start()
    settings = offline_settings(settings, port, twilio_api)
    definition = demo_definition(example, settings.transcripts_dir.parent)
    dialplan = demo_dialplan(load_dialplan(EXAMPLES), example["persona"])
    print(f"\nvoicebot demo --campaign: the example campaign {CAMPAIGN.relative_to(EXAMPLES.parent)}, its window "
          f"opened to every hour and busy lines\nretried once after {BUSY_RETRY_S} s, dialled by the server through "
          f"Twilio's REST API faked on loopback; persona {example['persona']!r}")
    runners, settings, _ = await start_server(settings, dialplan, host="127.0.0.1", port=port)
    store = await Store.open(settings.database_url)
    try:
        # What `voicebot dnc add`, `voicebot campaign create` and `voicebot campaign start` do.
        await manage.dnc_add(store, DORA, source="cli", note="asked not to be called")
        created = await manage.create(store, definition, None, dialplan)
        await manage.change_state(store, created.name, "start")
        print(f"campaign {created.name!r} created with {created.contacts} contacts and started; "
              f"{DORA} is on the do-not-call list")
        for number, role in ROLES.items():
            print(f"  {number:<15} {role}")
        print("dialling; the report follows once the campaign is done …", flush=True)
        done = await _finished(store, created.name, twilio_api)
    finally:
        await store.close()
        for runner in runners:
            await runner.cleanup()
        await twilio_api.close()

    store = await Store.open(settings.database_url)
    try:
        status = await manage.status(store, created.name)
        export, _ = await manage.export(store, created.name, "csv")
        rows = {row["phone"]: row for row in await store.export_rows(status["id"])}
    finally:
        await store.close()
    print("\n".join(_dials(twilio_api)))
    print(f"\nthe answered call ({ANN}), as the server wrote it:")
    print("\n".join(_transcript(settings.transcripts_dir, rows[ANN]["call_ids"])))
    if settings.stepfun.emulated:
        print("  (the emulated model reads a tool's result aloud; a real model answers in its own words)")
    print(f"\nthe voicemail ({BEN}):")
    print("\n".join(_voicemail(twilio_api, settings.transcripts_dir, rows[BEN]["call_ids"])))
    print("\n`voicebot campaign status`:")
    print(status_text(status))
    print("\n`voicebot campaign export --format csv`:")
    print(export, end="")
    return 0 if done else 1


async def _finished(store, name: str, fake) -> bool:
    """Wait for the campaign to be done and every dialled call's last callback answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while (await store.get_campaign(name)).state != "done":
        if loop.time() > deadline:
            print(f"the campaign was not done after {WAIT_S:.0f} s")
            return False
        await asyncio.sleep(0.2)
    for call in list(fake.dialled.values()):
        await fake.wait_ended(call.call_id, timeout=max(1.0, deadline - loop.time()))
    return True


def _fields(body: str) -> str:
    """A form as received: every field, in order, a repeated one's values joined with commas."""
    fields: dict[str, list[str]] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        fields.setdefault(key, []).append(value)
    return "  ".join(f"{key}={','.join(values)}" for key, values in fields.items())


def _dials(fake) -> list[str]:
    """Each dial request as Twilio's API received it, then the callbacks it sent about that call (times from the
    first dial request)."""
    requests = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/Calls.json")]
    if not requests:
        return ["\nTwilio's REST API received no dial request"]
    t0 = requests[0].at
    placed = {number: [c for c in fake.dialled.values() if c.to == number] for number in ROLES}
    lines = [f"\nTwilio's REST API received {len(requests)} dial requests (never one for {DORA}):"]
    for request in requests:
        to = dict(parse_qsl(request.body)).get("To", "")
        call = placed.get(to, []).pop(0) if placed.get(to) else None
        lines.append(f"{request.at - t0:6.2f} s  POST {request.path} → {request.status}"
                     + (f" {call.call_id}" if call else ""))
        lines.extend(textwrap.wrap(_fields(request.body), 116, initial_indent=" " * 10, subsequent_indent=" " * 10,
                                   break_long_words=False, break_on_hyphens=False))
        if call is None:
            continue
        lines.append(f"{'':10}callbacks Twilio sent to our server ({ROLES.get(to, '')}):")
        for callback in call.callbacks:
            form = dict(parse_qsl(callback.body))
            what = (f"AnsweredBy={form['AnsweredBy']} (answering-machine detection)" if "AnsweredBy" in form else
                    f"CallStatus={form.get('CallStatus')} SequenceNumber={form.get('SequenceNumber')}"
                    + (f" CallDuration={form['CallDuration']}" if "CallDuration" in form else "")
                    + (f" SipResponseCode={form['SipResponseCode']}" if "SipResponseCode" in form else ""))
            lines.append(f"{callback.at - t0:16.2f} s  {what}  → {callback.status or callback.error}")
    return lines


def _transcript_file(transcripts_dir: Path, call_ids: str) -> Path | None:
    ids = [c for c in call_ids.split(";") if c]
    found = sorted(transcripts_dir.glob(f"*/{ids[-1]}.jsonl")) if ids else []
    return found[0] if found else None


def _transcript(transcripts_dir: Path, call_ids: str) -> list[str]:
    path = _transcript_file(transcripts_dir, call_ids)
    return transcript_lines(path) if path is not None else ["(no transcript: no call record for this contact)"]


def _voicemail(fake, transcripts_dir: Path, call_ids: str) -> list[str]:
    """What the box recorded after its beep: when the bot's voice started and ended, and the words said."""
    call = next((c for c in fake.dialled.values() if c.to == BEN and c.after_beep is not None), None)
    if call is None:
        return ["(the voicemail box was not reached)"]
    beep_end, after = call.after_beep
    frames = after[: len(after) // 160 * 160].reshape(-1, 160).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames ** 2).mean(axis=1)) > 300)
    before = call.result.heard[: int(beep_end * RATE)].astype(np.float64)
    lines = [f"  before the beep (greeting {beep_end:.1f} s): the bot was silent "
             f"(level {np.sqrt((before ** 2).mean()) if len(before) else 0:.0f} RMS)"]
    if len(loud):
        start, end = loud[0] * 0.02, (loud[-1] + 1) * 0.02
        lines.append(f"  after the beep the box recorded the bot from {start:.1f} s to {end:.1f} s "
                     f"({end - start:.1f} s of message), then the call ended")
    else:
        lines.append("  after the beep the box recorded nothing")
    path = _transcript_file(transcripts_dir, call_ids)
    if path is not None:
        lines += [line for line in transcript_lines(path) if "assistant:" in line or "call end" in line
                  or "verdict" in line]
    return lines
