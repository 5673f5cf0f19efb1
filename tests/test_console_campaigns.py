"""The console's campaigns over real HTTP on the real server app and in a real headless Chromium: campaigns
created from their YAML and CSV texts by ``campaigns.manage`` (as ``POST /api/campaigns`` does) with attempts
that really ended in the store; the list's progress by outcome, a campaign's contacts with outcome and notes,
start / pause / resume / cancel from the page changing the campaign in the database (and refused without the
sign-in or the CSRF token), the export downloaded."""

from __future__ import annotations
import functools
import re
from datetime import datetime, timezone
from urllib.parse import unquote

import pytest

from voicebot.api import DATABASE
from voicebot.campaigns import manage, schedule
from voicebot.campaigns.definition import CampaignSpec
from voicebot.config import Settings
from voicebot.console import auth
from voicebot.dialplan import load_dialplan
from voicebot.server import create_app
from voicebot.store import Store

from campaign_files import CONTACTS, DEFINITION, write_dialplan
from console_browser import browser  # noqa: F401 (fixture)
from records import full_record

TOKEN = "console-token-c4mp41"
CALL_ID = "c0ffee0000000001"
NOTE = "Tuesday 3pm works <b>better</b>"


def always(_zone: str, at: datetime) -> datetime:
    return at


async def dental_reminders_half_done(store: Store, dialplan) -> None:
    """Four contacts: Ana confirmed on a call (with a note), Ben's voicemail, Dee no answer (due again), Eve not
    called yet; then paused. Attempts claimed, dialed and ended through the store, as the dialer does."""
    created = await manage.create_from_text(store, DEFINITION.format(name="dental-reminders"), CONTACTS, dialplan)
    now = datetime.now(timezone.utc)
    await manage.change_state(store, "dental-reminders", "start", now=now)
    spec = CampaignSpec.from_json((await store.get_campaign("dental-reminders")).definition)
    retry_after = functools.partial(schedule.retry_after, spec)     # no-answer: again in 2 h; voicemail: done
    claims = await store.claim(created.id, now=now, horizon_s=10, limit=3, due=always)
    assert [c.phone for c in claims] == ["+12125550101", "+12025550143", "+442079460000"]
    for claim in claims:
        await store.mark_dialing(claim.attempt_id, now=now)
        await store.mark_dialed(claim.attempt_id, f"CA{claim.attempt_id}", now=now)
    ana, ben, dee = claims
    await store.call_result(ana.attempt_id, call_id=CALL_ID, disposition="confirmed", note=NOTE, now=now)
    for claim, outcome in ((ana, "answered"), (ben, "voicemail"), (dee, "no-answer")):
        await store.finish_attempt(claim.attempt_id, outcome=outcome, now=now, retry_after=retry_after, due=always)
    await manage.change_state(store, "dental-reminders", "pause", now=now)
    await store.save_call(full_record(1, id=CALL_ID, campaign_id=created.id, attempt_id=ana.attempt_id,
                                      direction="outbound", recording_path=None))


@pytest.fixture
async def console(aiohttp_client, monkeypatch, tmp_path):
    """Three campaigns in the database (one half done and paused, one created, one canceled), then the server."""
    monkeypatch.setenv("VOICEBOT_ADMIN_TOKEN", TOKEN)
    url = f"sqlite:///{tmp_path / 'v.db'}"
    dialplan = load_dialplan(write_dialplan(tmp_path))
    store = await Store.open(url)
    try:
        await dental_reminders_half_done(store, dialplan)
        for name in ("flu-shots", "old-promo"):
            await manage.create_from_text(store, DEFINITION.format(name=name), CONTACTS, dialplan)
        await manage.change_state(store, "old-promo", "cancel")
    finally:
        await store.close()
    settings = Settings(source=str(tmp_path / "config.yaml"), database_url=url,
                        recordings_dir=tmp_path / "recordings", transcripts_dir=tmp_path / "transcripts")
    client = await aiohttp_client(create_app(settings, dialplan))
    client.store = client.app[DATABASE].store
    return client


def sign_in(client) -> str:
    """The console cookie in the client's jar; the CSRF token its pages carry."""
    cookie = auth.session_value(TOKEN)
    client.session.cookie_jar.update_cookies({auth.COOKIE: cookie}, client.make_url("/"))
    return auth._mac(cookie, "voicebot console csrf v1")


async def state_of(client, name: str) -> str:
    return (await client.store.get_campaign(name)).state


def csrf_in(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]*)"', html).group(1)


# -- over HTTP --------------------------------------------------------------------------------------------------

async def test_every_campaign_page_action_and_export_needs_the_sign_in(console):
    for path in ("/console/campaigns", "/console/campaigns/dental-reminders"):
        async with console.get(path, allow_redirects=False) as resp:
            assert resp.status == 303 and unquote(resp.headers["Location"]) == f"/console/login?next={path}"
    async with console.get("/console/campaigns/dental-reminders/export") as resp:
        assert resp.status == 401
    async with console.post("/console/campaigns/flu-shots/start", data={"csrf": "0" * 64},
                            allow_redirects=False) as resp:
        assert resp.status == 303 and unquote(resp.headers["Location"]).startswith("/console/login")
    assert await state_of(console, "flu-shots") == "created"


