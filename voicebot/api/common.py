"""What the admin API's route modules share: the database handles, JSON errors, query parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aiohttp import web

from .. import jsoncodec
from ..dialplan import Dialplan
from ..http_limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, read_body
from ..store import RecordWriter, Store, parse_time


@dataclass
class Database:
    """The process's database handles: opened when the server starts, closed after its calls have ended."""

    url: str
    spool_path: Path
    recordings_dir: Path
    store: Store | None = None
    records: RecordWriter | None = None


DATABASE = web.AppKey("database", Database)
DIALPLAN = web.AppKey("dialplan", Dialplan)     # what a campaign's persona is checked against


def database(request: web.Request) -> Database:
    return request.config_dict[DATABASE]


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own routing refusals (no such route, method not allowed) in the API's JSON shape, so a client
    reads every error the same way (the body limits answer JSON of their own, in http_limits)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        problem = (f"no such resource: {request.path}" if exc.status == 404
                   else f"{request.method} is not allowed on {request.path}")
        return json_error(exc.status, problem, **{k: v for k, v in exc.headers.items() if k == "Allow"})


class BadParameter(Exception):
    """A query parameter is wrong: answered 400, naming it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


def operation_status(exc: Exception) -> int:
    """A refused campaign or do-not-call operation's HTTP status: 404 no such thing, 409 a conflict (a name taken,
    a state that does not allow the change), else 400."""
    from ..campaigns.manage import Conflict, NotFound

    return 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400


def operation_error(exc: Exception) -> web.Response:
    """A refused operation as JSON: its status (operation_status), and the message says what was wrong and where."""
    return json_error(operation_status(exc), str(exc))


async def read_upload(request: web.Request) -> bytes:
    """The body of a request that carries a file (a contact list, numbers to import): it may be far larger than
    the server's limit for other requests, up to http_limits.MAX_UPLOAD_BYTES (413 beyond)."""
    return await read_body(request, MAX_UPLOAD_BYTES)


async def read_json(request: web.Request, *, required: tuple[str, ...], optional: tuple[str, ...] = (),
                    upload: bool = False) -> dict:
    """The request's JSON object with these string fields (BadParameter naming the first one wrong, or an
    unknown one), as large as any request may be, or as an upload when it carries a file (``upload``)."""
    try:
        body = jsoncodec.loads(await read_body(request, MAX_UPLOAD_BYTES if upload else MAX_BODY_BYTES))
    except ValueError as exc:
        raise BadParameter("body", f"expected a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise BadParameter("body", f"expected a JSON object, got {type(body).__name__}")
    known = required + optional
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadParameter(unknown[0], f"unknown field (known: {', '.join(known)})")
    for name in known:
        if name in body and body[name] is not None and not isinstance(body[name], str):
            raise BadParameter(name, f"expected a string, got {type(body[name]).__name__}")
        if name in required and not (body.get(name) or "").strip():
            raise BadParameter(name, "is required")
    return body


class Query:
    """Typed access to a request's query parameters; unknown ones are refused (a misspelt filter would
    otherwise silently list everything)."""

    def __init__(self, query: Mapping[str, str], known: tuple[str, ...]) -> None:
        unknown = sorted(set(query) - set(known))
        if unknown:
            raise BadParameter(unknown[0], f"unknown parameter (known: {', '.join(known)})")
        self.query = query

    def text(self, name: str) -> str | None:
        value = self.query.get(name)
        if value is not None and not value.strip():
            raise BadParameter(name, "is empty")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is not None and value not in choices:
            raise BadParameter(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: int, minimum: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadParameter(name, f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise BadParameter(name, f"must be ≥ {minimum}, got {number}")
        return number

    def time(self, name: str) -> datetime | None:
        """ISO 8601; without a UTC offset it is taken as UTC."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            raise BadParameter(name, str(exc)) from None
