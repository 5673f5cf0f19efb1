"""The browser softphone's side of a call (voicebot/telephony/browser.py), without a browser: what the console's
phone page does, message for message, so the shared carrier checks run over the browser socket.

It connects to ``/console/phone/stream`` with the console's session cookie (made from ``$VOICEBOT_ADMIN_TOKEN``)
and this server as its Origin, as the page does; sends ``{"type":"start","rate":…,"persona":…,"engine":…}``, then
binary L16 at that rate. From the server it takes binary L16 (even sizes only), and TEXT frames of exactly these
shapes: ``{"type":"mark","name":str}``, ``{"type":"clear"}``, ``{"type":"hangup"}`` and
``{"type":"event","event":{"type":str,…}}``. It echoes a mark once the audio before it has played, never one a
clear dropped (that audio was not heard), and hangs up with ``{"type":"hangup"}``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, ClearPlayback, Message, ProtocolViolation, QueueMark, ServerEvent,
                                       Step)
from voicebot.simulator.l16 import AUTO, L16Protocol, dumps, exact_fields, simulate

COOKIE = "voicebot_console"
TOKEN_ENV = "VOICEBOT_ADMIN_TOKEN"
SHAPES: dict[str, dict[str, type]] = {"mark": {"type": str, "name": str}, "clear": {"type": str},
                                      "hangup": {"type": str}, "event": {"type": str, "event": dict}}


def console_cookie(token: str) -> str:
    """The Cookie header a browser signed in with ``token`` sends."""
    from voicebot.console.auth import session_value

    return f"{COOKIE}={session_value(token)}"


class BrowserProtocol(L16Protocol):
    name = "browser"
    path = "/console/phone/stream"

    def __init__(self, base_url: str, *, to: str | None = None, rate: int = 16000, persona: str | None = None,
                 engine: str | None = None, token: str | None = AUTO, origin: str | None = AUTO,
                 query: dict[str, str] | None = None, events: list[dict] | None = None,
                 call_id: str | None = None) -> None:
        """``to`` is not sent (the page has no numbers: ``persona`` by name, else the default); ``token``:
        ``AUTO`` = ``$VOICEBOT_ADMIN_TOKEN``, None sends no cookie; ``origin``: ``AUTO`` = the server's own,
        None sends none; ``events`` collects the call's live events as they arrive."""
        if token == AUTO:
            token = os.environ.get(TOKEN_ENV)
        if origin == AUTO:
            parts = urlsplit(base_url)
            origin = f"{parts.scheme}://{parts.netloc}"
        headers = {}
        if token:
            headers["Cookie"] = console_cookie(token)
        if origin:
            headers["Origin"] = origin
        super().__init__(base_url, headers=headers, query=query, codec=WireCodec("l16", rate), call_id=call_id)
        self.rate, self.persona, self.engine = rate, persona, engine
        self.events = events if events is not None else []

    def opening_messages(self) -> list[Message]:
        start: dict = {"type": "start", "rate": self.rate}
        if self.persona is not None:
            start["persona"] = self.persona
        if self.engine is not None:
            start["engine"] = self.engine
        return [dumps(start)]

    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        obj = self.json_object(text, excerpt)
        kind = obj.get("type")
        if kind not in SHAPES:
            raise ProtocolViolation(f"unknown type {kind!r} (only {', '.join(SHAPES)}): {excerpt!r}")
        exact_fields(obj, SHAPES[kind], kind, excerpt)
        if kind == "mark":
            return [QueueMark(obj["name"])]
        if kind == "clear":
            return [ClearPlayback()]
        if kind == "event":
            if not isinstance(obj["event"].get("type"), str):
                raise ProtocolViolation(f"event without a type: {excerpt!r}")
            self.events.append(obj["event"])
        return []       # hangup: the server closes the socket itself

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        return [] if cleared else [dumps({"type": "mark", "name": name})]

    def closing_messages(self) -> list[Message]:
        return [dumps({"type": "hangup"})]


async def simulate_call(base_url: str, *, to: str | None = None, from_: str | None = None, script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated softphone call against our server (``to`` and ``from_`` are taken, as every carrier's
    simulate_call takes them, and not sent). Options: ``rate`` (16000/24000), ``persona``, ``engine``, ``token``,
    ``origin``, ``events`` (see :class:`BrowserProtocol`); the rest go to :class:`SimulatedCall`."""
    return await simulate(BrowserProtocol, base_url, script, max_duration_s, {"to": to, **options})
