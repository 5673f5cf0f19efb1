"""``/api/calls``: the call records — a filtered, paged list, one call in full, its recording."""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from ..store import OUTCOMES, CallSummary, InvalidCursor, MAX_PAGE
from .common import BadParameter, Query, database, json_error

log = structlog.get_logger("voicebot.api")
LIST_PARAMETERS = ("persona", "since", "until", "outcome", "limit", "cursor")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/calls", list_calls)
    router.add_get("/calls/{id}", get_call)
    router.add_get("/calls/{id}/recording", get_recording)


def _with_links(record: CallSummary) -> dict:
    body = record.to_dict()
    body["recording_url"] = f"/api/calls/{record.id}/recording" if record.recording_path else None
    return body


async def list_calls(request: web.Request) -> web.Response:
    try:
        query = Query(request.query, LIST_PARAMETERS)
        since, until = query.time("since"), query.time("until")
        if since and until and until <= since:
            raise BadParameter("until", "must be later than since")
        filters = dict(persona=query.text("persona"), since=since, until=until,
                       outcome=query.choice("outcome", OUTCOMES), limit=query.integer("limit", 50, minimum=1),
                       cursor=query.text("cursor"))
    except BadParameter as exc:
        return json_error(400, str(exc))
    try:
        records, next_cursor = await database(request).store.list_calls(**filters)
    except InvalidCursor as exc:
        return json_error(400, f"cursor: {exc}")
    return web.json_response({"calls": [_with_links(r) for r in records], "next_cursor": next_cursor,
                              "limit": min(filters["limit"], MAX_PAGE)})


async def get_call(request: web.Request) -> web.Response:
    call_id = request.match_info["id"]
    record = await database(request).store.get_call(call_id)
    if record is None:
        return json_error(404, f"no call {call_id}")
    return web.json_response(_with_links(record))


async def get_recording(request: web.Request) -> web.StreamResponse:
    db = database(request)
    call_id = request.match_info["id"]
    record = await db.store.get_call(call_id)
    if record is None:
        return json_error(404, f"no call {call_id}")
    if not record.recording_path:
        return json_error(404, f"call {call_id} has no recording")
    folder = db.recordings_dir.resolve()
    path = (folder / record.recording_path).resolve()     # a relative path is taken from recordings_dir
    if not path.is_relative_to(folder):
        log.warning("recording_outside_recordings_dir", call_id=call_id, path=str(path), recordings_dir=str(folder))
        return json_error(403, f"the recording of call {call_id} is not inside recordings_dir; not served")
    if not path.is_file():
        return json_error(404, f"the recording of call {call_id} is gone ({Path(record.recording_path).name} "
                               "no longer exists)")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                           "Content-Disposition": f'inline; filename="{path.name}"'})
