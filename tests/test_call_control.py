"""Carriers' call-control clients against the local fakes of their REST APIs, on loopback.

Each client's requests are checked as the vendor checks them (the fakes refuse what the vendor refuses); these
tests also look at what arrived: the URL, the credentials, the exact body, the TwiML / Plivo XML / NCCO and the
transfer target it dials. Errors must carry the vendor's status and code, timeouts must fire, missing
credentials must switch a capability off with the reason, and no secret may reach a log line or an exception.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from conftest import PERSONAS, listening_socket
from voicebot.config import ConfigError, Settings, TwilioSettings, load_settings
from voicebot.dialplan import load_dialplan
from voicebot.simulator.carrier_api import (
    FakePlivoApi,
    FakeSignalWireApi,
    FakeTelnyxApi,
    FakeTwilioApi,
    FakeVonageApi,
    new_application_key,
)
from voicebot.telephony.base import CallMeta
from voicebot.telephony.rest import (
    CLIENTS,
    IN_BAND_ONLY,
    CallControl,
    CallControlError,
    Capabilities,
    add_routes,
    call_control_for,
    capabilities_of,
    parse_target,
)
from voicebot.telephony.rest.base import ApiConfig, configured
from voicebot.telephony.rest.documents import TransferDocuments
from voicebot.telephony.twilio_auth import stream_token_secret

ACCOUNT_SID = "AC" + "5f" * 16
AUTH_TOKEN = "twilio-auth-token-9d3e1c"
SW_PROJECT = "6c0a52e4-3b84-4b1e-9b43-0f5d7f1e2a11"
SW_TOKEN = "PTsignalwire-api-token-77ab"
TELNYX_KEY = "KEYtelnyx-api-key-0b9c41"
PLIVO_ID = "MAODU5ZDEWNMZKNMMXOW"
PLIVO_TOKEN = "plivo-auth-token-e1f20a"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
CALLER = "+15557654321"
OUR_NUMBER = "+15550000001"
SALES = "+15550001111"
DESK = "sip:desk@pbx.example.com;transport=tls?X-Queue=a&b"   # & and ; must survive the XML


def settings_for(public_url: str = "http://127.0.0.1:9", *, twilio_url: str = "https://api.twilio.com",
                 account_sid: str | None = ACCOUNT_SID, auth_token: str | None = AUTH_TOKEN,
                 carriers: dict | None = None) -> Settings:
    return Settings(source="test-config.yaml", public_url=public_url, carriers=carriers or {},
                    twilio=TwilioSettings(auth_token=auth_token, account_sid=account_sid, api_base_url=twilio_url))


@dataclasses.dataclass
class Rig:
    """A client, the fake it talks to, and a live call both know."""

    api: object
    control: CallControl
    meta: CallMeta
    secrets: tuple[str, ...]
    heard: list


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def public_url():
    """Our server's transfer-document route on loopback, where Plivo and SignalWire fetch their instructions."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = web.Application()
    add_routes(app, settings_for(url))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield url
    finally:
        await runner.cleanup()


