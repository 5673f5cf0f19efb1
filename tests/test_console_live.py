"""The console's live calls: the live feed (bounded per listener, a listener that falls behind dropped, never
waited for), the event streams over real HTTP while a simulated Twilio call talks to the real server and the
emulator, and the pages in a real headless Chromium following a call with a barge-in from its start to its end
-- what they show matches the call record; every page and stream refused without the sign-in."""

from __future__ import annotations
import asyncio
import json
import re
import time
from urllib.parse import unquote

import aiohttp
import pytest

from voicebot.api import DATABASE
from voicebot.console import auth
from voicebot.livefeed import LiveFeed
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import read_transcript

from conftest import AUTH_TOKEN, EN, until
from console_browser import browser, wait_until, watched  # noqa: F401 (fixture)

TOKEN = "console-token-11fe7a"


@pytest.fixture
def signed_in(monkeypatch):
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    return {"Cookie": f"{auth.COOKIE}={auth.session_value(TOKEN)}"}


# -- the feed ---------------------------------------------------------------------------------------------------

async def test_a_listener_gets_its_calls_records_and_one_that_falls_behind_is_dropped_not_waited_for():
    feed = LiveFeed(queue_lines=8)
    assert feed.listeners == 0
    feed.publish("a", {"type": "turn"})                      # nobody listens: nothing kept
    one, every, stalled = feed.listen("a"), feed.listen(None), feed.listen(None)
    for n in range(6):
        feed.publish("a" if n % 2 == 0 else "b", {"type": "turn", "n": n})
    assert [await one.next() for _ in range(3)] == [("a", {"type": "turn", "n": n}) for n in (0, 2, 4)]
    assert [(await every.next())[1]["n"] for _ in range(6)] == list(range(6))
    started = time.perf_counter()
    for n in range(10_000):                                    # stalled never reads: dropped at its 9th record
        feed.publish("a", {"type": "turn", "n": n})
        if n % 4 == 0:
            while not every._queue.empty():
                every._queue.get_nowait()                      # every keeps up
            while not one._queue.empty():
                one._queue.get_nowait()
    per_record_us = (time.perf_counter() - started) / 10_000 * 1e6
    assert stalled.dropped and await stalled.next() is None and feed.dropped == 1
    assert not one.dropped and not every.dropped and feed.listeners == 2
    assert per_record_us < 50, per_record_us                   # about 1 µs a record and listener here
    feed.close()                                               # the server stopping: every stream ends
    assert await one.next() is None and await every.next() is None and feed.listeners == 0


# -- over HTTP --------------------------------------------------------------------------------------------------

async def test_every_live_page_and_stream_needs_the_sign_in(stack, signed_in):
    async with aiohttp.ClientSession() as http:
        for path in ("/console/calls", "/console/calls/0123456789abcdef"):
            async with http.get(stack.url + path, allow_redirects=False) as resp:
                assert resp.status == 303 and unquote(resp.headers["Location"]) == f"/console/login?next={path}"
        for path in ("/console/calls/events", "/console/calls/0123456789abcdef/events"):
            async with http.get(stack.url + path) as resp:
                assert resp.status == 401 and "sign in" in (await resp.json())["error"]
        async with http.get(stack.url + "/console/calls/0123456789abcdef", headers=signed_in) as resp:
            assert resp.status == 404
        async with http.get(stack.url + "/console/calls/0123456789abcdef/events", headers=signed_in) as resp:
            assert resp.status == 204                          # an EventSource stops asking


async def events_of(resp, *, until_type: str | None = None, count: int | None = None) -> list[tuple[str, dict]]:
    """Server-sent events read off the response: (event name, data)."""
    found, name, data = [], "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("retry: "):
            assert line == "retry: 1000"
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            found.append((name, json.loads("\n".join(data))))
            name, data = "message", []
            last = found[-1][1]
            if until_type and (last.get("type") == until_type or last.get("event", {}).get("type") == until_type):
                break
            if count is not None and len(found) >= count:
                break
    return found


