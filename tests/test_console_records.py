"""The console's call records over real HTTP on the real server app and in a real headless Chromium: the search
(number, persona, carrier, outcome, time range) over records written by the record writer, a call's page with
its transcript, timeline (barge-ins from the transcript file, tools, failover, keypad) and latencies, the stereo
recording played in the page over a waveform drawn from its peaks; a real simulated call's own record; and every
page and data route refused without the console sign-in."""

from __future__ import annotations
import io
import re
import wave
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from voicebot.audio.wav import write_wav
from voicebot.config import Settings
from voicebot.console.records import wav_peaks
from voicebot.console import auth
from voicebot.dialplan import Dialplan
from voicebot.server import SERVICES, create_app
from voicebot.simulator.caller import Hangup
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import TranscriptFile

from conftest import AUTH_TOKEN, running_stack
from console_browser import browser, wait_until  # noqa: F401 (fixture)
from records import T0, full_record

TOKEN = "console-token-31e9f0"
RATE = 8000


def tone_wav(path: Path) -> None:
    """Two seconds of stereo: a 440 Hz caller in the first second (left), a 660 Hz bot in the second (right)."""
    t = np.arange(RATE) / RATE
    silence = np.zeros(RATE, np.int16)
    caller = np.concatenate([(12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), silence])
    bot = np.concatenate([silence, (12000 * np.sin(2 * np.pi * 660 * t)).astype(np.int16)])
    write_wav(path, np.stack([caller, bot], axis=1), RATE)


def transcript_lines(settings: Settings, record) -> None:
    """What the call's transcript file holds beyond its record: a barge-in, a transfer (written by the real
    TranscriptFile, into the day folder of the call's start)."""
    folder = settings.transcripts_dir
    writer = TranscriptFile(folder, record.id)
    day_path = folder / record.started_at.strftime("%Y-%m-%d") / f"{record.id}.jsonl"
    writer.write("call_start", call_id=record.id, carrier=record.carrier, persona=record.persona)
    writer.write("barge_in", trigger="local_vad", t_ms=7740, reaction_us=212,
                 heard=[{"item_id": "item_3", "heard_ms": 640, "generated_ms": 3900}])
    writer.write("transfer", target_name="sales", target="+15557650100", t_ms=39000)
    writer.close()
    day_path.parent.mkdir(parents=True, exist_ok=True)
    if writer.path != day_path:
        writer.path.replace(day_path)


@pytest.fixture
async def console(aiohttp_client, monkeypatch, tmp_path):
    """The server app (no calls) over loopback HTTP with records written by its record writer: 30 calls, the
    newest with a real stereo WAV and a transcript file."""
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    settings = Settings(source=str(tmp_path / "config.yaml"), database_url=f"sqlite:///{tmp_path / 'v.db'}",
                        recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    settings.recordings_dir.mkdir()
    tone_wav(settings.recordings_dir / "star.wav")
    client = await aiohttp_client(create_app(settings, Dialplan(personas=[])))
    records = [full_record(n, recording_path=None) for n in range(29)]
    star = full_record(29, recording_path="star.wav", outcome="transferred", transfer_target="sales",
                       from_number="+442079460123")
    records.append(star)
    writer = client.app[SERVICES].records
    for record in records:
        writer.put(record)
    await writer.idle()
    transcript_lines(settings, star)
    client.records, client.star, client.settings = records, star, settings
    return client


def sign_in(client) -> None:
    client.session.cookie_jar.update_cookies({auth.COOKIE: auth.session_value(TOKEN)}, client.make_url("/"))


async def text_of(client, path: str, status: int = 200, **params) -> str:
    async with client.get(path, params=params, allow_redirects=False) as resp:
        text = await resp.text()
        assert resp.status == status, (path, params, text[:500])
        return text


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f]+)">', html)


# -- sign-in ----------------------------------------------------------------------------------------------------