@asynccontextmanager
async def rig(carrier: str, http, monkeypatch, tmp_path, public_url: str = "http://127.0.0.1:9", *,
              wrong_secret: bool = False, **control_kwargs) -> AsyncIterator[Rig]:
    """The carrier's fake API with one live call registered, and a client configured for it."""
    heard: list = []
    call_id = {"twilio": "CA" + "1e" * 16, "signalwire": "9d1f7c52-5a1e-4b6f-8e0a-3c2d1b0a9f8e",
               "telnyx": "v3:Yk3xQ2m0fY-2oPlA_call-control-id", "plivo": "b8a3c1d2-2222-4c4c-9a9a-0123456789ab",
               "vonage": "63f61863-4a51-4f6b-86e1-46edebcf9356"}[carrier]
    wrong = "not-the-right-secret"
    if carrier in ("twilio", "signalwire"):
        api = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) if carrier == "twilio" else FakeSignalWireApi(SW_PROJECT, SW_TOKEN)
    elif carrier == "telnyx":
        api = FakeTelnyxApi(TELNYX_KEY)
    elif carrier == "plivo":
        api = FakePlivoApi(PLIVO_ID, PLIVO_TOKEN)
    else:
        key_path = tmp_path / "vonage.key"
        public_key = new_application_key(str(key_path))
        if wrong_secret:        # the application's key was replaced: ours no longer verifies
            public_key = new_application_key(str(tmp_path / "other.key"))
        api = FakeVonageApi(VONAGE_APP, public_key)
        monkeypatch.setenv("VONAGE_APPLICATION_ID", VONAGE_APP)
        monkeypatch.setenv("VONAGE_PRIVATE_KEY_PATH", str(key_path))
    async with api:
        base_url = api.base_url + ("/api/laml" if carrier == "signalwire" else "")
        settings = settings_for(public_url, twilio_url=api.base_url,
                                auth_token=wrong if wrong_secret else AUTH_TOKEN,
                                carriers={carrier: {"call_control": {"api_base_url": base_url}}})
        monkeypatch.setenv("SIGNALWIRE_PROJECT_ID", SW_PROJECT)
        monkeypatch.setenv("SIGNALWIRE_API_TOKEN", wrong if wrong_secret else SW_TOKEN)
        monkeypatch.setenv("TELNYX_API_KEY", wrong if wrong_secret else TELNYX_KEY)
        monkeypatch.setenv("PLIVO_AUTH_ID", PLIVO_ID)
        monkeypatch.setenv("PLIVO_AUTH_TOKEN", wrong if wrong_secret else PLIVO_TOKEN)
        api.register_call(call_id, from_=CALLER, to=OUR_NUMBER, on_update=heard.append)
        control = (CLIENTS[carrier].from_settings(settings, http, **control_kwargs) if control_kwargs
                   else call_control_for(carrier, settings, http))
        meta = CallMeta(carrier=carrier, call_id=call_id, from_number=CALLER, to_number=OUR_NUMBER)
        secrets = (AUTH_TOKEN, SW_TOKEN, TELNYX_KEY, PLIVO_TOKEN, (tmp_path / "vonage.key").read_text()
                   if carrier == "vonage" else "no-vonage-key")
        yield Rig(api, control, meta, secrets, heard)


def assert_no_secret(rig_: Rig, *texts: object) -> None:
    blob = "\n".join(map(str, texts))
    for secret in rig_.secrets:
        assert secret not in blob
        for line in secret.splitlines()[1:-1]:      # a PEM key's body, line by line
            assert line not in blob


def basic_credentials(request) -> tuple[str, str]:
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


def control_lines(logs: list[dict]) -> list[dict]:
    return [line for line in logs if line["event"] in ("call_control", "call_control_failed")]


# -- Twilio ----------------------------------------------------------------------------------------------

