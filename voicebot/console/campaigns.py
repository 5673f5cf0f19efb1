"""``/console/campaigns``: the outbound campaigns with their progress by outcome, start / pause / resume / cancel
(a form POST carrying the CSRF token), a campaign's contacts with their outcome and notes, and its export. The
operations are ``campaigns.manage``'s, as for the CLI and the admin API; the export is the API's own handler."""

from __future__ import annotations

import re
from datetime import datetime

import structlog
from aiohttp import web

from ..api import campaigns as api_campaigns
from ..api.common import database, operation_status
from ..campaigns import manage
from . import auth, signed_in_only, timeline
from .html import e, page

log = structlog.get_logger("voicebot.console")
MAX_CONTACTS_SHOWN = 1000      # a larger campaign's page shows the first ones; the export has them all
CSS_NAME = re.compile(r"[a-z0-9_-]{1,40}")
# Outcomes in the bar's order: a call's own dispositions first (any other name), then the carrier's results,
# then the contacts still to call.
LATE = ("voicemail", "no-answer", "busy", "failed", "canceled", "dnc")
KNOWN_COLOURS = ("completed", "answered", "confirmed", "voicemail", "no-answer", "busy", "failed", "canceled",
                 "dnc", "not_interested", "wrong_number", "pending")


def add_routes(router: web.UrlDispatcher, services) -> None:
    router.add_get("/console/campaigns", campaigns_page)
    router.add_get("/console/campaigns/{name}", campaign_page)
    router.add_get("/console/campaigns/{name}/export", export)
    router.add_post("/console/campaigns/{name}/{action}", change)


def _moment(iso: str | None) -> str:
    """An ISO 8601 UTC time of a campaign's status, to the second."""
    if not iso:
        return ""
    try:
        return timeline.when(datetime.fromisoformat(iso.replace("Z", "+00:00")))
    except ValueError:
        return iso


def _order(outcome: str) -> tuple[int, str]:
    if outcome == "pending":
        return 3, outcome
    if outcome == "in flight":
        return 2, outcome
    return (1, f"{LATE.index(outcome):02d}") if outcome in LATE else (0, outcome)


def _colour(outcome: str) -> str:
    name = outcome.replace(" ", "_")
    return f"o-{name}" if name in KNOWN_COLOURS else "o-other"


def progress(status: dict) -> str:
    """The contacts by outcome as one stacked bar (SVG: no inline style, which the CSP forbids) and its legend,
    and how many are done as a <progress>."""
    counts = dict(status["outcomes"])
    if status["in_flight"]:
        counts["in flight"] = status["in_flight"]
    total = status["contacts"] or 1
    x, bars, legend = 0.0, [], []
    for outcome in sorted(counts, key=_order):
        count = counts[outcome]
        width = 1000 * count / total
        bars.append(f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="14" class="{_colour(outcome)}" '
                    f'data-outcome="{e(outcome)}" data-count="{count}"><title>{e(outcome)}: {count}</title></rect>')
        legend.append(f'<span data-outcome="{e(outcome)}"><i class="{_colour(outcome)}"></i>{e(outcome)} '
                      f"<strong>{count}</strong></span>")
        x += width
    done = status["done"] + status["dnc"]
    return (f'<svg class="outcomes" viewBox="0 0 1000 14" preserveAspectRatio="none" role="img" '
            f'aria-label="contacts by outcome">{"".join(bars)}</svg>'
            f'<div class="legend">{"".join(legend)}</div>'
            f'<progress class="done" value="{done}" max="{status["contacts"]}">{done}/{status["contacts"]}'
            f"</progress> <span class=muted>{done}/{status['contacts']} done</span>")


def actions(status: dict, csrf: str, back: str) -> str:
    forms = []
    for verb in manage.actions_from(status["state"]):
        forms.append(f'<form method="post" class="inline action" action="/console/campaigns/{e(status["name"])}/'
                     f'{verb}"><input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="next" '
                     f'value="{e(back)}"><button data-action="{verb}">'
                     f"{verb.capitalize()}</button></form>")
    return " ".join(forms)


