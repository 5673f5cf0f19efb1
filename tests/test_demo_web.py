"""``voicebot demo --web``: two commands from a checkout to talking with a persona in the browser, offline."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from voicebot.simulator.browser import simulate_call
from voicebot.simulator.caller import Hangup, StreamRefused

from browser import chromium

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(http://127\.0\.0\.1:(\d+))/console/login#token=([A-Za-z0-9_-]{20,})")


async def test_prints_a_sign_in_link_that_signs_in_and_calls_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("STEP_API_KEY", "VOICEBOT_ADMIN_TOKEN")}
    env["STEP_API_KEY"] = "a-real-looking-key-the-demo-must-not-use"       # offline whatever the environment holds
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voicebot.cli", "demo", "--web", cwd=REPO,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        printed = ""
        while (match := LINK.search(printed)) is None:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"exited without a link: {printed}{(await proc.stderr.read()).decode()}"
            printed += line.decode()
        base, token = match.group(1), match.group(3)
        assert "embedded StepFun emulator" in printed

        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(match.group(0))
            await page.wait_for_url(f"{base}/console/phone")          # login.js read the fragment and signed in
            personas = await page.locator("select[name=persona] option").all_inner_texts()
            assert any(p.startswith("acme-support-en") for p in personas), personas
            await page.screenshot(path=str(tmp_path / "demo-web-phone.png"), full_page=True)

        # The softphone socket answers with a persona's greeting, on the emulator (never the key's StepFun).
        result = await simulate_call(base, token=token, persona="acme-support-en", max_duration_s=8,
                                     script=[Hangup(at_s=4)])
        assert result.protocol_errors == [] and result.segments and result.segments[0].played_ms > 1000
        with pytest.raises(StreamRefused):
            await simulate_call(base, token="not-the-token", max_duration_s=3, script=[Hangup(at_s=1)])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
