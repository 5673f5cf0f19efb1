"""One headless Chromium per test module for the console pages' tests (Debian's package, as tests/browser.py
finds it), driven by Playwright's synchronous API in one thread of its own, so that the test's event loop -- which
serves the pages -- stays free while the browser waits: ``await browser.run(fn, page, ...)`` runs ``fn`` there.
Each test opens pages in a fresh context (its own cookies). tests/browser.py is the softphone's: a browser per
test, with a WAV as its microphone."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from voicebot.console import auth

from browser import CHROMIUM

ARGS = ["--autoplay-policy=no-user-gesture-required",   # the recording plays without a click
        "--disable-dev-shm-usage"]                      # containers' /dev/shm is often too small for Chromium


class Browser:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._playwright = self._browser = None

    def start(self) -> None:
        self._thread.submit(self._start).result()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)

    def stop(self) -> None:
        def stop():
            self._browser.close()
            self._playwright.stop()
        self._thread.submit(stop).result()
        self._thread.shutdown()

    async def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` in the browser's thread; its result, or what it raised."""
        return await asyncio.get_running_loop().run_in_executor(self._thread,
                                                                functools.partial(fn, *args, **kwargs))

    async def page(self, base_url: str, *, token: str | None):
        """A page in a fresh context at ``base_url``; signed in to the console when ``token`` is given."""
        def open_page():
            context = self._browser.new_context(base_url=base_url, accept_downloads=True)
            context.set_default_timeout(10_000)
            if token is not None:
                context.add_cookies([{"name": auth.COOKIE, "value": auth.session_value(token), "url": base_url,
                                      "httpOnly": True, "sameSite": "Strict"}])
            return watched(context.new_page())
        return await self.run(open_page)

    async def close(self, page) -> None:
        await self.run(page.context.close)


def watched(page):
    """The page, with the errors its scripts log or throw collected in ``page.console_errors``."""
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and not message.location.get(
        "url", "").endswith("/favicon.ico") and page.console_errors.append(
        f"{message.text} ({message.location.get('url')})"))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    return page


def wait_until(page, expression: str, *, timeout: float = 5.0, what: str | None = None):
    """Poll ``expression`` (a JavaScript function) in the page until it returns something truthy; that value.
    (Playwright's wait_for_function evaluates a string with eval, which the console's CSP rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or expression}")
        page.wait_for_timeout(20)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    chromium = Browser()
    chromium.start()
    yield chromium
    chromium.stop()
