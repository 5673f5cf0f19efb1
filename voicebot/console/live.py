"""``/console/calls``: the calls in progress on this server process (carrier, persona, engine, duration, last
turn) and one call's transcript as it happens, kept up to date by server-sent events from the live feed
(voicebot/livefeed.py). Each stream starts with a snapshot of what is up now, taken in the same step as the
listener is registered, then carries each transcript line as the call writes it. A browser that falls behind is
dropped by the feed (told so, it reconnects for a fresh snapshot); it never holds a call up.

With ``serve --workers N`` each worker has its own calls: the page shows those of the worker that answered."""

from __future__ import annotations

import asyncio
import json
import time

import structlog
from aiohttp import web

from ..api.common import database
from . import auth, signed_in_only, timeline
from .html import e, page

log = structlog.get_logger("voicebot.console")
KEEPALIVE_S = 15.0        # a comment line this often keeps proxies from closing a quiet stream
GONE_CHECK_S = 1.0        # how often a quiet stream looks whether its browser is still there
RECONNECT_MS = 1000       # how soon a browser whose stream ended asks again (a fresh snapshot)
WRITE_TIMEOUT_S = 10.0    # a browser that takes longer than this to accept a write is let go
LIST_KINDS = frozenset(("call_start", "call_end", "turn", "turn_cut", "engine_switch"))


def add_routes(router: web.UrlDispatcher, services) -> None:
    def find(call_id: str):
        return next((call for call in list(services.calls) if call.call_id == call_id), None)

    @signed_in_only
    async def calls_page(request: web.Request) -> web.Response:
        body = ('<p class="muted"><span class="live-dot" id="live-state"></span>Calls in progress on this server '
                '(this process), as they happen.</p>'
                '<table class="live"><thead><tr><th>Started</th><th>Duration</th><th>Carrier</th><th>Persona</th>'
                "<th>Engine</th><th>From → to</th><th>Last turn</th></tr></thead>"
                '<tbody id="live-calls" data-events="/console/calls/events"></tbody></table>'
                '<p class="muted" id="no-live-calls">No call in progress.</p>'
                '<h2>Ended since this page opened</h2><ul id="ended-calls"></ul>')
        return page("Live calls", body, csrf=auth.csrf_token(request), current="/console/calls",
                    scripts=("live.js",))

    @signed_in_only
    async def call_page(request: web.Request) -> web.Response:
        call_id = request.match_info["id"]
        call = find(call_id)
        if call is None:
            if await database(request).store.get_call(call_id) is not None:
                raise web.HTTPSeeOther(f"/console/records/{call_id}")     # it has ended: its record
            return page("Call not found", f'<p class="error">No call {e(call_id)} in progress here.</p>'
                        '<p><a href="/console/calls">Live calls</a></p>', status=404,
                        csrf=auth.csrf_token(request), current="/console/calls")
        header = _summary(call)
        facts = (("Carrier", header["carrier"]), ("Persona", header["persona"]), ("From", header["from_number"]),
                 ("To", header["to_number"]), ("Started", timeline.when(call.started_at)))
        body = ('<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{e(v)}</dd>" for k, v in facts if v)
                + f'<dt>Engine</dt><dd id="engine">{e(header["engine"])}</dd>'
                  f'<dt>Duration</dt><dd id="duration"></dd></dl>'
                + f'<p><span class="live-dot" id="live-state"></span><span id="call-state">in progress</span> '
                  f'<a id="record-link" hidden href="/console/records/{e(call_id)}">its call record</a></p>'
                + f'<ol class="transcript live-transcript" id="live-transcript" '
                  f'data-events="/console/calls/{e(call_id)}/events"></ol>')
        return page(f"Live call {call_id}", body, csrf=auth.csrf_token(request), current="/console/calls",
                    scripts=("live_call.js",))

    @signed_in_only(kind="data")
    async def all_events(request: web.Request) -> web.StreamResponse:
        listener = services.live.listen(None)
        snapshot = {"now": time.time(), "calls": [_summary(call) for call in list(services.calls)]}
        return await _stream(request, listener, snapshot, lambda call_id, record: (
            {"call_id": call_id, "event": record} if record.get("type") in LIST_KINDS else None))

    @signed_in_only(kind="data")
    async def call_events(request: web.Request) -> web.StreamResponse:
        call = find(request.match_info["id"])
        if call is None:
            return web.Response(status=204)      # ended or unknown: an EventSource stops asking on a 204
        listener = services.live.listen(call.call_id)
        snapshot = {"now": time.time(), "call": _summary(call), "events": _so_far(call)}
        return await _stream(request, listener, snapshot, lambda _call_id, record: record)

    router.add_get("/console/calls", calls_page)
    router.add_get("/console/calls/events", all_events)
    router.add_get("/console/calls/{id}", call_page)
    router.add_get("/console/calls/{id}/events", call_events)