async def test_the_streams_carry_a_real_calls_lines_as_its_transcript_file_has_them(stack, signed_in,
                                                                                     caller_interrupt):
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(stack.url + "/console/calls/events", headers=signed_in) as every:
            assert every.headers["Content-Type"] == "text/event-stream"
            [(name, snapshot)] = await events_of(every, count=1)
            assert name == "snapshot" and snapshot["calls"] == [] and abs(snapshot["now"] - time.time()) < 5
            call = asyncio.create_task(simulate_twilio_call(
                stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
                script=[Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                        Hangup(after_bot_done=True, pause_s=0.3)]))
            [(_, first)] = await events_of(every, count=1)
            assert first["event"]["type"] == "call_start" and first["event"]["persona"] == "test-en"
            call_id = first["call_id"]
            async with http.get(f"{stack.url}/console/calls/{call_id}/events", headers=signed_in) as one:
                one_call = await events_of(one, until_type="call_end")
            on_list = [first] + [data for _, data in await events_of(every, until_type="call_end")]
        result = await call
    assert result.protocol_errors == [] and result.clears
    await stack.idle()
    lines = read_transcript(next(stack.transcripts.glob(f"*/{call_id}.jsonl")))
    # The call's own stream: a snapshot of what happened before it opened, then every later line, exactly.
    (name, snapshot), *live = one_call
    assert name == "snapshot" and snapshot["call"]["call_id"] == call_id and snapshot["call"]["carrier"] == "twilio"
    assert all(name == "message" for name, _ in live)
    live_lines = [data for _, data in live]
    assert live_lines == lines[len(lines) - len(live_lines):]
    earlier = [line for line in lines[:len(lines) - len(live_lines)] if line["type"] in ("turn", "barge_in")]
    assert [(e["type"], e.get("text")) for e in snapshot["events"] if e["type"] in ("turn", "barge_in")] == \
        [(e["type"], e.get("text")) for e in earlier]
    assert {"barge_in", "turn", "call_end"} <= {line["type"] for line in lines}
    # The list's stream: the lines that make the list, each with its call.
    assert [d["event"] for d in on_list] == [line for line in lines if line["type"] in
                                              ("call_start", "call_end", "turn", "turn_cut", "engine_switch")]
    assert {d["call_id"] for d in on_list} == {call_id}
    feed = stack.app[SERVICES].live
    await until(lambda: feed.listeners == 0, timeout=3, what="both streams' listeners to go")


async def test_a_stream_that_falls_behind_is_told_so_and_ended(stack, signed_in):
    feed = stack.app[SERVICES].live
    feed.queue_lines = 2
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url + "/console/calls/events", headers=signed_in) as resp:
            assert (await events_of(resp, count=1))[0][0] == "snapshot"
            await until(lambda: feed.listeners == 1, what="the stream's listener")
            for n in range(5):                   # faster than the stream takes them: in one step of the loop
                feed.publish("0123456789abcdef", {"type": "turn", "n": n})
            events = await events_of(resp)       # to the end of the stream
    assert events == [("dropped", {})] and feed.dropped == 1 and feed.listeners == 0


async def test_a_new_admin_token_ends_the_open_streams(stack, signed_in, monkeypatch):
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url + "/console/calls/events", headers=signed_in) as resp:
            assert (await events_of(resp, count=1))[0][0] == "snapshot"
            monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", "rotated-" + TOKEN)
            started = time.monotonic()
            assert await asyncio.wait_for(events_of(resp), 5) == []       # the stream ends, nothing more said
    assert time.monotonic() - started < 4          # checked every second; else it would go on
    await until(lambda: stack.app[SERVICES].live.listeners == 0, timeout=2, what="the listener to go")


