"""``/console/records``: the call records — a search (number, persona, carrier, outcome, time range) over the same
store query as ``GET /api/calls``, and a call's page: what was said, what happened when, latencies, and the stereo
recording played in the page over its waveform (caller above, bot below; peaks computed here from the WAV)."""

from __future__ import annotations

import asyncio
import statistics
import wave
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import structlog
from aiohttp import web

from ..api.calls import RecordingUnavailable, list_filters, recording_file, recording_response
from ..api.common import BadParameter, database, json_error
from ..config import CARRIER_SECTIONS
from ..store import OUTCOMES, CallRecord, CallSummary, InvalidCursor
from . import auth, signed_in_only, timeline
from .html import e, page

log = structlog.get_logger("voicebot.console")
PAGE_SIZE = 50
WAVE_POINTS = 1000        # peaks per channel: about one per pixel of the page's canvas
READ_FRAMES = 1 << 16     # a recording's peaks are read this many frames at a time
FILTERS = ("number", "persona", "carrier", "outcome", "since", "until")


def add_routes(router: web.UrlDispatcher, services) -> None:
    folder = services.settings.transcripts_dir

    @signed_in_only
    async def records_page(request: web.Request) -> web.Response:
        return await _list(request, services)

    @signed_in_only
    async def record_page(request: web.Request) -> web.Response:
        return await _record(request, folder)

    router.add_get("/console/records", records_page)
    router.add_get("/console/records/{id}", record_page)
    router.add_get("/console/records/{id}/recording", recording)
    router.add_get("/console/records/{id}/peaks", peaks)


# -- the list ----------------------------------------------------------------------------------------------------

def _search_form(values: dict[str, str], services) -> str:
    personas = "".join(f"<option value=\"{e(p.name)}\">" for p in services.dialplan.personas)
    carriers = "".join(f"<option value=\"{e(name)}\">" for name in ("twilio", *CARRIER_SECTIONS))
    outcomes = "".join(f"<option{' selected' if values.get('outcome') == o else ''}>{e(o)}</option>"
                       for o in OUTCOMES)

    def field(name: str, label: str, kind: str = "text", extra: str = "") -> str:
        return (f'<label>{label} <input type="{kind}" name="{name}" value="{e(values.get(name, ""))}"{extra}>'
                f"</label>")

    return ('<form method="get" action="/console/records" class="search" id="search">'
            + field("number", "Number", "search", ' placeholder="digits" inputmode="tel"')
            + field("persona", "Persona", extra=' list="personas"')
            + field("carrier", "Carrier", extra=' list="carriers"')
            + f'<label>Outcome <select name="outcome"><option value="">any</option>{outcomes}</select></label>'
            + field("since", "From (UTC)", "datetime-local", ' step="1"')
            + field("until", "To (UTC)", "datetime-local", ' step="1"')
            + f'<button>Search</button></form><datalist id="personas">{personas}</datalist>'
              f'<datalist id="carriers">{carriers}</datalist>')


def _row(call: CallSummary) -> str:
    outcome = call.outcome or "in progress"
    duration = "" if call.duration_s is None else f"{call.duration_s:.1f} s"
    return (f'<tr data-id="{e(call.id)}"><td><a href="/console/records/{e(call.id)}">'
            f"{e(timeline.when(call.started_at))}</a></td><td>{e(call.from_number)}</td><td>{e(call.to_number)}</td>"
            f"<td>{e(call.persona)}</td><td>{e(call.carrier)}</td><td>{e(call.direction)}</td><td>{duration}</td>"
            f'<td class="outcome">{e(outcome)}</td><td>{call.user_turns + call.bot_turns}</td>'
            f"<td>{call.barge_ins}</td><td>{'♪' if call.recording_path else ''}</td></tr>")


