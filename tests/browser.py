"""Debian's headless chromium driven by Playwright for the console's browser tests (never Playwright's own browser
download: .ci/run installs the distribution's package)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from playwright import async_api as playwright_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.asynccontextmanager
async def chromium(microphone: Path | None = None):
    """A headless browser that grants the microphone without asking and plays audio without a click; with
    ``microphone``, that WAV is what the microphone hears (once, then silence), else Chromium's fake beeps."""
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-dev-shm-usage"]      # containers' /dev/shm is often 64 MB: too small for Chromium
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()
