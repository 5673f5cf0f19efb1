"""``voicebot demo --web``: talk to the personas from the browser, offline, in one command.

The server runs on loopback with the embedded StepFun emulator (whatever key the environment holds: the demo
never reaches StepFun), its files in a new temporary folder, and a console admin token made for this run only.
It prints a sign-in link carrying the token in the URL fragment, which the browser never sends to the server
nor writes to its logs; the login page's script reads it from there and signs in. Ctrl-C stops it."""

from __future__ import annotations

import dataclasses
import os
import secrets
import tempfile
from pathlib import Path

from .api.auth import TOKEN_ENV
from .config import DEFAULT_STEPFUN_BASE_URL, Settings


def offline_web_settings(settings: Settings, port: int) -> Settings:
    """``settings`` for the web demo: loopback ``port``, the embedded emulator, files in a new temporary folder."""
    work = Path(tempfile.mkdtemp(prefix="voicebot-web-demo-"))
    return dataclasses.replace(
        settings, host="127.0.0.1", port=port, workers=1, public_url=f"http://127.0.0.1:{port}",
        transcripts_dir=work / "transcripts", recordings_dir=work / "recordings",
        database_url=f"sqlite:///{work / 'voicebot.db'}",
        stepfun=dataclasses.replace(settings.stepfun, api_key=None, base_url=DEFAULT_STEPFUN_BASE_URL))


def sign_in_link(url: str, token: str) -> str:
    return f"{url}/console/login#token={token}"


async def run_web_demo(config: str | None = None, port: int = 0) -> int:
    from .config import load_settings
    from .demo import free_port
    from .dialplan import load_dialplan
    from .logs import configure_logging
    from .server import run_until_stopped, start_server

    settings = load_settings(config)
    configure_logging(settings.log_format, "warning")
    settings = offline_web_settings(settings, port or free_port())
    token = secrets.token_urlsafe(24)
    os.environ[TOKEN_ENV] = token        # read by the console and the admin API of this process only
    dialplan = load_dialplan(settings.dialplans_dir)
    runners, settings, url = await start_server(settings, dialplan)
    names = ", ".join(p.name for p in dialplan.personas)
    print(f"voicebot demo --web: the server is on {url} with the embedded StepFun emulator (offline); "
          f"personas: {names}\n"
          f"files (call records, transcripts) in {settings.transcripts_dir.parent}\n\n"
          f"Open this link to sign in to the console and talk to a persona (a new token each run):\n\n"
          f"    {sign_in_link(url, token)}\n\n"
          "Ctrl-C stops the server.", flush=True)
    await run_until_stopped(runners)
    return 0