async def test_a_stopping_server_ends_the_open_streams_at_once(tmp_path, signed_in):
    from voicebot.emulator.app import Emulator, start_emulator

    from conftest import PERSONAS, start_voice_server

    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator())
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    runner, settings, _app = await start_voice_server(tmp_path, plans, emulator)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(settings.public_url + "/console/calls/events", headers=signed_in) as resp:
                assert (await events_of(resp, count=1))[0][0] == "snapshot"
                started = time.monotonic()
                await runner.cleanup()            # aiohttp would wait 60 s for a handler still streaming
                assert time.monotonic() - started < 5
                assert await asyncio.wait_for(events_of(resp), 5) == []
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()


async def test_listeners_that_never_read_do_not_hold_up_a_call_whose_live_page_then_leads_to_its_record(stack, signed_in):
    feed = stack.app[SERVICES].live
    feed.queue_lines = 2           # a greeting-only call writes 3 records: start, the greeting, end
    stalled = [feed.listen(None) for _ in range(3)]
    result = await simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
                                        script=[Hangup(after_bot_done=True, pause_s=0.3)])
    assert result.protocol_errors == [] and result.media_received
    await stack.idle()
    assert all(listener.dropped for listener in stalled) and feed.dropped == 3
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 1.0
    # Over, the call's live page leads to its record.
    db = stack.app[DATABASE]
    await db.records.idle()
    [call], _ = await db.store.list_calls()
    assert call.outcome == "completed"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.url}/console/calls/{call.id}", headers=signed_in,
                            allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"/console/records/{call.id}"


# -- in the browser ---------------------------------------------------------------------------------------------

def open_live_list(page) -> int:
    page.goto("/console/calls")
    wait_until(page, "() => document.getElementById('live-state').dataset.state === 'open'", what="the stream")
    return page.locator("#live-calls tr").count()


def follow_a_call(page, shots) -> dict:
    seen = {}
    row = page.wait_for_selector("#live-calls tr", timeout=10_000)
    call_id = seen["call_id"] = row.get_attribute("data-id")
    seen["row"] = page.locator("#live-calls tr").first.locator("td").all_inner_texts()
    seen["no_calls_hidden"] = page.locator("#no-live-calls").is_hidden()
    call_page = watched(page.context.new_page())
    call_page.goto(f"/console/calls/{call_id}")
    wait_until(call_page, "() => document.querySelector('#live-transcript li.barge_in')", timeout=10,
               what="the barge-in on the call's page")
    seen["last_turn"] = wait_until(page, "() => document.querySelector('#live-calls td.last-turn')?.textContent",
                                   timeout=10, what="a turn as the list's last turn")
    call_page.screenshot(path=str(shots / "live-call.png"), full_page=True)
    page.screenshot(path=str(shots / "live-calls.png"), full_page=True)
    wait_until(call_page, "() => document.getElementById('call-state').textContent.startsWith('ended')",
               timeout=15, what="the call's end on its page")
    seen["call_state"] = call_page.locator("#call-state").inner_text()
    seen["turns"] = call_page.locator("#live-transcript li.turn .said").all_inner_texts()
    seen["roles"] = call_page.locator("#live-transcript li.turn .who").all_inner_texts()
    seen["record_link"] = call_page.locator("#record-link").is_visible()
    wait_until(page, f"() => document.querySelector('#ended-calls li[data-id=\"{call_id}\"]')", timeout=5,
               what="the call among the ended ones")
    seen["rows_after"] = page.locator("#live-calls tr").count()
    seen["ended"] = page.locator("#ended-calls li").first.inner_text()
    seen["errors"] = page.console_errors + call_page.console_errors
    return seen