async def test_twilio_hang_up_posts_status_completed_with_basic_auth(http, monkeypatch, tmp_path):
    async with rig("twilio", http, monkeypatch, tmp_path) as r:
        loop = asyncio.get_running_loop()
        before = loop.time()
        with structlog.testing.capture_logs() as logs:
            await r.control.hang_up(r.meta)
        request = r.api.requests[-1]
        assert (request.method, request.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{r.meta.call_id}.json")
        assert before <= request.at <= loop.time()
        assert basic_credentials(request) == (ACCOUNT_SID, AUTH_TOKEN)
        assert request.form == {"Status": "completed"} and request.status == 200
        assert [(u.action, u.ends_stream) for u in r.heard] == [("hang_up", True)]
        [line] = control_lines(logs)
        assert line["carrier"] == "twilio" and line["action"] == "hang_up" and line["status"] == 200
        assert line["call_id"] == r.meta.call_id and line["elapsed_ms"] >= 0
        assert line["request_id"].startswith("RQ")
        assert_no_secret(r, logs)


@pytest.mark.parametrize("target, noun", [(SALES, "Number"), (DESK, "Sip")])
async def test_twilio_transfer_sends_dial_twiml_for_the_target(http, monkeypatch, tmp_path, target, noun):
    async with rig("twilio", http, monkeypatch, tmp_path) as r:
        await r.control.transfer(r.meta, target)
        twiml = r.api.requests[-1].form["Twiml"]
        root = ET.fromstring(twiml)
        assert root.tag == "Response" and [child.tag for child in root] == ["Dial"]
        [dialled] = list(root.find("Dial"))
        assert (dialled.tag, dialled.text) == (noun, target)
        assert set(r.api.requests[-1].form) == {"Twiml"}
        [update] = r.heard
        assert (update.action, update.target, update.ends_stream, update.error) == ("transfer", target, True, None)


async def test_twilio_refusals_carry_twilios_status_code_and_request_id(http, monkeypatch, tmp_path):
    async with rig("twilio", http, monkeypatch, tmp_path, wrong_secret=True) as r:
        with structlog.testing.capture_logs() as logs, pytest.raises(CallControlError) as raised:
            await r.control.hang_up(r.meta)
        error = raised.value
        assert (error.status, error.code) == (401, "20003") and "Authenticate" in str(error)
        assert error.request_id and error.request_id in str(error)
        assert r.heard == []
        [line] = control_lines(logs)
        assert line["event"] == "call_control_failed" and line["code"] == "20003"
        assert_no_secret(r, logs, error, repr(error), r.control.missing, repr(r.control.config))
        assert "not-the-right-secret" not in str(logs) + str(error)

    async with rig("twilio", http, monkeypatch, tmp_path) as r:
        unknown = dataclasses.replace(r.meta, call_id="CA" + "00" * 16)
        with pytest.raises(CallControlError) as raised:
            await r.control.transfer(unknown, SALES)
        assert (raised.value.status, raised.value.code) == (404, "20404")
        r.api.end_call(r.meta.call_id)                        # the caller hung up first
        with pytest.raises(CallControlError) as raised:
            await r.control.transfer(r.meta, SALES)
        assert (raised.value.status, raised.value.code) == (400, "21220")
        await r.control.hang_up(r.meta)                       # ending an ended call is no error
        assert r.heard == []


async def test_twilio_offers_no_rest_dtmf_and_says_why(http, monkeypatch, tmp_path):
    async with rig("twilio", http, monkeypatch, tmp_path) as r:
        assert r.control.capabilities == Capabilities(hang_up=True, transfer=True, send_dtmf=False)
        assert "in-band" in r.control.missing["send_dtmf"]
        with pytest.raises(CallControlError, match="send_dtmf .*not available.*in-band"):
            await r.control.send_dtmf(r.meta, "123")
        assert r.api.requests == []


@pytest.mark.parametrize("account_sid, auth_token, missing", [
    (None, AUTH_TOKEN, "TWILIO_ACCOUNT_SID is not set"),
    (ACCOUNT_SID, None, "TWILIO_AUTH_TOKEN is not set"),
    (None, None, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set"),
])
async def test_missing_twilio_credentials_switch_hang_up_and_transfer_off(http, account_sid, auth_token, missing):
    settings = settings_for(account_sid=account_sid, auth_token=auth_token)
    capabilities, reasons = capabilities_of("twilio", settings)
    assert capabilities == Capabilities()
    assert reasons["hang_up"] == reasons["transfer"] == missing
    control = call_control_for("twilio", settings, http)
    assert (control.capabilities, control.missing) == (capabilities, reasons)
    meta = CallMeta(carrier="twilio", call_id="CA" + "1e" * 16)
    with pytest.raises(CallControlError, match=f"twilio hang_up of call .*not available: {missing}"):
        await control.hang_up(meta)


# -- SignalWire: Twilio's resource, instructions by Url ---------------------------------------------------

async def test_signalwire_hangs_up_on_its_laml_path(http, monkeypatch, tmp_path):
    async with rig("signalwire", http, monkeypatch, tmp_path) as r:
        await r.control.hang_up(r.meta)
        request = r.api.requests[-1]
        assert request.path == f"/api/laml/2010-04-01/Accounts/{SW_PROJECT}/Calls/{r.meta.call_id}.json"
        assert basic_credentials(request) == (SW_PROJECT, SW_TOKEN) and request.form == {"Status": "completed"}
        assert [u.action for u in r.heard] == ["hang_up"]


@pytest.mark.parametrize("target, noun", [(SALES, "Number"), (DESK, "Sip")])
async def test_signalwire_transfer_points_the_call_at_a_signed_cxml_document(http, monkeypatch, tmp_path,
                                                                             public_url, target, noun):
    async with rig("signalwire", http, monkeypatch, tmp_path, public_url) as r:
        await r.control.transfer(r.meta, target)
        form = r.api.requests[-1].form
        assert set(form) == {"Url", "Method"} and form["Method"] == "POST"
        assert form["Url"].startswith(public_url + "/call-control/signalwire/transfer/")
        update = await r.api.wait_for_update()          # SignalWire fetched the document from our route
        assert (update.action, update.target, update.error) == ("transfer", target, None)
        assert ET.fromstring(update.document).find(f"Dial/{noun}").text == target
        assert update.ends_stream


def test_signalwire_space_url_makes_the_api_base_and_config_errors_name_the_field(monkeypatch):
    monkeypatch.setenv("SIGNALWIRE_PROJECT_ID", SW_PROJECT)
    monkeypatch.setenv("SIGNALWIRE_API_TOKEN", SW_TOKEN)
    settings = settings_for(carriers={"signalwire": {"call_control": {"space_url": "acme.signalwire.com"}}})
    from voicebot.telephony.rest.signalwire import SignalWireCallControl
    assert SignalWireCallControl.configure(settings).config.base_url == "https://acme.signalwire.com/api/laml"
    assert capabilities_of("signalwire", settings)[0] == Capabilities(hang_up=True, transfer=True)
    no_space = capabilities_of("signalwire", settings_for())
    assert no_space[1]["transfer"] == "carriers.signalwire.call_control.space_url is not set"
    for section, field, expected in [
        ({"space_url": "https://acme.signalwire.com"}, "space_url", "host name"),
        ({"space_url": "acme.signalwire.com", "api_base_url": "https://x.example"}, "space_url", "not both"),
        ({"api_base_url": "ftp://x.example"}, "api_base_url", "absolute http/https URL"),
        ({"space": "acme.signalwire.com"}, "space", "unknown field"),
    ]:
        with pytest.raises(ConfigError) as raised:
            capabilities_of("signalwire", settings_for(carriers={"signalwire": {"call_control": section}}))
        assert raised.value.field_path == f"carriers.signalwire.call_control.{field}"
        assert expected in raised.value.problem


# -- Telnyx ----------------------------------------------------------------------------------------------

async def test_telnyx_actions_post_json_with_the_bearer_key(http, monkeypatch, tmp_path):
    async with rig("telnyx", http, monkeypatch, tmp_path) as r:
        with structlog.testing.capture_logs() as logs:
            await r.control.send_dtmf(r.meta, "12w#")
            await r.control.transfer(r.meta, DESK)
            await r.control.hang_up(r.meta)
        base = f"/v2/calls/{r.meta.call_id}/actions/"
        assert [(q.path, q.json, q.status) for q in r.api.requests] == [
            (base + "send_dtmf", {"digits": "12w#"}, 200),
            (base + "transfer", {"to": DESK}, 200),
            (base + "hangup", {}, 200)]
        assert all(q.headers["Authorization"] == f"Bearer {TELNYX_KEY}" for q in r.api.requests)
        assert all(q.headers["Content-Type"] == "application/json" for q in r.api.requests)
        assert [(u.action, u.digits, u.target, u.ends_stream) for u in r.heard] == [
            ("send_dtmf", "12w#", None, False), ("transfer", None, DESK, False), ("hang_up", None, None, True)]
        assert [line["action"] for line in control_lines(logs)] == ["send_dtmf", "transfer", "hang_up"]
        assert all(line["request_id"] for line in control_lines(logs))
        assert_no_secret(r, logs)


async def test_telnyx_hang_up_of_an_ended_call_is_done_other_actions_fail_with_90018(http, monkeypatch, tmp_path):
    async with rig("telnyx", http, monkeypatch, tmp_path) as r:
        r.api.end_call(r.meta.call_id)
        with structlog.testing.capture_logs() as logs:
            await r.control.hang_up(r.meta)
        assert r.api.requests[-1].status == 422
        [line] = control_lines(logs)
        assert line["outcome"] == "call already ended" and line["code"] == "90018"
        with pytest.raises(CallControlError) as raised:
            await r.control.transfer(r.meta, SALES)
        assert (raised.value.status, raised.value.code) == (422, "90018")
        assert "Call has already ended" in str(raised.value) and raised.value.request_id


async def test_telnyx_wrong_key_is_401_code_10009(http, monkeypatch, tmp_path):
    async with rig("telnyx", http, monkeypatch, tmp_path, wrong_secret=True) as r:
        with structlog.testing.capture_logs() as logs, pytest.raises(CallControlError) as raised:
            await r.control.send_dtmf(r.meta, "5")
        assert (raised.value.status, raised.value.code) == (401, "10009")
        assert "Authentication failed" in str(raised.value)
        assert_no_secret(r, logs, raised.value)
        assert "not-the-right-secret" not in str(logs) + str(raised.value)


async def test_a_carrier_that_does_not_answer_times_out(http, monkeypatch, tmp_path):
    timeout = aiohttp.ClientTimeout(total=0.3, connect=0.3)
    async with rig("telnyx", http, monkeypatch, tmp_path, timeout=timeout) as r:
        r.api.hold()
        with structlog.testing.capture_logs() as logs, pytest.raises(CallControlError) as raised:
            await r.control.hang_up(r.meta)
        assert raised.value.status is None and "no answer within 0.3 s" in str(raised.value)
        [line] = control_lines(logs)
        assert line["event"] == "call_control_failed" and line["elapsed_ms"] >= 300
        await r.api.wait_for_request()                          # it did arrive: the answer was what never came
        assert r.heard == []


async def test_an_unreachable_api_is_a_call_control_error(http, monkeypatch):
    sock = listening_socket()                     # bound, then closed: nothing listens on this port
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
    settings = settings_for(carriers={"telnyx": {"call_control": {"api_base_url": f"http://127.0.0.1:{port}"}}})
    control = call_control_for("telnyx", settings, http)
    with pytest.raises(CallControlError, match="request failed: ClientConnectorError") as raised:
        await control.hang_up(CallMeta(carrier="telnyx", call_id="v3:abc"))
    assert raised.value.status is None and TELNYX_KEY not in str(raised.value)


# -- Plivo ---------------------------------------------------------------------------------------------

async def test_plivo_hang_up_deletes_the_call(http, monkeypatch, tmp_path):
    async with rig("plivo", http, monkeypatch, tmp_path) as r:
        await r.control.hang_up(r.meta)
        request = r.api.requests[-1]
        assert (request.method, request.path, request.status) == (
            "DELETE", f"/v1/Account/{PLIVO_ID}/Call/{r.meta.call_id}/", 204)
        assert basic_credentials(request) == (PLIVO_ID, PLIVO_TOKEN)
        assert [u.action for u in r.heard] == ["hang_up"]
        with pytest.raises(CallControlError) as raised:              # the call is gone now
            await r.control.send_dtmf(r.meta, "1")
        assert raised.value.status == 404 and "not found" in str(raised.value) and raised.value.request_id


@pytest.mark.parametrize("target, noun, text", [(SALES, "Number", SALES[1:]), (DESK, "User", DESK)])
async def test_plivo_transfer_has_plivo_fetch_signed_plivo_xml_from_us(http, monkeypatch, tmp_path, public_url,
                                                                       target, noun, text):
    async with rig("plivo", http, monkeypatch, tmp_path, public_url) as r:
        await r.control.transfer(r.meta, target)
        request = r.api.requests[-1]
        assert (request.path, request.status) == (f"/v1/Account/{PLIVO_ID}/Call/{r.meta.call_id}/", 202)
        body = request.json
        assert set(body) == {"legs", "aleg_url", "aleg_method"} and body["legs"] == "aleg"
        assert body["aleg_method"] == "POST"
        assert body["aleg_url"].startswith(public_url + "/call-control/plivo/transfer/")
        update = await r.api.wait_for_update()
        assert (update.action, update.target, update.error, update.ends_stream) == ("transfer", target, None, True)
        assert ET.fromstring(update.document).find(f"Dial/{noun}").text == text


async def test_plivo_dtmf_and_refusals(http, monkeypatch, tmp_path):
    async with rig("plivo", http, monkeypatch, tmp_path) as r:
        await r.control.send_dtmf(r.meta, "0w*#")
        request = r.api.requests[-1]
        assert (request.path, request.json, request.status) == (
            f"/v1/Account/{PLIVO_ID}/Call/{r.meta.call_id}/DTMF/", {"digits": "0w*#", "leg": "aleg"}, 202)
        assert [(u.action, u.digits) for u in r.heard] == [("send_dtmf", "0w*#")]
    async with rig("plivo", http, monkeypatch, tmp_path, wrong_secret=True) as r:
        with structlog.testing.capture_logs() as logs, pytest.raises(CallControlError) as raised:
            await r.control.hang_up(r.meta)
        assert raised.value.status == 401 and "Authentication failed" in str(raised.value)
        assert_no_secret(r, logs, raised.value)


# -- Vonage ----------------------------------------------------------------------------------------------

async def test_vonage_requests_carry_a_jwt_the_api_verifies(http, monkeypatch, tmp_path):
    import jwt

    async with rig("vonage", http, monkeypatch, tmp_path) as r:
        with structlog.testing.capture_logs() as logs:
            await r.control.send_dtmf(r.meta, "1w#")
            await r.control.hang_up(r.meta)
        dtmf, hang_up = r.api.requests
        assert (dtmf.method, dtmf.path, dtmf.json, dtmf.status) == (
            "PUT", f"/v1/calls/{r.meta.call_id}/dtmf", {"digits": "1p#"}, 200)
        assert (hang_up.method, hang_up.path, hang_up.json, hang_up.status) == (
            "PUT", f"/v1/calls/{r.meta.call_id}", {"action": "hangup"}, 204)
        tokens = [q.headers["Authorization"].removeprefix("Bearer ") for q in r.api.requests]
        claims = [jwt.decode(t, r.api.public_key_pem, algorithms=["RS256"]) for t in tokens]
        assert all(c["application_id"] == VONAGE_APP and 0 < c["exp"] - c["iat"] <= 900 for c in claims)
        assert claims[0]["jti"] != claims[1]["jti"]
        assert jwt.get_unverified_header(tokens[0])["alg"] == "RS256"
        assert [(u.action, u.digits) for u in r.heard] == [("send_dtmf", "1p#"), ("hang_up", None)]
        assert_no_secret(r, logs)


@pytest.mark.parametrize("target, endpoint", [
    (SALES, {"type": "phone", "number": SALES[1:]}), (DESK, {"type": "sip", "uri": DESK})])
async def test_vonage_transfer_sends_a_connect_ncco(http, monkeypatch, tmp_path, target, endpoint):
    async with rig("vonage", http, monkeypatch, tmp_path) as r:
        await r.control.transfer(r.meta, target)
        body = r.api.requests[-1].json
        connect = {"action": "connect", "endpoint": [endpoint]}
        if endpoint["type"] == "phone":
            connect["from"] = OUR_NUMBER[1:]           # the caller sees the number they dialled
        assert body == {"action": "transfer", "destination": {"type": "ncco", "ncco": [connect]}}
        [update] = r.heard
        assert (update.action, update.target, update.ends_stream) == ("transfer", target, False)


async def test_vonage_refusals_are_rfc7807_problems(http, monkeypatch, tmp_path):
    async with rig("vonage", http, monkeypatch, tmp_path, wrong_secret=True) as r:
        with structlog.testing.capture_logs() as logs, pytest.raises(CallControlError) as raised:
            await r.control.hang_up(r.meta)
        assert (raised.value.status, raised.value.code) == (401, "unauthorized")
        assert raised.value.request_id                                  # the problem's instance
        assert_no_secret(r, logs, raised.value)
    async with rig("vonage", http, monkeypatch, tmp_path) as r:
        with pytest.raises(CallControlError) as raised:
            await r.control.hang_up(dataclasses.replace(r.meta, call_id="00000000-0000-4000-8000-000000000000"))
        assert (raised.value.status, raised.value.code) == (404, "not-found")


def test_vonage_without_its_libraries_or_key_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("VONAGE_APPLICATION_ID", VONAGE_APP)
    monkeypatch.setenv("VONAGE_PRIVATE_KEY_PATH", str(tmp_path / "absent.key"))
    capabilities, missing = capabilities_of("vonage", settings_for())
    assert capabilities == Capabilities()
    assert "absent.key" in missing["hang_up"] and "cannot be read" in missing["hang_up"]
    (tmp_path / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv("VONAGE_PRIVATE_KEY_PATH", str(tmp_path / "garbage.key"))
    assert "not an unencrypted PEM private key" in capabilities_of("vonage", settings_for())[1]["transfer"]
    new_application_key(str(tmp_path / "good.key"))
    monkeypatch.setenv("VONAGE_PRIVATE_KEY_PATH", str(tmp_path / "good.key"))
    assert capabilities_of("vonage", settings_for())[0] == Capabilities(True, True, True)
    monkeypatch.setitem(sys.modules, "jwt", None)          # PyJWT not installed
    capabilities, missing = capabilities_of("vonage", settings_for())
    assert capabilities == Capabilities()
    assert "voicebot[vonage]" in missing["send_dtmf"] and "jwt" in missing["send_dtmf"]


# -- what every client checks before sending anything -------------------------------------------------------

@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo", "vonage"])
async def test_bad_targets_digits_and_call_ids_are_refused_before_any_request(http, monkeypatch, tmp_path, carrier):
    async with rig(carrier, http, monkeypatch, tmp_path) as r:
        for target in ("5550001111", "+0123", "tel:+15550001111", "sip:", "sales", ""):
            with pytest.raises(CallControlError, match="neither an E.164 number"):
                await r.control.transfer(r.meta, target)
        if r.control.capabilities.send_dtmf:
            for digits in ("", "12a", "1 2", "9" * 65):
                with pytest.raises(CallControlError, match="DTMF digits"):
                    await r.control.send_dtmf(r.meta, digits)
        for call_id in ("", "../../Accounts", "CA1?x=1"):
            with pytest.raises(CallControlError, match="no usable carrier call id"):
                await r.control.hang_up(dataclasses.replace(r.meta, call_id=call_id))
        assert r.api.requests == [] and r.heard == []


def test_an_action_a_client_does_not_name_is_off():
    setup = configured(ApiConfig("https://api.example.com", None), {"hang_up": None, "transfer": "no key"})
    assert setup.capabilities == Capabilities(hang_up=True)
    assert setup.missing == {"transfer": "no key", "send_dtmf": "not supported by this carrier's client"}


def test_transfer_targets():
    assert parse_target(" +15550001111 ").value == "+15550001111"
    assert parse_target(SALES).digits == SALES[1:]
    assert parse_target("SIPS:agent@example.com").kind == "sip"
    with pytest.raises(ValueError):
        parse_target("+1 555 000 1111")


# -- carriers, configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("carrier", ["exotel", "jambonz", "asterisk", "audiosocket", "freeswitch"])
async def test_carriers_without_a_call_control_api(http, carrier):
    assert call_control_for(carrier, settings_for(), http) is None
    capabilities, missing = capabilities_of(carrier, settings_for())
    assert capabilities == Capabilities() and set(missing) == {"hang_up", "transfer", "send_dtmf"}
    assert "in-band" in missing["hang_up"]
    with pytest.raises(ConfigError, match=f"carriers.{carrier}.call_control: {carrier} has no call-control API"):
        capabilities_of(carrier, settings_for(carriers={carrier: {"call_control": {"api_base_url": "https://x.io"}}}))
    with pytest.raises(ValueError, match="unknown carrier 'skype'"):
        capabilities_of("skype", settings_for())


@pytest.mark.parametrize("carrier", ["telnyx", "plivo", "vonage"])
def test_call_control_sections_are_validated_with_their_path(carrier):
    for section, field, expected in [({"api_base_url": "api.example.com"}, "api_base_url", "absolute http/https URL"),
                                     ({"base_url": "https://api.example.com"}, "base_url", "unknown field")]:
        with pytest.raises(ConfigError) as raised:
            capabilities_of(carrier, settings_for(carriers={carrier: {"call_control": section}}))
        assert raised.value.field_path == f"carriers.{carrier}.call_control.{field}"
        assert expected in raised.value.problem


def test_twilio_api_base_url_and_account_sid_come_from_config_and_environment(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("twilio:\n  api_base_url: http://127.0.0.1:8099/\n", encoding="utf-8")
    settings = load_settings(config, environ={"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    assert settings.twilio.api_base_url == "http://127.0.0.1:8099"
    assert settings.twilio.account_sid == ACCOUNT_SID and AUTH_TOKEN not in repr(settings)
    assert load_settings(config, environ={}).twilio.account_sid is None
    config.write_text("twilio:\n  api_base_url: twilio.example.com\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert raised.value.field_path == "twilio.api_base_url"


def test_the_shipped_config_yaml_and_its_commented_call_control_example_read(tmp_path):
    shipped = Path(__file__).resolve().parent.parent / "config.yaml"
    text = shipped.read_text(encoding="utf-8")
    example = "    # call_control: {space_url: example.signalwire.com}"
    assert example in text
    enabled = tmp_path / "config.yaml"
    enabled.write_text(text.replace(example, example.replace("# ", "", 1)), encoding="utf-8")
    for path in (shipped, enabled):
        settings = load_settings(path, environ={})
        for carrier in (*CLIENTS, *IN_BAND_ONLY):
            capabilities_of(carrier, settings)
    from voicebot.telephony.rest.signalwire import SignalWireCallControl
    assert SignalWireCallControl.configure(load_settings(enabled, environ={})).config.base_url == \
        "https://example.signalwire.com/api/laml"


def test_voicebot_check_reports_call_control_and_rejects_a_bad_section(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELNYX_", "PLIVO_", "VONAGE_",
                                                                     "SIGNALWIRE_"))}
    env.update({"TELNYX_API_KEY": TELNYX_KEY, "PLIVO_AUTH_ID": PLIVO_ID})
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "check"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("call control")]
    assert lines[0].startswith("call control twilio: none; off: hang_up, transfer (TWILIO_ACCOUNT_SID and "
                               "TWILIO_AUTH_TOKEN are not set); send_dtmf (Twilio's REST API")
    assert "call control telnyx: hang_up, transfer, send_dtmf" in lines
    assert "call control plivo: none; off: hang_up, transfer, send_dtmf (PLIVO_AUTH_TOKEN is not set)" in lines
    assert len(lines) == 5 and TELNYX_KEY not in proc.stdout + proc.stderr

    bad = tmp_path / "config.yaml"
    bad.write_text((repo / "config.yaml").read_text(encoding="utf-8").replace(
        "  jambonz:", "  jambonz:\n    call_control: {api_base_url: https://jambonz.example.com}"), encoding="utf-8")
    (tmp_path / "dialplans").symlink_to(repo / "dialplans")
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "check", "--config", str(bad)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "carriers.jambonz.call_control: jambonz has no call-control API" in proc.stderr


def test_the_wire_modules_leave_call_control_sections_to_this_package(tmp_path):
    """A carrier's media route reads its section and rejects unknown fields: call_control must pass."""
    from voicebot.server import create_app

    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    carriers = {name: {"call_control": {"api_base_url": "https://api.example.com"}}
                for name in ("telnyx", "plivo", "vonage", "signalwire")}
    create_app(settings_for(carriers=carriers), load_dialplan(plans))
    with pytest.raises(ConfigError, match="carriers.telnyx.call_control: expected a mapping"):
        create_app(settings_for(carriers={"telnyx": {"call_control": "https://api.example.com"}}), load_dialplan(plans))


# -- transfer documents -------------------------------------------------------------------------------------

async def test_transfer_documents_are_signed_bound_to_the_call_and_expire(http, public_url):
    documents = TransferDocuments(public_url, stream_token_secret())
    target = parse_target(SALES)
    url = documents.url("plivo", "call-1", target)

    async with http.post(url, data={"CallUUID": "call-1"}) as response:
        assert response.status == 200 and response.content_type == "text/xml"
        assert ET.fromstring(await response.text()).find("Dial/Number").text == SALES[1:]
    async with http.get(url) as response:                        # aleg_method GET: no form
        assert response.status == 200

    token = url.rsplit("/", 1)[1]
    payload, mac = token.split(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps(["plivo", "call-1", "+19005550000", 4102444800])
                                              .encode()).decode().rstrip("=")
    expired = documents.url("plivo", "call-1", target, now=0)
    refusals = {
        url.replace("/plivo/", "/signalwire/"): "issued for plivo",
        url.replace(token, f"{forged_payload}.{mac}"): "signature does not match",
        url.replace(token, payload): "malformed token",
        expired: "token expired",
        url.replace("/plivo/", "/exotel/"): "no transfer documents for carrier 'exotel'",
    }
    with structlog.testing.capture_logs() as logs:
        for bad_url, reason in refusals.items():
            async with http.post(bad_url, data={"CallUUID": "call-1"}) as response:
                assert response.status == 403 and reason in await response.text(), bad_url
        async with http.post(url, data={"CallUUID": "call-2"}) as response:   # another call's request
            assert response.status == 403 and "names call 'call-2'" in await response.text()
    assert [line["event"] for line in logs] == ["transfer_document_refused"] * 6
