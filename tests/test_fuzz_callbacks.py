"""The carriers' progress callbacks for campaign calls (voicebot/telephony/rest: Twilio's status and AMD form
posts, Telnyx's JSON call events), genuine -- signed the carrier's way, so the fuzzed content gets past the
signature check -- but with fields broken.

Properties: ``read_callback`` gives nothing, a ``CallProgress`` of well-typed fields (a carrier call id that is
text, a status the store knows, a verdict as text, a finite duration of zero or more, an aware time), or a
``CallbackRefused`` saying why (answered 403) -- never another exception, which the aiohttp handler would answer
500 with a traceback for each retry the carrier makes."""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given
from hypothesis import strategies as st

from voicebot.config import Settings, TwilioSettings
from voicebot.telephony.rest import call_control_for
from voicebot.telephony.rest.base import ANSWERED_BY, PROGRESS, CallbackRefused, CallProgress, SeenCallbacks
from voicebot.telephony.twilio_auth import compute_signature

from fuzzing import mutated

NOW = datetime(2026, 12, 5, 10, 0, 0, tzinfo=timezone.utc)
ATTEMPT = "0123456789abcdef.c2lnbmVkLWF0dGVtcHQtdG9rZW4"
CALLBACK_URL = "https://bot.example.com/campaigns/twilio/status?attempt=" + ATTEMPT


def well_formed(progress: CallProgress | None, *, known_verdicts: bool) -> None:
    if progress is None:
        return
    assert isinstance(progress, CallProgress)
    assert isinstance(progress.carrier_call_id, str) and progress.carrier_call_id, progress
    assert progress.status in PROGRESS, progress
    # a verdict Twilio adds later passes through as text: the campaign call treats one it does not know as
    # "unknown" (amd_verdict_unknown_value); Telnyx's results are mapped here, so they are always known ones
    assert progress.answered_by is None or isinstance(progress.answered_by, str), progress
    if known_verdicts and progress.answered_by is not None:
        assert progress.answered_by in ANSWERED_BY, progress
    assert progress.duration_s is None or (isinstance(progress.duration_s, float) and math.isfinite(progress.duration_s)
                                           and progress.duration_s >= 0), progress
    assert progress.sequence is None or isinstance(progress.sequence, int)
    assert progress.detail is None or isinstance(progress.detail, str)
    assert progress.attempt_token is None or isinstance(progress.attempt_token, str)
    assert isinstance(progress.at, datetime) and progress.at.tzinfo is not None


def read(control, url: str, headers: dict, body: bytes, *, known_verdicts: bool = False) -> None:
    control._seen = SeenCallbacks()        # every example is the first of its kind: a replay is another test
    try:
        progress = control.read_callback(url, headers, body, now=NOW)
    except CallbackRefused as exc:
        assert str(exc).strip()
        return
    well_formed(progress, known_verdicts=known_verdicts)


# -- Telnyx: JSON call events, signed with ed25519 over "timestamp|body" -----------------------------------

SIGNING_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = base64.b64encode(SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _telnyx_event(kind: str, **payload) -> dict:
    return {"data": {"record_type": "event", "event_type": kind, "id": f"evt-{kind}", "occurred_at":
                     "2026-12-05T09:59:58.123456Z", "payload": {
                         "call_control_id": "v3:abc", "connection_id": "1494404757140276705", "from": "+15550002000",
                         "to": "+15551230001", "client_state": base64.b64encode(ATTEMPT.encode()).decode(),
                         **payload}},
            "meta": {"attempt": 1, "delivered_to": "https://bot.example.com/campaigns/telnyx/events"}}


TELNYX_EVENTS = [
    _telnyx_event("call.answered"),
    _telnyx_event("call.hangup", hangup_cause="normal_clearing", sip_hangup_cause="200",
                  start_time="2026-12-05T09:59:20.000000Z", end_time="2026-12-05T09:59:58.000000Z"),
    _telnyx_event("call.hangup", hangup_cause="user_busy", sip_hangup_cause="486"),
    _telnyx_event("call.machine.detection.ended", result="human"),
    _telnyx_event("call.machine.greeting.ended", result="beep_detected"),
]


@pytest.fixture(scope="module")
def telnyx():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TELNYX_PUBLIC_KEY", PUBLIC_KEY)
        settings = Settings(source="test.yaml", public_url="https://bot.example.com",
                            carriers={"telnyx": {"call_control": {"connection_id": "1494404757140276705"}}})
        return call_control_for("telnyx", settings, http=None)


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(NOW.timestamp()) - 2)
    return {"telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": base64.b64encode(SIGNING_KEY.sign(stamp.encode() + b"|" + body)).decode()}