def _summary(call) -> dict:
    """A call in progress as the list shows it."""
    last = call.turns[-1] if call.turns else None
    return {"call_id": call.call_id, "carrier": call.meta.carrier, "persona": call.persona.name,
            "engine": call.engine.name, "from_number": call.meta.from_number, "to_number": call.meta.to_number,
            "direction": call.meta.direction, "started": call.started_at.timestamp(),
            "last_turn": None if last is None else {"role": last.get("role"), "text": last.get("text")}}


def _so_far(call) -> list[dict]:
    """What the call's transcript file holds so far, as the same lines (from the call's own lists, not the disk)."""
    lines = [{"type": "turn", **turn} for turn in call.turns]
    lines += [{"type": "barge_in", **barge_in} for barge_in in call.barge_ins]
    lines += [{"type": "tool", "name": c.name, "arguments": c.arguments, "ok": c.ok, "result": c.result,
               "t_ms": c.t_ms, "duration_ms": c.duration_ms} for c in call.toolbox.calls]
    lines += [{"type": "engine_switch", **switch} for switch in call.engine_switches]
    lines += [{"type": "dtmf", **digit} for digit in call.dtmf_in]
    return sorted(lines, key=lambda line: line.get("t_ms") or 0)


async def _stream(request: web.Request, listener, snapshot: dict, shape) -> web.StreamResponse:
    """The snapshot, then what ``shape(call_id, record)`` makes of each record (None: not sent), as server-sent
    events, until the browser goes, the listener is dropped or the server stops."""
    payload = json.dumps(snapshot, ensure_ascii=False)     # in the listener's step: nothing missed or repeated
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        await _send(response, f"retry: {RECONNECT_MS}\nevent: snapshot\ndata: {payload}\n\n")
        quiet_since = time.monotonic()
        while True:
            try:
                item = await asyncio.wait_for(listener.next(), GONE_CHECK_S)
            except asyncio.TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break         # the browser went (aiohttp does not cancel the handler): let the listener go
                if not auth.signed_in(request):
                    break         # the admin token changed: signed out, open streams included
                if time.monotonic() - quiet_since >= KEEPALIVE_S:
                    await _send(response, ": keepalive\n\n")
                    quiet_since = time.monotonic()
                continue
            quiet_since = time.monotonic()
            if item is None:
                if listener.dropped:
                    log.info("console_live_listener_dropped", path=request.path, remote=request.remote)
                    await _send(response, "event: dropped\ndata: {}\n\n")
                break
            data = shape(*item)
            if data is not None:
                await _send(response, f"data: {json.dumps(data, ensure_ascii=False)}\n\n")
            if listener.call_id is not None and item[1].get("type") == "call_end":
                break         # that call is over: nothing more will come
    except (ConnectionError, asyncio.TimeoutError):
        pass              # the browser went, or stopped reading
    finally:
        listener.close()
    return response


async def _send(response: web.StreamResponse, text: str) -> None:
    await asyncio.wait_for(response.write(text.encode()), WRITE_TIMEOUT_S)
