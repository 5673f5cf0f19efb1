"""Local fakes of carriers' call-control REST APIs (tests and ``voicebot demo``), one module per vendor.

Each is an aiohttp server on loopback that checks credentials, paths and bodies the way its vendor does,
answers in the vendor's success and error shapes, records every request, and tells a registered call's
listener what was done to it::

    async with FakeTwilioApi(account_sid, auth_token) as api:      # point twilio.api_base_url at api.base_url
        api.register_call(call_sid, on_update=lambda update: ...)  # update.ends_stream: end the media stream
        ...
        update = await api.wait_for_update(lambda u: u.action == "transfer")

The Twilio and Telnyx fakes also place outbound calls: per destination number a callee (:mod:`.callees`:
``Human``, ``Voicemail``, ``Busy``, ``NoAnswer``, ``Failed``; ``ShortCall`` for load tests) answers, signed callbacks go to our server, and an
answered call follows the instructions into our media WebSocket::

    api = FakeTwilioApi(sid, token, owned_numbers={"+15550002000"}, default_callee=Human())
    api.callees["+15551230001"] = Voicemail()
    call = await api.wait_ended(call_sid)        # call.callbacks, call.result (what the callee heard), …
"""

from voicebot.simulator.carrier_api.base import ApiRequest, CallUpdate, FakeCall, FakeCarrierApi
from voicebot.simulator.carrier_api.callees import (Busy, Callback, Callee, DialledCall, Failed, Human, NoAnswer,
                                                    ShortCall, Voicemail, speech, tone)
from voicebot.simulator.carrier_api.plivo import FakePlivoApi
from voicebot.simulator.carrier_api.telnyx import FakeTelnyxApi
from voicebot.simulator.carrier_api.twilio import FakeSignalWireApi, FakeTwilioApi
from voicebot.simulator.carrier_api.vonage import FakeVonageApi, new_application_key

__all__ = [
    "ApiRequest", "Busy", "Callback", "Callee", "DialledCall", "Failed", "Human", "NoAnswer", "ShortCall", "Voicemail", "speech",
    "tone", "CallUpdate", "FakeCall", "FakeCarrierApi", "FakePlivoApi", "FakeSignalWireApi", "FakeTelnyxApi",
    "FakeTwilioApi", "FakeVonageApi", "new_application_key",
]