async def test_in_the_browser_a_call_appears_talks_and_ends_as_its_record_says(stack, browser, signed_in,
                                                                               caller_interrupt, tmp_path):
    page = await browser.page(stack.url, token=TOKEN)
    try:
        assert await browser.run(open_live_list, page) == 0
        call = asyncio.create_task(simulate_twilio_call(
            stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
            script=[Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                    Hangup(after_bot_done=True, pause_s=0.3)]))
        seen = await browser.run(follow_a_call, page, tmp_path)
        result = await call
    finally:
        await browser.close(page)
    assert result.protocol_errors == [] and result.clears
    await stack.idle()
    db = stack.app[DATABASE]
    await db.records.idle()
    record = await db.store.get_call(seen["call_id"])
    started, duration, carrier, persona, engine, numbers, _last = seen["row"]
    assert (carrier, persona, numbers) == ("twilio", "test-en", f"{record.from_number} → {record.to_number}")
    assert engine == record.engines[0] and re.fullmatch(r"0:0\d", duration)
    assert seen["no_calls_hidden"]
    assert seen["last_turn"] in [f"{'bot' if t['role'] == 'assistant' else 'caller'}: {t['text']}"
                                 for t in record.transcript]
    assert seen["turns"] == [turn["text"] for turn in record.transcript]       # the live view is the record
    assert seen["roles"] == ["bot" if t["role"] == "assistant" else "caller" for t in record.transcript]
    assert record.barge_ins == 1 and record.transcript[0]["interrupted"]
    assert seen["call_state"] == f"ended: {record.outcome}" and seen["record_link"]
    assert seen["rows_after"] == 0 and seen["ended"].startswith(f"{record.id} ended: {record.outcome}")
    assert seen["errors"] == []
    assert (tmp_path / "live-call.png").exists() and (tmp_path / "live-calls.png").exists()


def signed_out_while_watching(page, rotate) -> str:
    open_live_list(page)
    rotate()
    page.wait_for_url(re.compile(r"/console/login\?next="), timeout=8_000)
    return page.url


async def test_in_the_browser_a_new_admin_token_takes_the_live_page_to_the_login(stack, browser, signed_in,
                                                                                 monkeypatch):
    page = await browser.page(stack.url, token=TOKEN)
    try:
        url = await browser.run(signed_out_while_watching, page,
                                lambda: monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", "rotated-" + TOKEN))
    finally:
        await browser.close(page)
    assert unquote(url).endswith("/console/login?next=/console/calls")


def follow_a_failover(page) -> dict:
    row = page.wait_for_selector("#live-calls tr", timeout=10_000)
    call_id = row.get_attribute("data-id")
    wait_until(page, "() => document.querySelector('#live-calls td.engine')?.textContent === 'chain'", timeout=10,
               what="the list to show the chain engine")
    call_page = watched(page.context.new_page())
    call_page.goto(f"/console/calls/{call_id}")
    note = call_page.wait_for_selector("#live-transcript li.failover", timeout=10_000).inner_text()
    engine = call_page.locator("#engine").inner_text()
    wait_until(call_page, "() => document.getElementById('call-state').textContent.startsWith('ended')",
               timeout=15, what="the call's end")
    call_page.click("#record-link")
    call_page.wait_for_selector("#timeline")
    return {"call_id": call_id, "note": note, "engine": engine,
            "timeline": call_page.locator("#timeline tr.failover td").nth(1).inner_text(),
            "errors": page.console_errors + call_page.console_errors}


async def test_in_the_browser_an_engine_switch_shows_live_and_in_the_record(stack, browser, signed_in):
    stack.emulator.faults.refuse_realtime_status = 503        # realtime refused: the call starts on the chain
    page = await browser.page(stack.url, token=TOKEN)
    try:
        assert await browser.run(open_live_list, page) == 0    # the page first: the call and its switch are news
        call = asyncio.create_task(simulate_twilio_call(stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
                                                        script=[Hangup(after_bot_done=True, pause_s=0.3)]))
        seen = await browser.run(follow_a_failover, page)
        result = await call
    finally:
        await browser.close(page)
    assert result.protocol_errors == [] and result.media_received
    assert seen["engine"] == "chain" and "engine realtime → chain: connect failed" in seen["note"]
    assert "503" in seen["note"]
    assert seen["timeline"] == "engine realtime → chain" and seen["errors"] == []
