"""``/api/campaigns``: outbound campaigns — list, create (the YAML definition and the contacts' CSV as texts),
status, start / pause / resume / cancel, export. The operations are ``campaigns.manage``'s, as on the CLI."""

from __future__ import annotations

from aiohttp import web

from ..campaigns import manage
from .common import DIALPLAN, BadParameter, Query, database, json_error, operation_error, read_json

ACTIONS = tuple(manage.ACTIONS)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/campaigns", list_campaigns)
    router.add_post("/campaigns", create_campaign)
    router.add_get("/campaigns/{name}", get_campaign)
    router.add_get("/campaigns/{name}/export", export_campaign)
    router.add_post("/campaigns/{name}/{action}", change_campaign)


async def list_campaigns(request: web.Request) -> web.Response:
    return web.json_response({"campaigns": await manage.statuses(database(request).store)})


async def create_campaign(request: web.Request) -> web.Response:
    """Body: ``{"definition": "<the YAML text>", "contacts": "<the CSV text>"}``."""
    try:
        body = await read_json(request, required=("definition", "contacts"), upload=True)   # the contacts: a file
    except BadParameter as exc:
        return json_error(400, str(exc))
    try:
        created = await manage.create_from_text(database(request).store, body["definition"], body["contacts"],
                                                request.config_dict[DIALPLAN])
    except manage.OperationError as exc:
        return operation_error(exc)
    return web.json_response(created.to_json(), status=201,
                             headers={"Location": f"/api/campaigns/{created.name}"})


async def get_campaign(request: web.Request) -> web.Response:
    try:
        return web.json_response(await manage.status(database(request).store, request.match_info["name"]))
    except manage.OperationError as exc:
        return operation_error(exc)


async def change_campaign(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ACTIONS:
        return json_error(404, f"no such action {action!r} (expected one of {', '.join(ACTIONS)})")
    store = database(request).store
    try:
        row = await manage.change_state(store, request.match_info["name"], action)
        return web.json_response(await manage.status(store, row.name))
    except manage.OperationError as exc:
        return operation_error(exc)


async def export_campaign(request: web.Request) -> web.Response:
    try:
        fmt = Query(request.query, ("format",)).choice("format", manage.EXPORT_FORMATS) or "csv"
    except BadParameter as exc:
        return json_error(400, str(exc))
    name = request.match_info["name"]
    try:
        text, _rows = await manage.export(database(request).store, name, fmt)
    except manage.OperationError as exc:
        return operation_error(exc)
    if fmt == "json":
        return web.Response(text=text, content_type="application/json")
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