async def _list(request: web.Request, services) -> web.Response:
    values = {name: value.strip() for name, value in request.query.items() if value.strip()}
    csrf = auth.csrf_token(request)
    form = _search_form(values, services)
    try:
        filters = list_filters(values, default_limit=PAGE_SIZE)
        calls, next_cursor = await database(request).store.list_calls(**filters)
    except (BadParameter, InvalidCursor) as exc:
        problem = f"cursor: {exc}" if isinstance(exc, InvalidCursor) else str(exc)
        return page("Call records", form + f'<p class="error" role="alert">{e(problem)}</p>', status=400,
                    csrf=csrf, current="/console/records")
    if not calls:
        table = '<p class="muted" id="no-calls">No call matches.</p>'
    else:
        table = ('<table class="records"><thead><tr><th>Started</th><th>From</th><th>To</th><th>Persona</th>'
                 "<th>Carrier</th><th>Direction</th><th>Duration</th><th>Outcome</th><th>Turns</th>"
                 "<th>Barge-ins</th><th>Rec.</th></tr></thead><tbody>"
                 + "".join(_row(call) for call in calls) + "</tbody></table>")
    more = ""
    if next_cursor is not None:
        query = urlencode({**{k: v for k, v in values.items() if k in FILTERS}, "cursor": next_cursor})
        more = f'<p><a href="/console/records?{e(query)}" id="older" rel="next">Older calls →</a></p>'
    return page("Call records", form + table + more, csrf=csrf, current="/console/records")


# -- one call ----------------------------------------------------------------------------------------------------

def _facts(record: CallRecord) -> str:
    outcome = record.outcome or "in progress"
    if record.outcome_detail:
        outcome += f" ({record.outcome_detail})"
    campaign = (f'<a href="/console/campaigns/{e(record.campaign_id)}">{e(record.campaign_id)}</a>'
                if record.campaign_id else "")
    rows = (("Call id", e(record.id)), ("Carrier", e(f"{record.carrier} · {record.carrier_call_id or ''}")),
            ("Persona", e(record.persona)), ("From", e(record.from_number)), ("To", e(record.to_number)),
            ("Direction", e(record.direction)), ("Started", e(timeline.when(record.started_at))),
            ("Ended", e(timeline.when(record.ended_at))),
            ("Duration", "" if record.duration_s is None else f"{record.duration_s:.1f} s"),
            ("Outcome", f'<span id="outcome">{e(outcome)}</span>'), ("End reason", e(record.end_reason)),
            ("Transferred to", e(record.transfer_target)), ("Engines", e(" → ".join(record.engines))),
            ("Campaign", campaign))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v) + "</dl>"


def _latencies(record: CallRecord, reactions_us: list[int]) -> str:
    items = []
    if record.first_audio_ms is not None:
        items.append(f'<li>First bot audio <strong id="first-audio">{record.first_audio_ms} ms</strong> after '
                     "the call began</li>")
    turns = [ms for ms in record.turn_latencies_ms if isinstance(ms, (int, float))]
    if turns:
        items.append(f'<li>Reply after the caller stopped: median <strong id="turn-median">'
                     f"{round(statistics.median(turns))} ms</strong>, slowest {round(max(turns))} ms "
                     f'<span class="muted">({", ".join(f"{round(ms)}" for ms in turns)} ms)</span></li>')
    if reactions_us:
        items.append(f"<li>Barge-in: the bot stopped within {max(reactions_us)} µs of the caller's speech being "
                     "detected</li>")
    return "<ul class=latencies>" + "".join(items) + "</ul>" if items else '<p class="muted">No latency measured.</p>'


def _transcript(record: CallRecord) -> str:
    if not record.transcript:
        return '<p class="muted">Nothing was said.</p>'
    lines = []
    for turn in record.transcript:
        role = "bot" if turn.get("role") == "assistant" else "caller"
        cut = ""
        if turn.get("interrupted"):
            cut = (f'<div class="cut">cut off after {e(turn.get("heard_ms"))} ms; it would have said: '
                   f'“{e(turn.get("full_text"))}”</div>')
        t_ms = turn.get("t_ms")
        lines.append(f'<li class="turn {role}" data-t-ms="{e(t_ms)}"><span class="at">{timeline.clock(t_ms)}</span>'
                     f'<span class="who">{role}</span><span class="said">{e(turn.get("text"))}</span>{cut}</li>')
    return '<ol class="transcript" id="transcript">' + "".join(lines) + "</ol>"


def _timeline(events: list[timeline.Event]) -> str:
    if not events:
        return '<p class="muted">No barge-in, tool, engine switch or keypad digit.</p>'
    return ('<table class="timeline" id="timeline"><tbody>'
            + "".join(f'<tr class="event {e(ev.kind)}" data-t-ms="{e(ev.t_ms)}"><td>{timeline.clock(ev.t_ms)}</td>'
                      f"<td>{e(ev.label)}</td><td>{e(ev.detail)}</td></tr>" for ev in events)
            + "</tbody></table>")