@signed_in_only
async def campaigns_page(request: web.Request) -> web.Response:
    csrf = auth.csrf_token(request)
    statuses = await manage.statuses(database(request).store)
    if not statuses:
        body = ('<p class="muted" id="no-campaigns">No campaign yet: create one with <code>voicebot campaign '
                "create</code> or <code>POST /api/campaigns</code>.</p>")
    else:
        rows = "".join(
            f'<tr data-campaign="{e(s["name"])}"><td><a href="/console/campaigns/{e(s["name"])}">{e(s["name"])}</a>'
            f'</td><td class="state">{e(s["state"])}</td><td>{e(s["persona"])}</td><td>{e(s["carrier"])}</td>'
            f'<td class="progress">{progress(s)}</td><td>{s["in_flight"]}</td><td>{s["attempts"]}</td>'
            f'<td>{e(_moment(s["next_window_opening"]))}</td><td>{actions(s, csrf, "/console/campaigns")}</td></tr>'
            for s in statuses)
        body = ('<table class="campaigns"><thead><tr><th>Campaign</th><th>State</th><th>Persona</th><th>Carrier</th>'
                "<th>Progress</th><th>In flight</th><th>Attempts</th><th>Next opening</th><th></th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
    running = any(s["state"] == "running" for s in statuses)
    return page("Campaigns", _refreshed(body, running), csrf=csrf, current="/console/campaigns",
                scripts=("campaigns.js",))


def _refreshed(body: str, running: bool) -> str:
    """The part of a page campaigns.js fetches again every few seconds while a campaign runs."""
    return f'<div id="campaigns-live"{" data-running" if running else ""}>{body}</div>'


def _contacts(rows: list[dict]) -> str:
    if not rows:
        return '<p class="muted">No contact.</p>'
    own = [name for name in manage.export_columns(rows) if name not in manage.EXPORT_COLUMNS]
    head = "".join(f"<th>{e(name)}</th>" for name in ("Phone", "Outcome", "Attempts", "Note", "Calls", *own))
    body = []
    for row in rows[:MAX_CONTACTS_SHOWN]:
        calls = " ".join(f'<a href="/console/records/{e(call_id)}">{e(call_id)}</a>'
                         for call_id in (row.get("call_ids") or "").split(";") if call_id)
        cells = [e(row["phone"]), f'<span class="outcome">{e(row["outcome"])}</span>', e(row["attempts"]),
                 e(row.get("note") or ""), calls, *(e(row.get(name, "")) for name in own)]
        body.append(f'<tr data-phone="{e(row["phone"])}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    more = (f'<p class="muted">The first {MAX_CONTACTS_SHOWN} of {len(rows)} contacts; the export has them all.</p>'
            if len(rows) > MAX_CONTACTS_SHOWN else "")
    return f'<table class="contacts"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


@signed_in_only
async def campaign_page(request: web.Request) -> web.Response:
    csrf = auth.csrf_token(request)
    store = database(request).store
    name = request.match_info["name"]
    try:
        status = await manage.status(store, name)
        _row, rows = await manage.results(store, name)
    except manage.NotFound as exc:
        return page("Campaign not found", f'<p class="error">{e(exc)}</p><p><a href="/console/campaigns">All '
                    "campaigns</a></p>", status=404, csrf=csrf, current="/console/campaigns")
    here = f"/console/campaigns/{status['name']}"
    rate = status["rate"]
    facts = (("State", f'<span class="state" id="state">{e(status["state"])}</span>'),
             ("Persona", e(status["persona"])), ("Carrier", e(status["carrier"])),
             ("Created", e(_moment(status["created_at"]))), ("Started", e(_moment(status["started_at"]))),
             ("Ended", e(_moment(status["ended_at"]))),
             ("Contacts", f'{status["contacts"]} ({status["pending"]} to call, {status["in_flight"]} in flight, '
                          f'{status["done"]} done, {status["dnc"]} do-not-call)'),
             ("Attempts", str(status["attempts"])),
             ("Rate", f'{rate["dials_last_60s"]} dials in the last minute (limit {rate["limit_per_second"]}/s), '
                      f'at most {status["max_concurrent_calls"]} at once'),
             ("Next opening", e(_moment(status["next_window_opening"]))))
    body = ('<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v) + "</dl>"
            + f'<div class="progress" data-campaign="{e(status["name"])}">{progress(status)}</div>'
            + f'<p>{actions(status, csrf, here)} · Export <a href="{e(here)}/export?format=csv" id="export-csv" '
              f'download>CSV</a> <a href="{e(here)}/export?format=json" id="export-json">JSON</a></p>'
            + "<h2>Contacts</h2>" + _contacts(rows))
    return page(f"Campaign {status['name']}", _refreshed(body, status["state"] == "running"), csrf=csrf,
                current="/console/campaigns", scripts=("campaigns.js",))


def _back(value: object, name: str) -> str:
    """Back to the list or to this campaign's page, nowhere else."""
    return value if value in ("/console/campaigns", f"/console/campaigns/{name}") else "/console/campaigns"


@signed_in_only
async def change(request: web.Request) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    form = await request.post()
    back = _back(form.get("next"), name)
    store = database(request).store
    try:
        row = await manage.change_state(store, name, action)
    except manage.OperationError as exc:
        return page("Campaign unchanged", f'<p class="error" role="alert">{e(exc)}</p><p><a href="{e(back)}">Back'
                    "</a></p>", status=operation_status(exc), csrf=auth.csrf_token(request), current="/console/campaigns")
    log.info("console_campaign_changed", campaign=row.name, action=action, state=row.state, remote=request.remote)
    raise web.HTTPSeeOther(back)


export = signed_in_only(kind="data")(api_campaigns.export_campaign)
