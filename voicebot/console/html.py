"""The console's HTML: one layout around every page, and escaping. Pages are plain server-rendered HTML; the
few live parts are small scripts in ``static/``."""

from __future__ import annotations

from html import escape

from aiohttp import web

NAV = (("/console/phone", "Phone"), ("/console/calls", "Live calls"), ("/console/records", "Call records"),
       ("/console/campaigns", "Campaigns"))


def e(value: object) -> str:
    """Text or attribute value, escaped."""
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, csrf: str = "", current: str = "", scripts: tuple[str, ...] = (),
           signed_in: bool = True) -> str:
    nav = "".join(f'<a href="{href}"{" aria-current=page" if href == current else ""}>{e(label)}</a>'
                  for href, label in NAV) if signed_in else ""
    logout = (f'<form method="post" action="/console/logout" class="logout"><input type="hidden" name="csrf" '
              f'value="{e(csrf)}"><button>Sign out</button></form>') if signed_in else ""
    tags = "".join(f'<script src="/console/static/{e(name)}" defer></script>' for name in scripts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="csrf-token" content="{e(csrf)}"><title>{e(title)} · voicebot</title>'
            f'<link rel="stylesheet" href="/console/static/console.css">{tags}</head>'
            f'<body><header><strong>voicebot</strong><nav>{nav}</nav>{logout}</header>'
            f'<main><h1>{e(title)}</h1>{body}</main></body></html>')


def page(title: str, body: str, *, status: int = 200, **options) -> web.Response:
    return web.Response(text=layout(title, body, **options), status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                                            "media-src 'self' blob:; frame-ancestors 'none'"})