async def test_an_action_needs_the_csrf_token_of_this_session_from_this_site(console):
    csrf = sign_in(console)
    for data, headers in (({}, {}), ({"csrf": "0" * 64}, {}), ({"csrf": csrf}, {"Origin": "https://evil.example"})):
        async with console.post("/console/campaigns/flu-shots/start", data=data, headers=headers,
                                allow_redirects=False) as resp:
            assert resp.status == 403, (data, headers)
    assert await state_of(console, "flu-shots") == "created"
    async with console.get("/console/campaigns") as resp:
        assert csrf_in(await resp.text()) == csrf                     # what the page's forms carry
    async with console.post("/console/campaigns/flu-shots/start", data={"csrf": csrf, "next": "/console/campaigns"},
                            allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/campaigns"
    assert await state_of(console, "flu-shots") == "running"


async def test_the_list_shows_each_campaigns_progress_by_outcome_and_its_possible_actions(console):
    sign_in(console)
    async with console.get("/console/campaigns") as resp:
        html = await resp.text()
    rows = dict(re.findall(r'<tr data-campaign="([\w-]+)">(.*?)</tr>', html, re.S))
    assert list(rows) == ["dental-reminders", "flu-shots", "old-promo"]
    bars = re.findall(r'<rect x="[\d.]+" y="0" width="([\d.]+)" height="14" class="([\w-]+)" '
                      r'data-outcome="([\w -]+)" data-count="(\d+)"', rows["dental-reminders"])
    assert [(outcome, int(count), float(width), colour) for width, colour, outcome, count in bars] == [
        ("confirmed", 1, 250.0, "o-confirmed"), ("voicemail", 1, 250.0, "o-voicemail"),
        ("no-answer", 1, 250.0, "o-no-answer"), ("pending", 1, 250.0, "o-pending")]
    assert '<progress class="done" value="2" max="4">' in rows["dental-reminders"]
    assert re.findall(r'data-action="(\w+)"', rows["dental-reminders"]) == ["resume", "cancel"]
    assert re.findall(r'data-action="(\w+)"', rows["flu-shots"]) == ["start", "cancel"]
    assert re.findall(r'data-action="(\w+)"', rows["old-promo"]) == []
    assert '<td class="state">canceled</td>' in rows["old-promo"]


async def test_a_campaigns_page_lists_its_contacts_with_outcome_note_and_calls(console):
    sign_in(console)
    async with console.get("/console/campaigns/dental-reminders") as resp:
        html = await resp.text()
    contacts = re.findall(r'<tr data-phone="([+\d]+)"><td>[^<]*</td><td><span class="outcome">([\w-]+)</span></td>'
                          r"<td>(\d+)</td><td>(.*?)</td><td>(.*?)</td><td>(\w*)</td>", html)
    assert contacts == [
        ("+12125550101", "confirmed", "1", "Tuesday 3pm works &lt;b&gt;better&lt;/b&gt;",
         f'<a href="/console/records/{CALL_ID}">{CALL_ID}</a>', "Ana"),
        ("+12025550143", "voicemail", "1", "", "", "Ben"),
        ("+442079460000", "no-answer", "1", "", "", "Dee"),
        ("+33142685300", "pending", "0", "", "", "Eve")]
    assert 'id="state">paused' in html and 'href="/console/campaigns/dental-reminders/export?format=csv"' in html
    async with console.get("/console/campaigns/no-such") as resp:
        assert resp.status == 404 and "no campaign 'no-such'" in (await resp.text()).replace("&#x27;", "'")


async def test_a_refused_action_says_why_and_changes_nothing(console):
    csrf = sign_in(console)
    for path, status, problem in (
            ("/console/campaigns/dental-reminders/start", 409,
             "cannot start campaign 'dental-reminders': it is paused (it can: resume, cancel)"),
            ("/console/campaigns/old-promo/resume", 409, "cannot resume campaign 'old-promo': it is canceled"),
            ("/console/campaigns/dental-reminders/restart", 400, "unknown action 'restart'"),
            ("/console/campaigns/no-such/start", 404, "no campaign 'no-such'")):
        async with console.post(path, data={"csrf": csrf, "next": "https://evil.example/"}) as resp:
            html = (await resp.text()).replace("&#x27;", "'")
            assert resp.status == status and problem in html, (path, html[-600:])
            assert '<a href="/console/campaigns">Back</a>' in html          # never back to another site
    assert await state_of(console, "dental-reminders") == "paused"


# -- in the browser ---------------------------------------------------------------------------------------------

def act_in_the_list(page, shots) -> dict:
    seen = {}
    page.goto("/console/campaigns")
    seen["progress"] = page.locator("tr[data-campaign=dental-reminders] progress").evaluate(
        "p => [p.value, p.max]")
    seen["bar"] = page.locator("tr[data-campaign=dental-reminders] rect").evaluate_all(
        "rects => rects.map(r => [r.dataset.outcome, Math.round(r.getBBox().width)])")
    page.screenshot(path=str(shots / "campaigns.png"), full_page=True)
    page.click("tr[data-campaign=dental-reminders] button[data-action=resume]")
    page.wait_for_selector("tr[data-campaign=dental-reminders] button[data-action=pause]")
    seen["after_resume"] = page.locator("tr[data-campaign=dental-reminders] td.state").inner_text()
    # Running, the dialer calls Eve -- and cannot (no Twilio credentials here): her attempt fails, and the bar
    # shows it without the page being loaded again.
    page.evaluate("() => { window.notReloaded = true; }")
    page.wait_for_selector("tr[data-campaign=dental-reminders] rect[data-outcome=failed]", timeout=10_000)
    seen["live_bar"] = page.locator("tr[data-campaign=dental-reminders] rect").evaluate_all(
        "rects => rects.map(r => [r.dataset.outcome, Number(r.dataset.count)])")
    seen["not_reloaded"] = page.evaluate("() => window.notReloaded === true")
    page.once("dialog", lambda dialog: dialog.dismiss())                 # "Cancel campaign flu-shots?" No.
    page.click("tr[data-campaign=flu-shots] button[data-action=cancel]")
    page.wait_for_timeout(300)
    seen["after_dismissed_cancel"] = page.locator("tr[data-campaign=flu-shots] td.state").inner_text()
    page.once("dialog", lambda dialog: (seen.setdefault("asked", dialog.message), dialog.accept()))
    page.click("tr[data-campaign=flu-shots] button[data-action=cancel]")
    page.wait_for_selector("tr[data-campaign=flu-shots] td.state:text('canceled')")
    seen["after_cancel"] = page.locator("tr[data-campaign=flu-shots] td.state").inner_text()
    return seen


async def test_in_the_browser_the_actions_change_the_campaigns_in_the_database(console, browser, tmp_path):
    page = await browser.page(str(console.make_url("/")), token=TOKEN)
    try:
        seen = await browser.run(act_in_the_list, page, tmp_path)
        assert page.console_errors == []
    finally:
        await browser.close(page)
    assert seen["progress"] == [2, 4]
    assert [outcome for outcome, _ in seen["bar"]] == ["confirmed", "voicemail", "no-answer", "pending"]
    widths = [width for _, width in seen["bar"]]
    assert max(widths) - min(widths) <= 1 and widths[0] > 20          # four equal quarters, drawn
    assert seen["after_resume"] == "running" and await state_of(console, "dental-reminders") == "running"
    assert seen["live_bar"] == [["confirmed", 1], ["voicemail", 1], ["no-answer", 1], ["failed", 1]]
    assert seen["not_reloaded"]
    assert seen["after_dismissed_cancel"] == "created"
    assert seen["asked"].startswith("Cancel campaign flu-shots?")
    assert seen["after_cancel"] == "canceled" and await state_of(console, "flu-shots") == "canceled"
    assert (tmp_path / "campaigns.png").stat().st_size > 10_000


def contacts_and_export(page, shots) -> dict:
    page.goto("/console/campaigns/dental-reminders")
    seen = {"outcomes": page.locator("table.contacts span.outcome").all_inner_texts(),
            "note": page.locator("tr[data-phone='+12125550101'] td").nth(3).inner_text()}
    page.screenshot(path=str(shots / "campaign.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#export-csv")
    saved = shots / "export.csv"
    download.value.save_as(saved)
    seen["filename"] = download.value.suggested_filename
    seen["csv"] = saved.read_text(encoding="utf-8")
    page.click(f"a[href='/console/records/{CALL_ID}']")
    page.wait_for_selector("#outcome")
    seen["call_page"] = page.title()
    seen["campaign_link"] = page.locator("dl.facts a[href^='/console/campaigns/']").get_attribute("href")
    return seen


async def test_in_the_browser_a_campaigns_contacts_and_its_export(console, browser, tmp_path):
    page = await browser.page(str(console.make_url("/")), token=TOKEN)
    try:
        seen = await browser.run(contacts_and_export, page, tmp_path)
        assert page.console_errors == []
    finally:
        await browser.close(page)
    assert seen["outcomes"] == ["confirmed", "voicemail", "no-answer", "pending"]
    assert seen["note"] == NOTE                                          # shown as text, not markup
    expected, _rows = await manage.export(console.store, "dental-reminders", "csv")
    assert seen["filename"] == "dental-reminders.csv" and seen["csv"] == expected
    assert seen["csv"].splitlines()[1].startswith(f"+12125550101,confirmed,1,{NOTE},{CALL_ID},Ana")
    assert seen["call_page"].startswith(f"Call {CALL_ID}")
    row = await console.store.get_campaign("dental-reminders")
    assert seen["campaign_link"] == f"/console/campaigns/{row.id}"