@given(st.one_of(st.sampled_from(TELNYX_EVENTS).flatmap(lambda e: mutated(e, max_changes=3)),
                 st.sampled_from(TELNYX_EVENTS)).map(lambda doc: json.dumps(doc).encode())
       | st.binary(max_size=60))
@example(json.dumps(_telnyx_event("call.hangup", hangup_cause=["normal_clearing"])).encode())   # unhashable
@example(json.dumps({"data": {"event_type": "call.answered", "id": ["evt"], "payload": {"call_control_id": "v3"}}}
                    ).encode())
@example(json.dumps(_telnyx_event("call.machine.detection.ended", result={"human": 1})).encode())
@example(json.dumps(_telnyx_event("call.answered", call_control_id=7)).encode())
@example(json.dumps(_telnyx_event("call.hangup", hangup_cause="normal_clearing", start_time="2026-12-05T09:59:58",
                                  end_time="2026-12-05T09:59:20Z")).encode())           # naive and aware times
def test_a_signed_telnyx_event_gives_progress_or_is_refused(telnyx, body) -> None:
    read(telnyx, "https://bot.example.com/campaigns/telnyx/events", signed(body), body, known_verdicts=True)


# -- Twilio: form posts signed with HMAC-SHA1 over the URL and the fields -----------------------------------

SID = "AC" + "7a" * 16
TOKEN = "twilio-fuzz-token"
TWILIO_FORMS = [
    {"AccountSid": SID, "CallSid": "CA" + "1" * 32, "CallStatus": "completed", "CallDuration": "42",
     "SequenceNumber": "3", "Timestamp": format_datetime(NOW - timedelta(seconds=2)), "SipResponseCode": "200",
     "Direction": "outbound-api", "To": "+15551230001", "From": "+15550002000"},
    {"AccountSid": SID, "CallSid": "CA" + "1" * 32, "CallStatus": "busy", "SequenceNumber": "1",
     "SipResponseCode": "486"},
    {"AccountSid": SID, "CallSid": "CA" + "1" * 32, "AnsweredBy": "machine_end_beep",
     "MachineDetectionDuration": "4123"},
]


@pytest.fixture(scope="module")
def twilio():
    settings = Settings(source="test.yaml", public_url="https://bot.example.com", carriers={},
                        twilio=TwilioSettings(auth_token=TOKEN, account_sid=SID))
    return call_control_for("twilio", settings, http=None)


def as_form(doc: dict) -> list[tuple[str, str]]:
    """A mutated form as Twilio would post it: every value text (a JSON value written out)."""
    return [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in doc.items()]


@given(st.sampled_from(TWILIO_FORMS).flatmap(lambda form: st.one_of(st.just(form), mutated(form, max_changes=3)))
       .map(as_form))
@example([("AccountSid", SID), ("CallSid", "CA1"), ("CallStatus", "completed"), ("CallDuration", "9" * 400)])
@example([("AccountSid", SID), ("CallSid", "CA1"), ("CallStatus", "completed"), ("CallDuration", "-5")])
@example([("AccountSid", SID), ("CallSid", "CA1"), ("CallStatus", "completed"),
          ("Timestamp", "Sat, 05 Dec 99999 10:00:00 +0000")])
def test_a_signed_twilio_callback_gives_progress_or_is_refused(twilio, form) -> None:
    body = urlencode(form).encode()
    read(twilio, CALLBACK_URL, {"X-Twilio-Signature": compute_signature(TOKEN, CALLBACK_URL, form)}, body)

