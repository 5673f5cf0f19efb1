"""The softphone page in a real headless Chromium (Debian's chromium, driven by Playwright) against the real server
and the StepFun emulator: a WAV made of the speech fixtures is the microphone, the page's worklet plays the bot,
and what the page played is compared with what the server and the model were told."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from playwright import async_api as playwright_api

from voicebot.audio.resample import Resampler
from voicebot.audio.wav import read_wav_8k, write_wav
from voicebot.server import SERVICES

from browser import chromium
from conftest import FIXTURES, running_stack, until

TOKEN = "test-console-token-b7a1"
GREETING = "Hi, Acme here."
PERSONAS = f"""\
personas:
  - name: softphone-en
    default: true
    language: en
    voice: lively-girl
    instructions: You are a test assistant. Keep answers short.
    greeting: {GREETING}
    realtime:
      turn_detection: {{silence_duration_ms: 500, prefix_padding_ms: 300, energy_awakeness_threshold: 2500}}
    barge_in: {{enabled: true, min_speech_ms: 200}}
  - name: softphone-chain
    numbers: ["+15550000006"]
    engine: chain
    language: en
    voice: lively-girl
    instructions: Chain.
    greeting: Hello from the chain.
"""
# The microphone, second by second: quiet while the greeting plays, the question, quiet while the reply starts,
# then talking over the reply ~1.2 s into it (the reply echoes the question, so it runs ~3.4 s), then quiet.
QUIET_FOR_GREETING_S = 3.0     # the greeting (~0.9 s) starts well within a second of the page's start
INTO_THE_REPLY_S = 2.2     # from the end of the question to the barge-in: turn end (0.5 s) + latency + ~1.2 s heard
MIC_RATE = 48000


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 8000), np.int16)


@pytest.fixture
def microphone_wav(tmp_path) -> Path:
    question, interrupt = read_wav_8k(FIXTURES / "caller_en.wav"), read_wav_8k(FIXTURES / "caller_interrupt.wav")
    speech = np.concatenate([silence(QUIET_FOR_GREETING_S), question, silence(INTO_THE_REPLY_S), interrupt,
                             silence(6)])
    path = tmp_path / "microphone.wav"
    write_wav(path, Resampler(8000, MIC_RATE).process(speech), MIC_RATE)   # Chromium's capture runs at 48 kHz
    return path


@pytest.fixture
async def phone_server(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    async with running_stack(tmp_path, personas=PERSONAS) as running:
        yield running.url, running.emulator, running.app


@pytest.fixture
async def browser(microphone_wav):
    async with chromium(microphone_wav) as launched:
        yield launched


async def sign_in(page, base: str, next_path: str) -> None:
    await page.goto(f"{base}{next_path}")
    assert page.url.startswith(f"{base}/console/login"), page.url        # the token comes first
    await page.fill("input[name=token]", TOKEN)
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(f"{base}{next_path}")


async def phone_state(page) -> dict:
    return await page.evaluate("() => JSON.parse(JSON.stringify(window.voicebotPhone))")


async def wait_for(page, condition: str, timeout_s: float, what: str) -> dict:
    try:
        await page.wait_for_function(f"() => {condition}", timeout=timeout_s * 1000)
    except playwright_api.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(await phone_state(page))[:2000]}") from None
    return await phone_state(page)


@pytest.mark.parametrize("device_rate", [False, True], ids=["context_at_16k", "context_at_device_rate"])
async def test_a_call_from_the_page(phone_server, browser, tmp_path, device_rate):
    """``device_rate``: the page's audio runs at the device's rate and the worklet converts, as in a browser
    that cannot take the microphone into a 16 kHz AudioContext."""
    base, emulator, app = phone_server
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await sign_in(page, base, "/console/phone?persona=softphone-en&engine=realtime&autostart=1"
                  + "&devicerate=1" * device_rate)

    # The greeting plays: the page received it and its worklet played it, with marks echoed as it went.
    state = await wait_for(page, "window.voicebotPhone.segments.length >= 1", 10, "the greeting to play")
    greeting = state["segments"][0]
    assert (state["contextRate"] != 16000) == device_rate, state["contextRate"]
    assert greeting["endedBy"] == "drained" and greeting["playedMs"] >= 0.9 * len(GREETING) * 65
    assert state["receivedSamples"] / 16 >= greeting["playedMs"] - 1 and state["marksEchoed"] >= 3   # ms
    await page.screenshot(path=str(tmp_path / f"phone-greeting-{state['contextRate']}.png"), full_page=True)

    # The microphone's question reaches the model, which replies; the microphone talks over the reply.
    state = await wait_for(page, "window.voicebotPhone.clears >= 1 && window.voicebotPhone.segments.length >= 2",
                           15, "the barge-in")
    session = emulator.sessions[0]
    started = session.sent_of("input_audio_buffer.speech_started")[0]["audio_start_ms"]
    stopped = session.sent_of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"]
    assert 3.0 < (stopped - started) / 1000 < 4.2          # the whole question (3.4 s of speech) was heard
    assert state["maxLevel"] > 0.03                        # the meter moved with it (speech at -20 dBFS RMS)
    cut = state["segments"][1]
    assert cut["endedBy"] == "clear" and cut["playedMs"] > 500
    (truncate,) = session.received_of("conversation.item.truncate")
    assert abs(truncate["audio_end_ms"] - cut["playedMs"]) <= 40, (truncate, cut)

    # Both sides in the transcript, the barge-in and the reply's latency among the events, as they happened.
    await page.wait_for_selector("#transcript li.you")
    await page.wait_for_selector("#events li.barge")
    you = await page.locator("#transcript li.you").all_inner_texts()
    bot = await page.locator("#transcript li.bot").all_inner_texts()
    assert bot[0] == f"bot: {GREETING}" and you[0].startswith("you: ") and len(bot) >= 2
    assert await page.locator("#events li.latency").count() >= 1
    barge = (await page.locator("#events li.barge").all_inner_texts())[0]
    assert f"{truncate['audio_end_ms']} of" in barge
    # The short greeting stays on one line (another page's transcript style once squeezed every line into a
    # column a word wide): the rendered text's line boxes, counted by their distinct tops.
    greeting_lines = await page.eval_on_selector("#transcript li.bot", """li => {
        const range = document.createRange(); range.selectNodeContents(li);
        return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size; }""")
    assert greeting_lines == 1, greeting_lines
    await page.screenshot(path=str(tmp_path / f"phone-call-{state['contextRate']}.png"), full_page=True)

    # Hang up: the call ends on the server and leaves its record.
    call_id = state["callId"]
    await page.click("#hangup")
    await until(lambda: not app[SERVICES].calls, timeout=5, what="the call to end")
    state = await phone_state(page)
    assert state["status"] == "ended" and await page.locator("#start").is_enabled()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.get(f"{base}/api/calls/{call_id}") as resp:
            assert resp.status == 200
            record = await resp.json()
    assert record["carrier"] == "browser" and record["persona"] == "softphone-en"
    assert record["barge_ins"] == 1 and record["user_turns"] >= 1 and record["outcome"] in ("completed",
                                                                                             "caller_hung_up")
    await page.click("#status a.record-link")                         # the page leads to that record
    await page.wait_for_url(f"{base}/console/records/{call_id}")
    assert call_id in await page.title()
    assert errors == []


async def test_the_chain_at_24k_and_a_link_to_an_unknown_persona(phone_server, browser):
    base, emulator, app = phone_server
    page = await browser.new_page()
    await sign_in(page, base, "/console/phone?persona=softphone-chain&engine=chain&rate=24000&autostart=1")
    state = await wait_for(page, "window.voicebotPhone.segments.length >= 1", 10, "the chain's greeting")
    assert state["rate"] == 24000 and await page.evaluate("() => document.querySelector('select[name=rate]').value") \
        == "24000"
    greeting = state["segments"][0]
    assert greeting["playedMs"] > 1000 and state["receivedSamples"] >= greeting["playedMs"] * 24
    assert state["events"][0]["engine"] == "chain" and emulator.sessions == []     # no realtime session
    await page.click("#hangup")
    await until(lambda: not app[SERVICES].calls, timeout=5, what="the call to end")

    # A link naming a persona this server does not have says so, and calls nobody else instead.
    await page.goto(f"{base}/console/phone?persona=nobody&autostart=1")
    assert (await page.inner_text("#problem")).startswith("No persona named 'nobody' here (known: softphone-en")
    await page.wait_for_timeout(500)
    assert (await phone_state(page))["status"] == "idle" and not app[SERVICES].calls


async def test_the_token_is_required(phone_server, browser, tmp_path):
    base, emulator, app = phone_server
    page = await browser.new_page()
    await page.goto(f"{base}/console/phone?autostart=1")
    assert "/console/login" in page.url and await page.locator("input[name=token]").count() == 1
    # A socket opened from a page without the cookie is refused before any audio flows.
    closed = await page.evaluate("""() => new Promise((done) => {
        const ws = new WebSocket(location.origin.replace('http', 'ws') + '/console/phone/stream');
        ws.onopen = () => done('open');
        ws.onclose = (event) => done('closed ' + event.code);
    })""")
    assert closed == "closed 1006"          # the upgrade was answered 401
    await page.screenshot(path=str(tmp_path / "phone-login.png"), full_page=True)
    assert emulator.sessions == []
