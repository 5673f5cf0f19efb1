"""Carriers' call-control APIs: hang up, transfer and play DTMF on a live call, behind one small interface.

One module per carrier (its REST requests, authentication and error shapes); :mod:`.base` is what they share.
The wire modules beside this package stay wire-only. A server builds one client per carrier and shares it
between the carrier's calls::

    control = call_control_for("telnyx", settings, http)   # None: no call-control API (end the call in-band)
    if control is not None and control.capabilities.transfer:
        await control.transfer(call.meta, "+15550001111")    # CallControlError says what failed

``capabilities_of`` gives the same answer about capabilities without an HTTP session (``voicebot check``).
Plivo and SignalWire fetch a transfer's instructions from our server: :func:`add_routes` serves them.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from ...config import ConfigError, Settings
from ..twilio_auth import stream_token_secret
from .base import ACTIONS, CallControl, CallControlError, Capabilities, Target, check_digits, parse_target
from .documents import TransferDocuments, add_document_route
from .plivo import PlivoCallControl
from .signalwire import SignalWireCallControl
from .telnyx import TelnyxCallControl
from .twilio import TwilioCallControl
from .vonage import VonageCallControl

__all__ = [
    "ACTIONS", "CallControl", "CallControlError", "Capabilities", "Target", "add_routes", "call_control_for",
    "capabilities_of", "check_digits", "parse_target", "report",
]

CLIENTS: dict[str, type[CallControl]] = {cls.carrier: cls for cls in (
    TwilioCallControl, SignalWireCallControl, TelnyxCallControl, PlivoCallControl, VonageCallControl)}
# Carriers whose calls are ended in-band (Asterisk HANGUP, AudioSocket hangup frame, jambonz disconnect,
# closing the stream; the browser softphone's hangup message): no call-control API here.
IN_BAND_ONLY = ("exotel", "jambonz", "asterisk", "audiosocket", "freeswitch", "browser")


def _client_class(carrier: str, settings: Settings) -> type[CallControl] | None:
    if carrier in CLIENTS:
        return CLIENTS[carrier]
    if carrier not in IN_BAND_ONLY:
        raise ValueError(f"unknown carrier {carrier!r} (known: {', '.join([*CLIENTS, *IN_BAND_ONLY])})")
    fields = settings.carrier_fields(carrier)
    if "call_control" in fields.data:
        raise ConfigError(settings.source, fields.path("call_control"), f"{carrier} has no call-control API")
    return None


def call_control_for(carrier: str, settings: Settings, http: aiohttp.ClientSession) -> CallControl | None:
    """The carrier's call-control client, or None when the carrier has no call-control API. Raises ConfigError
    when its ``carriers.<name>.call_control`` section is wrong."""
    cls = _client_class(carrier, settings)
    return None if cls is None else cls.from_settings(settings, http)


def capabilities_of(carrier: str, settings: Settings) -> tuple[Capabilities, dict[str, str]]:
    """What ``call_control_for(carrier, …)`` would offer, and why the rest is off."""
    cls = _client_class(carrier, settings)
    if cls is None:
        return Capabilities(), {action: f"{carrier} has no call-control API (its calls are ended in-band)"
                                for action in ACTIONS}
    setup = cls.configure(settings)
    return setup.capabilities, setup.missing


def report(settings: Settings) -> list[str]:
    """One line per carrier with a call-control API: the actions on offer and why the others are off. Raises
    ConfigError for a wrong ``call_control`` section (also on carriers that have no such API)."""
    for carrier in IN_BAND_ONLY:
        capabilities_of(carrier, settings)
    lines = []
    for carrier in CLIENTS:
        capabilities, missing = capabilities_of(carrier, settings)
        offered = ", ".join(action for action in ACTIONS if getattr(capabilities, action)) or "none"
        by_reason: dict[str, list[str]] = {}
        for action, reason in missing.items():
            by_reason.setdefault(reason, []).append(action)
        off = "; ".join(f"{', '.join(actions)} ({reason})" for reason, actions in by_reason.items())
        lines.append(f"call control {carrier}: {offered}" + (f"; off: {off}" if off else ""))
    return lines


def add_routes(app: web.Application, settings: Settings) -> None:
    """Serve the transfer documents Plivo and SignalWire fetch (``/call-control/{carrier}/transfer/{token}``);
    they must be reachable at ``settings.public_url``."""
    renderers = {carrier: cls.document_renderer for carrier, cls in CLIENTS.items() if cls.document_renderer}
    add_document_route(app, TransferDocuments(settings.public_url, stream_token_secret()), renderers)