async def test_every_records_page_and_data_route_needs_the_sign_in(console):
    star = console.star.id
    for path in ("/console/records", f"/console/records/{star}", "/console/records?persona=acme-en"):
        async with console.get(path, allow_redirects=False) as resp:
            assert resp.status == 303 and unquote(resp.headers["Location"]) == f"/console/login?next={path}"
    for path in (f"/console/records/{star}/recording", f"/console/records/{star}/peaks"):
        async with console.get(path) as resp:
            assert resp.status == 401 and "sign in" in (await resp.json())["error"]
    console.session.cookie_jar.update_cookies({auth.COOKIE: "0" * 64}, console.make_url("/"))   # a forged cookie
    async with console.get(f"/console/records/{star}/recording") as resp:
        assert resp.status == 401
    sign_in(console)
    async with console.get(f"/console/records/{star}/recording") as resp:
        assert resp.status == 200 and resp.content_type == "audio/wav"


# -- the search -------------------------------------------------------------------------------------------------

async def test_the_search_filters_by_number_persona_carrier_outcome_and_time(console):
    sign_in(console)
    records = console.records
    newest_first = list(reversed(records))
    html = await text_of(console, "/console/records")
    assert row_ids(html) == [r.id for r in newest_first]
    assert html.count("♪") == 1                                       # only the star call has a recording
    html = await text_of(console, "/console/records", number="(555) 010-0017")
    assert row_ids(html) == [records[17].id]
    html = await text_of(console, "/console/records", persona="billing", carrier="telnyx")
    assert row_ids(html) == [r.id for r in newest_first if r.persona == "billing" and r.carrier == "telnyx"] != []
    html = await text_of(console, "/console/records", outcome="voicemail", number="", since="", until="")
    assert row_ids(html) == [r.id for r in newest_first if r.outcome == "voicemail"] != []
    since = (T0 + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S")       # as a datetime-local input sends it
    until = (T0 + timedelta(seconds=15)).strftime("%Y-%m-%dT%H:%M:%S")
    html = await text_of(console, "/console/records", since=since, until=until)
    assert row_ids(html) == [r.id for r in newest_first if 10 <= (r.started_at - T0).total_seconds() < 15]
    assert 'value="' + since + '"' in html                              # the form keeps what was searched
    html = await text_of(console, "/console/records", number="+44 20")
    assert row_ids(html) == [console.star.id]
    html = await text_of(console, "/console/records", number="9999999")
    assert row_ids(html) == [] and "No call matches" in html


async def test_bad_search_input_is_answered_400_naming_the_field(console):
    sign_in(console)
    for params, named in (({"since": "yesterday"}, "since: expected an ISO 8601 date or time"),
                          ({"outcome": "hung_up"}, "outcome: expected one of completed"),
                          ({"number": "abc"}, "number: expected digits of a phone number"),
                          ({"since": "2025-03-14T10:00", "until": "2025-03-14T09:00"}, "until: must be later"),
                          ({"cursor": "bm90IG91cnM"}, "cursor: not a cursor this server handed out"),
                          ({"sort": "phone"}, "sort: unknown parameter")):
        html = await text_of(console, "/console/records", 400, **params)
        assert named in html.replace("&#x27;", "'"), params
        assert 'id="search"' in html                                    # the form is still there to fix it


async def test_older_calls_are_a_page_further_with_the_filters_kept(console):
    sign_in(console)
    many = [full_record(100 + n, persona="acme-en", recording_path=None) for n in range(60)]
    writer = console.app[SERVICES].records
    for record in many:
        writer.put(record)
    await writer.idle()
    expected = [r.id for r in reversed(console.records + many) if r.persona == "acme-en"]
    html = await text_of(console, "/console/records", persona="acme-en")
    seen = row_ids(html)
    while (older := re.search(r'<a href="(/console/records\?[^"]+)" id="older"', html)) is not None:
        link = older.group(1).replace("&amp;", "&")
        assert "persona=acme-en" in link
        html = await text_of(console, link)
        seen += row_ids(html)
    assert seen == expected and len(seen) > 50


# -- one call ---------------------------------------------------------------------------------------------------

async def test_a_calls_page_shows_its_transcript_timeline_and_latencies(console):
    sign_in(console)
    star = console.star
    html = await text_of(console, f"/console/records/{star.id}")
    assert "transferred" in html and "+442079460123" in html and "stepaudio-2.5-realtime → chain" in html
    turns = re.findall(r'<li class="turn (bot|caller)" data-t-ms="(\d+)">.*?<span class="said">(.*?)</span>', html)
    assert turns == [("bot", "900", "Hello, this is Acme. How can I help?"), ("caller", "5200", "我想查一下订单 A-1093"),
                     ("bot", "7100", "Your order"), ("caller", "7800", "When does it arrive?")]
    assert "cut off after 640 ms" in html and "has shipped and arrives on Sunday" in html
    events = re.findall(r'<tr class="event (\w+)" data-t-ms="(\d+)"><td>[^<]*</td><td>([^<]*)</td>', html)
    assert events == [("barge_in", "7740", "barge-in (local_vad)"), ("failover", "12040", "engine "
                       "stepaudio-2.5-realtime → chain"), ("dtmf", "15000", "caller pressed 1"),
                      ("dtmf", "15400", "caller pressed #"), ("tool", "20500", "tool check_order"),
                      ("tool", "30100", "tool transfer (failed)"), ("transfer", "39000", "transferred to sales")]
    assert "640 of 3900 ms heard" in html and "212 µs" in html
    assert 'id="first-audio">612 ms' in html and 'id="turn-median">812 ms' in html
    assert f'src="/console/records/{star.id}/recording"' in html
    other = console.records[3]          # no recording, no transcript file: the record's events only
    html = await text_of(console, f"/console/records/{other.id}")
    assert "Not recorded" in html and "barge-in (" not in html and "tool check_order" in html
    html = await text_of(console, "/console/records/ffffffffffffffff", 404)
    assert "No call ffffffffffffffff" in html


async def test_the_peaks_follow_each_channel_of_the_wav(console):
    sign_in(console)
    async with console.get(f"/console/records/{console.star.id}/peaks") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["channels"] == ["caller", "bot"] and body["rate"] == RATE and body["duration_s"] == 2.0
    caller, bot = (np.array(p) for p in body["peaks"])
    assert len(caller) == len(bot) == 1000
    assert caller[:495].min() > 0.3 and caller[505:].max() == 0          # 12000/32768 = 0.37
    assert bot[:495].max() == 0 and bot[505:].min() > 0.3
    async with console.get(f"/console/records/{console.records[0].id}/peaks") as resp:
        assert resp.status == 404 and "has no recording" in (await resp.json())["error"]


def test_the_peaks_of_a_long_recording_are_read_in_blocks_and_match_the_whole_file(tmp_path):
    """Three minutes and a bit (several read blocks, a last slice shorter than the others), speech-like noise
    bursts on each channel and one click: the same peaks as computed on the whole file at once."""
    rng = np.random.default_rng(7)
    frames = 180 * RATE + 123
    stereo = np.zeros((frames, 2), np.int16)
    for start in range(0, frames - RATE, 3 * RATE):
        stereo[start:start + RATE, 0] = (rng.standard_normal(RATE) * 3000).astype(np.int16)
        stereo[start + RATE:start + 2 * RATE, 1] = (rng.standard_normal(RATE) * 5000).astype(np.int16)
    stereo[frames - 50, 1] = -32768                       # in the short last slice
    write_wav(tmp_path / "long.wav", stereo, RATE)
    body = wav_peaks(tmp_path / "long.wav")
    per_slice = -(-frames // 1000)
    expected = [[float(np.abs(stereo[i:i + per_slice, c].astype(np.int32)).max()) / 32768
                 for i in range(0, frames, per_slice)] for c in range(2)]
    assert body["duration_s"] == round(frames / RATE, 3) and len(body["peaks"][0]) == len(expected[0]) <= 1000
    assert np.allclose(body["peaks"], expected, atol=0.0005)
    assert body["peaks"][1][-1] == 1.0


async def test_the_recording_is_served_with_ranges_and_only_from_the_recordings_folder(console):
    sign_in(console)
    url = f"/console/records/{console.star.id}/recording"
    async with console.get(url) as resp:
        data = await resp.read()
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, RATE, 2 * RATE)
    async with console.get(url, headers={"Range": "bytes=44-1043"}) as resp:
        assert resp.status == 206 and await resp.read() == data[44:1044]   # the player seeks with ranges
    outside = full_record(500, recording_path="../v.db")
    writer = console.app[SERVICES].records
    writer.put(outside)
    await writer.idle()
    async with console.get(f"/console/records/{outside.id}/recording") as resp:
        assert resp.status == 403 and "not inside recordings_dir" in (await resp.json())["error"]


# -- in the browser ---------------------------------------------------------------------------------------------

def search_in_the_page(page, expected_count: int, shots: Path) -> list[str]:
    page.goto("/console/records")
    assert page.locator("table.records tbody tr").count() == 30
    page.screenshot(path=str(shots / "records.png"), full_page=True)
    page.fill("input[name=number]", "+44 20 7946")
    page.click("#search button")
    page.wait_for_url(re.compile(r"number="))
    assert page.locator("table.records tbody tr").count() == expected_count
    page.click("table.records tbody tr a")
    page.wait_for_selector("#waveform[data-drawn]")
    return [page.url, page.title()]


def play_and_look(page, shots: Path) -> dict:
    audio = page.locator("#recording")
    wait_until(page, "() => document.getElementById('recording').readyState >= 1")
    result = {"duration": audio.evaluate("a => a.duration"), "error": audio.evaluate("a => a.error && a.error.code")}
    audio.evaluate("a => a.play()")
    wait_until(page, "() => document.getElementById('recording').currentTime > 0.3")
    result["playing"] = audio.evaluate("a => !a.paused")
    # The canvas' own pixels: what is drawn in the caller's lane (above the middle) and the bot's (below), in
    # the first and the second half of the call.
    result["lanes"] = page.evaluate("""() => {
        const c = document.getElementById('waveform'); const d = c.getContext('2d').getImageData(0, 0, c.width,
        c.height).data; const lanes = {callerFirst: 0, callerSecond: 0, botFirst: 0, botSecond: 0};
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
          const i = (y * c.width + x) * 4; const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
          const lane = y < c.height / 2 - 1 ? 'caller' : y > c.height / 2 + 1 ? 'bot' : null;
          if (!lane) continue;
          const coloured = lane === 'caller' ? (b > 180 && r < 100) : (g > 130 && r < 80 && b < 120);
          if (coloured) lanes[lane + (x < c.width / 2 - 5 ? 'First' : x > c.width / 2 + 5 ? 'Second' : 'Mid')]++;
        }
        return lanes; }""")
    audio.evaluate("a => { a.pause(); a.currentTime = 0; }")
    page.locator("li.turn").nth(0).click()            # a turn seeks the recording to its moment (0.9 s) and plays
    result["after_seek"] = audio.evaluate("a => a.currentTime")
    page.screenshot(path=str(shots / "record.png"), full_page=True)
    return result


async def test_in_the_browser_the_search_finds_a_call_whose_recording_plays_over_its_waveform(console, browser,
                                                                                             tmp_path):
    page = await browser.page(str(console.make_url("/")), token=TOKEN)
    try:
        url, title = await browser.run(search_in_the_page, page, 1, tmp_path)
        assert url.endswith(f"/console/records/{console.star.id}") and title.startswith(f"Call {console.star.id}")
        seen = await browser.run(play_and_look, page, tmp_path)
        assert seen["error"] is None and abs(seen["duration"] - 2.0) < 0.01
        assert seen["playing"]
        lanes = seen["lanes"]
        assert lanes["callerFirst"] > 5000 and lanes["botSecond"] > 5000, lanes
        assert lanes["callerSecond"] == 0 and lanes["botFirst"] == 0, lanes
        assert 0.9 <= seen["after_seek"] < 1.9
        assert page.console_errors == []
    finally:
        await browser.close(page)
    assert (tmp_path / "records.png").stat().st_size > 10_000 and (tmp_path / "record.png").stat().st_size > 10_000


def refused_without_sign_in(page, star_id: str) -> list:
    seen = []
    for path in ("/console/records", f"/console/records/{star_id}"):
        page.goto(path)
        seen.append(page.url)
    seen.append(page.request.get(f"/console/records/{star_id}/recording").status)
    return seen


async def test_in_the_browser_without_the_sign_in_the_records_lead_to_the_login(console, browser):
    page = await browser.page(str(console.make_url("/")), token=None)
    try:
        first, second, recording = await browser.run(refused_without_sign_in, page, console.star.id)
    finally:
        await browser.close(page)
    assert first.endswith("/console/login?next=/console/records")
    assert second.endswith(f"/console/login?next=/console/records/{console.star.id}")
    assert recording == 401


# -- a real call's record ---------------------------------------------------------------------------------------

def look_at_a_real_call(page, call_id: str) -> dict:
    page.goto(f"/console/records/{call_id}")
    page.wait_for_selector("#waveform[data-drawn]")
    wait_until(page, "() => document.getElementById('recording').readyState >= 1")
    return {"turns": page.locator("li.turn .said").all_inner_texts(),
            "duration": page.locator("#recording").evaluate("a => a.duration"),
            "outcome": page.locator("#outcome").inner_text(),
            # the bot lane (below the middle) has the greeting drawn in it
            "drawn": page.evaluate("""() => { const c = document.getElementById('waveform');
                const d = c.getContext('2d').getImageData(0, c.height / 2 + 2, c.width, c.height / 2 - 2).data;
                let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 130 && d[i] < 80) n++; return n > 2000; }""")}


RECORDED = "+15550001777"
RECORDED_PERSONA = f"""\
personas:
  - name: recorded-en
    numbers: ["{RECORDED}"]
    language: en
    voice: lively-girl
    instructions: You are a test assistant. Keep answers short.
    greeting: Hello, this is the recorded line. How can I help?
    record: true
"""


@pytest.fixture
async def recorded_stack(tmp_path, monkeypatch):
    """The real server with the emulator as its StepFun, with a persona that records its calls."""
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    async with running_stack(tmp_path, recorded=RECORDED_PERSONA) as stack:
        yield stack


async def test_a_real_calls_record_shows_what_was_said_and_plays_what_was_heard(recorded_stack, browser):
    stack = recorded_stack
    result = await simulate_twilio_call(stack.url, to=RECORDED, auth_token=AUTH_TOKEN, max_duration_s=30,
                                        script=[Hangup(after_bot_done=True, pause_s=0.3)])
    assert result.protocol_errors == []
    await stack.idle()
    from voicebot.api import DATABASE

    db = stack.app[DATABASE]
    await db.records.idle()
    calls, _ = await db.store.list_calls()
    assert len(calls) == 1 and calls[0].recording_path
    record = await db.store.get_call(calls[0].id)
    page = await browser.page(stack.url, token=TOKEN)
    try:
        seen = await browser.run(look_at_a_real_call, page, record.id)
    finally:
        await browser.close(page)
    assert seen["turns"] == [turn["text"] for turn in record.transcript]
    assert seen["turns"][0] == "Hello, this is the recorded line. How can I help?"
    assert abs(seen["duration"] - record.duration_s) < 1.0 and seen["outcome"] == record.outcome == "completed"
    assert seen["drawn"], "the real recording's waveform is blank"
