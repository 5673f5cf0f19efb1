"""``/api/dnc``: the do-not-call list — list, add, remove, import a file. The operations are
``campaigns.manage``'s, as on the CLI."""

from __future__ import annotations

from aiohttp import web

from ..campaigns import manage
from .common import BadParameter, Query, database, json_error, operation_error, read_json, read_upload


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/dnc", list_numbers)
    router.add_post("/dnc", add_number)
    router.add_post("/dnc/import", import_numbers)
    router.add_delete("/dnc/{phone}", remove_number)


def _region(request: web.Request, *known: str) -> str:
    return (Query(request.query, ("region", *known)).text("region") or "US").upper()


async def list_numbers(request: web.Request) -> web.Response:
    try:
        Query(request.query, ())
    except BadParameter as exc:
        return json_error(400, str(exc))
    return web.json_response({"numbers": await manage.dnc_list(database(request).store)})


async def add_number(request: web.Request) -> web.Response:
    """Body: ``{"phone": "...", "note": "...", "region": "US"}`` (note and region optional)."""
    try:
        body = await read_json(request, required=("phone",), optional=("note", "region"))
    except BadParameter as exc:
        return json_error(400, str(exc))
    try:
        number, added = await manage.dnc_add(database(request).store, body["phone"], source="api",
                                             region=str(body.get("region") or "US").upper(), note=body.get("note"))
    except manage.OperationError as exc:
        return operation_error(exc)
    return web.json_response({"phone": number, "added": added}, status=201 if added else 200)


async def remove_number(request: web.Request) -> web.Response:
    try:
        region = _region(request)
        number = await manage.dnc_remove(database(request).store, request.match_info["phone"], region=region)
    except BadParameter as exc:
        return json_error(400, str(exc))
    except manage.OperationError as exc:
        return operation_error(exc)
    return web.json_response({"phone": number, "removed": True})


async def import_numbers(request: web.Request) -> web.Response:
    """Body: the file itself (a CSV with a phone column, or one number per line), any content type."""
    try:
        region = _region(request)
    except BadParameter as exc:
        return json_error(400, str(exc))
    data = await read_upload(request)
    try:
        imported = await manage.dnc_import(database(request).store, data, source_name="request body", region=region)
    except manage.OperationError as exc:
        return operation_error(exc)
    return web.json_response(imported.to_json())
