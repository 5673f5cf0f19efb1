"""What the campaign end-to-end tests share: a persona for campaign calls, campaign YAML + contacts CSV written to a
temp dir, creating and starting a campaign in a server's database, and reading what happened."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from voicebot.campaigns.contacts import read_contacts
from voicebot.campaigns.definition import load_campaign, required_variables
from voicebot.dialplan import load_dialplan

ACCOUNT_SID = "AC" + "5" * 32
OUR_NUMBERS = ("+15550002000", "+15550002001")
CONFIRM_LINE = "Wonderful, you are confirmed. See you then."
OPT_OUT_LINE = "Understood, we will not call you again. Goodbye."


def reminder_persona(name: str = "reminders", *, directive: str, number: str = "+15550002999",
                     engine: str = "realtime") -> str:
    return f"""
  - name: {name}
    numbers: ["{number}"]
    engine: {engine}
    language: en
    voice: lively-girl
    greeting: Hi {{first_name}}, this is Acme Dental about your appointment on {{appointment}}.
    instructions: |
      You remind {{first_name}} of a dental appointment on {{appointment}}.
      {directive}
    goodbye: Goodbye.
"""


def write_plans(tmp_path: Path, *personas: str) -> Path:
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "campaign.yaml").write_text("personas:" + "".join(personas))
    return plans


def write_campaign(tmp_path: Path, name: str, contacts: list[dict], *, persona: str = "reminders",
                   carrier: str = "twilio", extra: str = "", concurrency: int = 2, rate: float = 2.0,
                   voicemail: str | None = 'voicemail: {action: leave_message, message: "Hi {first_name}, this is '
                                           'Acme Dental calling about {appointment}. Please call us back."}',
                   retry: str = "retry: {busy: {retries: 1, after: 1s}, failed: {retries: 1, after: 1s}}",
                   window: str = 'window: {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "24:00"}') -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir(exist_ok=True)
    columns = list(dict.fromkeys(key for row in contacts for key in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in contacts]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    path = folder / f"{name}.yaml"
    path.write_text(f"""\
name: {name}
persona: {persona}
carrier: {carrier}
from: {list(OUR_NUMBERS)}
contacts: {name}.csv
default_region: US
default_timezone: America/New_York
max_concurrent_calls: {concurrency}
calls_per_second: {rate}
ring_timeout: 5s
{window}
{retry}
{voicemail or ''}
outcomes: [confirmed, reschedule, not_interested, wrong_number]
{extra}
""")
    return path


async def create_and_start(store, path: Path, plans: Path, *, now: datetime | None = None) -> str:
    """The campaign in ``path`` created and running; its id."""
    spec = load_campaign(path)
    persona = load_dialplan(plans).named(spec.persona)
    contacts = read_contacts(spec.contacts, default_region=spec.default_region,
                             default_timezone=spec.default_timezone, required=required_variables(spec, persona))
    now = now or datetime.now(timezone.utc)
    campaign_id = await store.create_campaign(spec, contacts.contacts, now=now)
    await store.set_campaign_state(spec.name, "running", now=now)
    return campaign_id


def dials_to(fake, number: str) -> int:
    return sum(1 for call in fake.dialled.values() if call.to == number)


# -- servers in their own processes (restart and multi-instance tests) -----------------------------------------

REPO = Path(__file__).resolve().parent.parent


def server_config(tmp_path: Path, name: str, port: int, *, plans: Path, database_url: str, twilio_api: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(f"""
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
twilio: {{api_base_url: "{twilio_api}"}}
dialplans: {plans}
transcripts_dir: {folder / "transcripts"}
recordings_dir: {folder / "recordings"}
database: {{url: "{database_url}"}}
logging: {{format: json, level: info}}
""")
    return config


def serve_process(config: Path, auth_token: str, **env_extra: str) -> subprocess.Popen:
    """``voicebot serve`` on ``config`` in a process of its own, logging to server.log beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("STEP_API_KEY", "VOICEBOT_STREAM_SECRET")}
    env.update(TWILIO_AUTH_TOKEN=auth_token, TWILIO_ACCOUNT_SID=ACCOUNT_SID, **env_extra)
    log = open(config.parent / "server.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    proc.log_path = config.parent / "server.log"
    return proc


async def wait_up(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.log_path.read_text()[-3000:]
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the server at {url} did not come up within {timeout_s} s")


def stop_process(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
