"""``/api/calls``: the call records — a filtered, paged list, one call in full, its recording."""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from ..store import OUTCOMES, CallSummary, InvalidCursor, MAX_PAGE
from ..store.calls import number_digits
from .common import BadParameter, Database, Query, database, json_error

log = structlog.get_logger("voicebot.api")
LIST_PARAMETERS = ("persona", "since", "until", "outcome", "limit", "cursor", "carrier", "number")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/calls", list_calls)
    router.add_get("/calls/{id}", get_call)
    router.add_get("/calls/{id}/recording", get_recording)


def _with_links(record: CallSummary) -> dict:
    body = record.to_dict()
    body["recording_url"] = f"/api/calls/{record.id}/recording" if record.recording_path else None
    return body


def list_filters(parameters, *, default_limit: int = 50) -> dict:
    """``Store.list_calls``'s keyword arguments from a list request's query (the API's and the console's);
    BadParameter naming the first one wrong."""
    query = Query(parameters, LIST_PARAMETERS)
    since, until = query.time("since"), query.time("until")
    if since and until and until <= since:
        raise BadParameter("until", "must be later than since")
    number = query.text("number")
    if number is not None:
        try:
            number_digits(number)
        except ValueError as exc:
            raise BadParameter("number", str(exc)) from None
    return dict(persona=query.text("persona"), carrier=query.text("carrier"), number=number, since=since,
                until=until, outcome=query.choice("outcome", OUTCOMES),
                limit=query.integer("limit", default_limit, minimum=1), cursor=query.text("cursor"))


async def list_calls(request: web.Request) -> web.Response:
    try:
        filters = list_filters(request.query)
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


class RecordingUnavailable(Exception):
    """A call's recording cannot be served: ``status`` and a message saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def recording_file(db: Database, call_id: str) -> Path:
    """The WAV of a call's recording, only from inside recordings_dir; RecordingUnavailable otherwise."""
    record = await db.store.get_call(call_id)
    if record is None:
        raise RecordingUnavailable(404, f"no call {call_id}")
    if not record.recording_path:
        raise RecordingUnavailable(404, f"call {call_id} has no recording")
    folder = db.recordings_dir.resolve()
    path = (folder / record.recording_path).resolve()     # a relative path is taken from recordings_dir
    if not path.is_relative_to(folder):
        log.warning("recording_outside_recordings_dir", call_id=call_id, path=str(path), recordings_dir=str(folder))
        raise RecordingUnavailable(403, f"the recording of call {call_id} is not inside recordings_dir; not served")
    if not path.is_file():
        raise RecordingUnavailable(404, f"the recording of call {call_id} is gone ({Path(record.recording_path).name} "
                                        "no longer exists)")
    return path


def recording_response(path: Path) -> web.FileResponse:
    """The WAV, inline (a browser plays it; ranges let it seek)."""
    return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                           "Content-Disposition": f'inline; filename="{path.name}"'})


async def get_recording(request: web.Request) -> web.StreamResponse:
    try:
        return recording_response(await recording_file(database(request), request.match_info["id"]))
    except RecordingUnavailable as exc:
        return json_error(exc.status, str(exc))