def _player(record: CallRecord) -> str:
    if not record.recording_path:
        return '<p class="muted">Not recorded.</p>'
    base = f"/console/records/{e(record.id)}"
    return (f'<div class="player"><canvas id="waveform" width="960" height="140" data-peaks="{base}/peaks" '
            f'aria-label="Waveform: caller above, bot below"></canvas>'
            f'<audio id="recording" controls preload="auto" src="{base}/recording"></audio>'
            f'<p class="muted">Caller above, bot below, as the caller heard it. Click the waveform, a turn or an '
            f"event to play from there.</p></div>")


async def _record(request: web.Request, folder: Path) -> web.Response:
    call_id = request.match_info["id"]
    csrf = auth.csrf_token(request)
    record = await database(request).store.get_call(call_id)
    if record is None:
        return page("Call not found", f'<p class="error">No call {e(call_id)}.</p>'
                    '<p><a href="/console/records">All call records</a></p>', status=404, csrf=csrf,
                    current="/console/records")
    lines = await asyncio.to_thread(timeline.read_lines, timeline.transcript_path(folder, record))
    body = (_facts(record) + "<h2>Recording</h2>" + _player(record)
            + "<h2>Latencies</h2>" + _latencies(record, timeline.barge_in_reactions_us(lines))
            + "<h2>Transcript</h2>" + _transcript(record)
            + "<h2>Timeline</h2>" + _timeline(timeline.events(record, lines)))
    live = ""
    if record.outcome is None:
        live = f'<p><a href="/console/calls/{e(record.id)}">This call is in progress: follow it live</a></p>'
    return page(f"Call {record.id}", live + body, csrf=csrf, current="/console/records", scripts=("record.js",))


# -- data routes -------------------------------------------------------------------------------------------------

@signed_in_only(kind="data")
async def recording(request: web.Request) -> web.StreamResponse:
    try:
        return recording_response(await recording_file(database(request), request.match_info["id"]))
    except RecordingUnavailable as exc:
        return json_error(exc.status, str(exc))


def wav_peaks(path: Path, points: int = WAVE_POINTS) -> dict:
    """The loudest sample (0 to 1) of each of about ``points`` equal slices of each channel: what the waveform
    draws. Read in blocks (an hour-long call is 115 MB of stereo), for a thread."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        if width != 2 or channels not in (1, 2):
            raise ValueError(f"{path.name}: {channels} channels of {8 * width}-bit samples, expected 16-bit mono "
                             "or stereo")
        per_slice = max(1, -(-frames // points))
        peaks = np.zeros((-(-frames // per_slice), channels))
        done = 0
        while done < len(peaks):
            block = np.frombuffer(w.readframes(per_slice * max(1, READ_FRAMES // per_slice)), dtype="<i2")
            if not block.size:
                break           # fewer frames than the header says: the rest stays silent
            block = np.abs(block.reshape(-1, channels).astype(np.int32))
            whole = len(block) // per_slice
            if whole:
                peaks[done:done + whole] = block[:whole * per_slice].reshape(whole, per_slice, channels).max(axis=1)
            if len(block) > whole * per_slice:        # only at the end of the file
                peaks[done + whole] = block[whole * per_slice:].max(axis=0)
                whole += 1
            done += whole
    names = ["caller", "bot"] if channels == 2 else ["audio"]
    return {"rate": rate, "duration_s": round(frames / rate, 3) if rate else 0, "channels": names,
            "peaks": [[round(float(v) / 32768, 3) for v in peaks[:, c]] for c in range(channels)]}


@signed_in_only(kind="data")
async def peaks(request: web.Request) -> web.Response:
    call_id = request.match_info["id"]
    try:
        path = await recording_file(database(request), call_id)
        return web.json_response(await asyncio.to_thread(wav_peaks, path), headers={"Cache-Control": "no-store"})
    except RecordingUnavailable as exc:
        return json_error(exc.status, str(exc))
    except (OSError, EOFError, wave.Error, ValueError) as exc:
        log.warning("recording_unreadable", call_id=call_id, error=str(exc))
        return json_error(422, f"the recording of call {call_id} is not a readable WAV: {exc}")
