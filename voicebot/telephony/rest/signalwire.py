"""SignalWire's Compatibility (LaML) REST API: Twilio's Calls resource at the project's space.

``POST https://{space}/api/laml/2010-04-01/Accounts/{ProjectID}/Calls/{CallSid}.json``, HTTP Basic
``SIGNALWIRE_PROJECT_ID``:``SIGNALWIRE_API_TOKEN``; the space from ``carriers.signalwire.call_control.space_url``
(``example.signalwire.com``), or ``api_base_url`` for a proxy or a local fake (the URL before ``/2010-04-01``).
The request is Twilio's (:class:`~.twilio.TwilioCallControl` does the work), with one difference: SignalWire's
documented call update takes the new instructions only by ``Url``, so a transfer points it at a signed cXML
document on our server (:mod:`.documents`) instead of sending TwiML inline.
"""

from __future__ import annotations

import os
import re

from ...config import Settings
from ..twilio_auth import stream_token_secret
from .base import ApiConfig, Configured, call_control_fields, configured, missing_env, optional_url
from .documents import TransferDocuments
from .twilio import NO_REST_DTMF, TwilioCallControl, dial_twiml

PROJECT_ID_ENV = "SIGNALWIRE_PROJECT_ID"
API_TOKEN_ENV = "SIGNALWIRE_API_TOKEN"
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


class SignalWireCallControl(TwilioCallControl):
    carrier = "signalwire"
    product = "SignalWire"
    request_id_headers = ()
    document_renderer = staticmethod(dial_twiml)
    dials = False       # its callbacks are signed with X-SignalWire-Signature; campaigns dial Twilio or Telnyx

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        fields = call_control_fields(settings, cls.carrier)
        space = fields.get("space_url", str, None)
        base_url = optional_url(fields, "api_base_url")
        fields.reject_unknown()
        if space is not None and not _HOST.fullmatch(space):
            raise fields.error("space_url", f"expected the space's host name (example.signalwire.com), got {space!r}")
        if space is not None and base_url is not None:
            raise fields.error("space_url", "set either space_url or api_base_url, not both")
        if space is not None:
            base_url = f"https://{space}/api/laml"
        problem = missing_env(os.environ, PROJECT_ID_ENV, API_TOKEN_ENV)
        if problem is None and base_url is None:
            problem = f"carriers.{cls.carrier}.call_control.space_url is not set"
        config = ApiConfig(base_url or "", os.environ.get(PROJECT_ID_ENV), os.environ.get(API_TOKEN_ENV),
                           documents=TransferDocuments(settings.public_url, stream_token_secret()))
        return configured(config, {"hang_up": problem, "transfer": problem,
                                   "send_dtmf": NO_REST_DTMF.format(product=cls.product)})
