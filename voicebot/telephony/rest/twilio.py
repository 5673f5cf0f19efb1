"""Twilio's REST Calls resource (API 2010-04-01): hang-up and transfer of a live call.

``POST {api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, form-encoded, HTTP Basic
``TWILIO_ACCOUNT_SID``:``TWILIO_AUTH_TOKEN``. Hang-up: ``Status=completed``. Transfer: new TwiML for the call,
``<Response><Dial><Number>+1…</Number></Dial></Response>`` (``<Sip>`` for a SIP URI); the running
``<Connect><Stream>`` then ends (Twilio sends ``stop`` and closes the socket) and Twilio dials the target.

No send_dtmf: any new TwiML replaces the stream, and Twilio has no REST action that plays digits into a call
while it stays connected to us; the digits are played in-band, as DTMF tones in the bot's audio.

SignalWire's Compatibility (LaML) API is the same resource under another base URL: :mod:`.signalwire`
configures this class for it.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from yarl import URL

from ...config import Settings
from .base import ApiConfig, CallControl, Configured, basic_auth, Target, configured, missing_env

API_VERSION = "2010-04-01"
ACCOUNT_SID_ENV = "TWILIO_ACCOUNT_SID"
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
NO_REST_DTMF = ("{product}'s REST API cannot play digits into a call that stays on our media stream: "
                "play them in-band as DTMF tones")


def dial_twiml(target: Target) -> str:
    """TwiML (and cXML) that connects the call to ``target``."""
    noun = "Number" if target.kind == "number" else "Sip"
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial><{noun}>{escape(target.value)}</{noun}>'
            f'</Dial></Response>')


class TwilioCallControl(CallControl):
    carrier = "twilio"
    product = "Twilio"
    request_id_headers = ("Twilio-Request-Id",)

    @classmethod
    def configure(cls, settings: Settings) -> Configured:
        twilio = settings.twilio
        credentials = missing_env({ACCOUNT_SID_ENV: twilio.account_sid or "", AUTH_TOKEN_ENV: twilio.auth_token or ""},
                                  ACCOUNT_SID_ENV, AUTH_TOKEN_ENV)
        config = ApiConfig(twilio.api_base_url, twilio.account_sid, twilio.auth_token)
        return configured(config, {"hang_up": credentials, "transfer": credentials,
                                   "send_dtmf": NO_REST_DTMF.format(product=cls.product)})

    def auth_headers(self) -> dict[str, str]:
        return basic_auth(self.config.user, self.config.secret)

    def _call_url(self, call_id: str) -> URL:
        return URL(self.config.base_url) / API_VERSION / "Accounts" / self.config.user / "Calls" / f"{call_id}.json"

    async def _hang_up(self, meta) -> None:
        await self._request("hang_up", meta.call_id, "POST", self._call_url(meta.call_id), form={"Status": "completed"})

    async def _transfer(self, meta, target: Target) -> None:
        documents = self.config.documents    # None: the TwiML travels in the request
        form = ({"Twiml": dial_twiml(target)} if documents is None
                else {"Url": documents.url(self.carrier, meta.call_id, target), "Method": "POST"})
        await self._request("transfer", meta.call_id, "POST", self._call_url(meta.call_id), form=form)

    def vendor_error(self, body, text: str) -> tuple[str | None, str]:
        # {"code": 20404, "message": "…", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}
        if isinstance(body, dict) and body.get("message"):
            code = body.get("code")
            return (str(code) if code is not None else None), str(body["message"])
        return None, text.strip()
