"""The fake carrier REST APIs refuse what their vendors refuse: raw HTTP requests on loopback, one per rule.

A fake that accepted anything would let a wrong client pass test_call_control.py; these requests are what a
wrong client would send.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest
from aiohttp import web

from conftest import listening_socket
from voicebot.simulator.carrier_api import (
    FakePlivoApi,
    FakeSignalWireApi,
    FakeTelnyxApi,
    FakeTwilioApi,
    FakeVonageApi,
    new_application_key,
)
from voicebot.telephony.rest.base import basic_auth
from voicebot.telephony.twilio_auth import validate_signature

SID = "AC" + "ab" * 16
TOKEN = "fake-api-test-token"
CALL = "CA" + "cd" * 16


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def instructions():
    """A web server playing our side: serves call instructions and keeps each request it got."""
    got: list[tuple[web.Request, dict]] = []
    documents = {"/dial": (200, "text/xml", "<Response><Dial><Number>+15550001111</Number></Dial></Response>"),
                 "/say": (200, "text/xml", "<Response><Say>Goodbye</Say></Response>"),
                 "/html": (200, "text/html", "<html></html>"),
                 "/refuse": (403, "text/plain", "no"),
                 "/status": (200, "text/plain", "")}

    async def serve(request: web.Request) -> web.Response:
        got.append((request, dict(await request.post())))
        status, content_type, text = documents[request.path]
        return web.Response(status=status, content_type=content_type, text=text)

    app = web.Application()
    app.router.add_route("*", "/{name}", serve)
    sock = listening_socket()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", got
    finally:
        await runner.cleanup()


async def post_form(http, url: str, form: dict, user: str = SID, password: str = TOKEN) -> tuple[int, dict]:
    async with http.post(url, data=form, headers=basic_auth(user, password)) as response:
        return response.status, await response.json()


async def test_twilio_fake_refuses_what_twilio_refuses(http):
    async with FakeTwilioApi(SID, TOKEN) as api:
        api.register_call(CALL)
        url = f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls/{CALL}.json"
        cases = [
            ({"Status": "completed"}, {"password": "wrong"}, 401, 20003),
            ({"Status": "completed"}, {"user": "AC" + "00" * 16}, 401, 20003),
            ({"Status": "in-progress"}, {}, 400, 20001),
            ({"Twiml": "<Response><Dial>"}, {}, 400, 12100),
            ({"Twiml": "<Twiml><Dial/></Twiml>"}, {}, 400, 12102),
            ({"Twiml": "<Response>" + "<Pause/>" * 600 + "</Response>"}, {}, 400, 32018),
            ({"Twiml": "<Response/>", "Url": "https://example.com/x"}, {}, 400, 20001),
            ({"Url": "example.com/twiml"}, {}, 400, 21205),
        ]
        for form, auth, status, code in cases:
            got_status, body = await post_form(http, url, form, **auth)
            assert (got_status, body["code"]) == (status, code), form
            assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}" and body["status"] == status
        status, body = await post_form(http, url.replace(CALL, "CA" + "ee" * 16), {"Status": "completed"})
        assert (status, body["code"]) == (404, 20404)
        status, body = await post_form(http, url, {"Status": "canceled"})    # no effect on an answered call
        assert status == 200 and body["status"] == "in-progress" and api.updates == []
        status, body = await post_form(http, url, {"Status": "completed", "Bogus": "x"})   # ignored, as Twilio does
        assert status == 200 and body["status"] == "completed" and body["sid"] == CALL
        assert [update.action for update in api.updates] == ["hang_up"]
        status, body = await post_form(http, url, {"Twiml": "<Response><Hangup/></Response>"})
        assert (status, body["code"]) == (400, 21220)


async def test_twilio_fake_fetches_url_instructions_signed_and_reports_failures(http, instructions):
    base, got = instructions
    async with FakeTwilioApi(SID, TOKEN) as api:
        heard = []
        api.register_call(CALL, from_="+15557654321", to="+15550000001", on_update=heard.append)
        url = f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls/{CALL}.json"
        assert (await post_form(http, url, {"Url": base + "/dial"}))[0] == 200
        update = await api.wait_for_update()
        assert (update.action, update.target, update.error, update.ends_stream) == ("transfer", "+15550001111", None, True)
        request, form = got[-1]
        assert form["CallSid"] == CALL and form["AccountSid"] == SID and form["To"] == "+15550000001"
        assert validate_signature(TOKEN, str(request.url), form, request.headers["X-Twilio-Signature"])

        assert (await post_form(http, url, {"Url": base + "/say", "Method": "GET"}))[0] == 200
        update = await api.wait_for_update(lambda u: u.action == "redirect")
        request, form = got[-1]
        assert request.method == "GET" and request.query["CallSid"] == CALL and form == {}
        assert validate_signature(TOKEN, str(request.url), {}, request.headers["X-Twilio-Signature"])

        for path, problem in (("/html", "not XML"), ("/refuse", "HTTP 403")):
            assert (await post_form(http, url, {"Url": base + path}))[0] == 200
            update = await api.wait_for_update(lambda u, p=problem: u.error is not None and p in u.error)
            assert update.target is None and update.ends_stream
        assert heard == api.updates and len(heard) == 4


async def test_signalwire_fake_ignores_inline_twiml_and_answers_10000_for_ended_calls(http, instructions):
    base, _ = instructions
    async with FakeSignalWireApi(SID, TOKEN, signing_key="sw-signing-key") as api:
        api.register_call(CALL)
        url = f"{api.base_url}/api/laml/2010-04-01/Accounts/{SID}/Calls/{CALL}.json"
        status, body = await post_form(http, url, {"Twiml": "<Response><Dial><Number>+15550001111</Number></Dial></Response>"})
        assert status == 200 and api.updates == []            # not in SignalWire's documented update: ignored
        assert (await post_form(http, url, {"Url": base + "/dial"}))[0] == 200
        assert (await api.wait_for_update()).target == "+15550001111"
        api.end_call(CALL)
        status, body = await post_form(http, url, {"Url": base + "/dial"})
        assert (status, body["code"]) == (400, 10000)


async def test_telnyx_fake_refuses_what_telnyx_refuses(http):
    async with FakeTelnyxApi("KEY123") as api:
        api.register_call("v3:call")
        base = f"{api.base_url}/v2/calls/v3:call/actions/"
        auth = {"Authorization": "Bearer KEY123"}
        cases = [
            ("hangup", "{}", {"Authorization": "Bearer nope"}, 401, "10009"),
            ("hangup", "{}", {}, 401, "10009"),
            ("answer", "{}", auth, 404, "10005"),
            ("hangup", "not json", auth, 400, "10015"),
            ("hangup", "[]", auth, 400, "10015"),
            ("hangup", '{"client_state": "***"}', auth, 422, "10015"),
            ("transfer", "{}", auth, 422, "10004"),
            ("transfer", '{"to": "15550001111"}', auth, 422, "10016"),
            ("send_dtmf", '{"digits": "12x"}', auth, 422, "10015"),
            ("send_dtmf", '{"digits": "12", "duration_millis": 50}', auth, 422, "10015"),
        ]
        for action, body, headers, status, code in cases:
            async with http.post(base + action, data=body, headers=headers) as response:
                answer = await response.json()
                assert (response.status, answer["errors"][0]["code"]) == (status, code), (action, body)
                assert response.headers["x-request-id"]
        async with http.post(base.replace("v3:call", "v3:other") + "hangup", json={}, headers=auth) as response:
            assert response.status == 404
        assert api.updates == []
        async with http.post(base + "hangup", json={"command_id": "c1"}, headers=auth) as response:
            assert response.status == 200 and await response.json() == {"data": {"result": "ok"}}
        async with http.post(base + "send_dtmf", json={"digits": "1"}, headers=auth) as response:
            answer = await response.json()
            assert response.status == 422 and answer["errors"][0]["code"] == "90018"


async def test_plivo_fake_refuses_what_plivo_refuses(http, instructions):
    base, got = instructions
    async with FakePlivoApi("MAXXXXXXXXXXXXXXXXXX", "ptoken") as api:
        api.register_call("uuid-1", from_="+15557654321", to="+15550000001")
        call = f"{api.base_url}/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/uuid-1/"
        auth = basic_auth("MAXXXXXXXXXXXXXXXXXX", "ptoken")
        async with http.delete(call, headers=basic_auth("MAXXXXXXXXXXXXXXXXXX", "wrong")) as response:
            assert response.status == 401 and "error" in await response.json()
        async with http.delete(call.rstrip("/"), headers=auth) as response:     # Plivo's paths end in /
            assert response.status == 404
        async with http.post(call, data={"legs": "aleg", "aleg_url": base + "/dial"}, headers=auth) as response:
            assert response.status == 400 and "JSON" in (await response.json())["error"]
        for body in ({"legs": "aleg"}, {"legs": "cleg", "aleg_url": base + "/dial"},
                     {"legs": "bleg", "bleg_url": base + "/dial"},
                     {"legs": "aleg", "aleg_url": base + "/dial", "aleg_method": "PUT"}):
            async with http.post(call, json=body, headers=auth) as response:
                assert response.status == 400, body
        async with http.post(call + "DTMF/", json={"digits": "1x"}, headers=auth) as response:
            assert response.status == 400
        assert api.updates == []
        async with http.post(call, json={"legs": "aleg", "aleg_url": base + "/say", "aleg_method": "GET"},
                             headers=auth) as response:
            body = await response.json()
            assert response.status == 202 and body["message"] == "call transferred" and body["api_id"]
        update = await api.wait_for_update()
        assert (update.action, update.error) == ("redirect", None)
        assert got[-1][0].query["CallUUID"] == "uuid-1" and got[-1][0].query["To"] == "15550000001"


async def test_vonage_fake_checks_the_jwt_and_the_ncco(http, tmp_path):
    import jwt

    key_path = tmp_path / "app.key"
    public = new_application_key(str(key_path))
    private = key_path.read_bytes()
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"

    def bearer(**claims) -> dict:
        now = int(time.time())
        payload = {"application_id": "app-1", "iat": now, "exp": now + 60, "jti": "j1", **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return {"Authorization": "Bearer " + jwt.encode(payload, private, algorithm="RS256")}

    async with FakeVonageApi("app-1", public) as api:
        api.register_call("uuid-1")
        url = f"{api.base_url}/v1/calls/uuid-1"
        for headers in (bearer(application_id="app-2"), bearer(exp=int(time.time()) - 5), bearer(jti=None),
                        {"Authorization": "Bearer " + jwt.encode({"application_id": "app-1"}, "an-hmac-secret-of-32-bytes-or-more", "HS256")}, {}):
            async with http.put(url, json={"action": "hangup"}, headers=headers) as response:
                problem = await response.json()
                assert response.status == 401 and problem["type"].endswith("#unauthorized") and problem["instance"]
        phone = {"action": "connect", "endpoint": [{"type": "phone", "number": "+15550001111"}]}
        for body in ({"action": "explode"}, {"action": "transfer", "destination": {"type": "ncco", "ncco": []}},
                     {"action": "transfer", "destination": {"type": "ncco", "ncco": [phone]}},
                     {"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "dance"}]}},
                     {"action": "transfer", "destination": {"type": "ncco", "url": ["https://x.example/ncco"]}}):
            async with http.put(url, json=body, headers=bearer()) as response:
                assert response.status == 400, body
        async with http.put(url + "/dtmf", json={"digits": "1w"}, headers=bearer()) as response:
            assert response.status == 400                       # Vonage's pause is p
        assert api.updates == []
        talk = [{"action": "talk", "text": "Goodbye"}]
        async with http.put(url, json={"action": "transfer", "destination": {"type": "ncco", "ncco": talk}},
                            headers=bearer()) as response:
            assert response.status == 204
        assert (api.updates[-1].action, api.updates[-1].document) == ("redirect", json.dumps(talk))
        async with http.put(url, json={"action": "hangup"}, headers=bearer()) as response:
            assert response.status == 204
        async with http.put(url + "/dtmf", json={"digits": "1"}, headers=bearer()) as response:
            assert response.status == 400 and "not active" in (await response.json())["detail"]


async def test_a_failing_listener_does_not_break_the_api(http):
    async with FakeTelnyxApi("KEY123") as api:
        def explode(update):
            raise RuntimeError("listener bug")
        api.register_call("v3:call", on_update=explode)
        async with http.post(f"{api.base_url}/v2/calls/v3:call/actions/hangup", json={},
                             headers={"Authorization": "Bearer KEY123"}) as response:
            assert response.status == 200
        assert [str(e) for e in api.listener_errors] == ["listener bug"] and api.updates[0].action == "hang_up"


# -- dialling -------------------------------------------------------------------------------------------------

OWNED = "+15550002000"


async def test_twilio_fake_refuses_dials_twilio_refuses(http):
    from voicebot.simulator.carrier_api import Failed

    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OWNED}, default_callee=Failed()) as api:
        url = f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls.json"
        good = {"To": "+15551230001", "From": OWNED, "Url": "https://bot.example.com/twilio/voice"}
        cases = [
            ({}, {"password": "wrong"}, 401, 20003),
            ({"To": None}, {}, 400, 21201),
            ({"To": "5551230001"}, {}, 400, 21211),
            ({"From": None}, {}, 400, 21213),
            ({"From": "+15559990000"}, {}, 400, 21210),
            ({"Url": None}, {}, 400, 21205),
            ({"Url": "/relative"}, {}, 400, 21205),
            ({"StatusCallback": "not a url"}, {}, 400, 20001),
            ({"StatusCallbackEvent": "answerd"}, {}, 400, 20001),
            ({"Timeout": "0"}, {}, 400, 20001),
            ({"MachineDetection": "Detect"}, {}, 400, 20001),
            ({"AsyncAmd": "true"}, {}, 400, 20001),              # async AMD needs its callback URL
        ]
        for change, auth, status, code in cases:
            form = {k: v for k, v in {**good, **change}.items() if v is not None}
            got_status, body = await post_form(http, url, form, **auth)
            assert (got_status, body["code"]) == (status, code), change
        assert api.dialled == {} and api.dial_times == []
        status, body = await post_form(http, url, good)
        assert status == 201 and body["status"] == "queued" and body["direction"] == "outbound-api"
        async with http.get(f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls/{body['sid']}.json",
                            headers=basic_auth(SID, TOKEN)) as response:
            assert response.status == 200 and (await response.json())["to"] == "+15551230001"
        async with http.get(url, params={"To": "+15551230001", "StartTime>=": "2001-01-01T00:00:00Z"},
                            headers=basic_auth(SID, TOKEN)) as response:
            assert [call["sid"] for call in (await response.json())["calls"]] == [body["sid"]]
        await api.wait_ended(body["sid"])          # no StatusCallback given: the call ends without callbacks
        assert api.dialled[body["sid"]].callbacks == [] and api.dialled[body["sid"]].status == "failed"


async def test_telnyx_fake_refuses_dials_telnyx_refuses(http):
    from voicebot.simulator.carrier_api import Busy

    async with FakeTelnyxApi("KEY123", connection_ids={"conn-1"}, default_callee=Busy()) as api:
        url = f"{api.base_url}/v2/calls"
        auth = {"Authorization": "Bearer KEY123"}
        good = {"connection_id": "conn-1", "to": "+15551230001", "from": OWNED,
                "stream_url": "wss://bot.example.com/telnyx/media"}
        cases = [
            ({}, {"Authorization": "Bearer nope"}, 401, "10009"),
            ({"connection_id": None}, auth, 422, "10004"),
            ({"connection_id": "conn-2"}, auth, 422, "10015"),
            ({"to": "15551230001"}, auth, 422, "10016"),
            ({"from": None}, auth, 422, "10004"),
            ({"stream_url": "https://bot.example.com/telnyx/media"}, auth, 422, "10015"),
            ({"client_state": "not base64!"}, auth, 422, "10015"),
            ({"timeout_secs": 2}, auth, 422, "10015"),
            ({"answering_machine_detection": "guess"}, auth, 422, "10015"),
            ({"stream_bidirectional_mode": "wav"}, auth, 422, "10015"),
        ]
        for change, headers, status, code in cases:
            body = {k: v for k, v in {**good, **change}.items() if v is not None}
            async with http.post(url, json=body, headers=headers) as response:
                answer = await response.json()
                assert (response.status, answer["errors"][0]["code"]) == (status, code), change
        assert api.dialled == {}
        async with http.post(url, json=good, headers=auth) as response:
            data = (await response.json())["data"]
            assert response.status == 200 and data["call_control_id"].startswith("v3:") and data["is_alive"] is False
        call = await api.wait_ended(data["call_control_id"])
        assert call.status == "busy" and call.callbacks == []          # no webhook_url: nothing sent
        async with http.get(f"{url}/{data['call_control_id']}", headers=auth) as response:
            shown = (await response.json())["data"]
            assert shown["is_alive"] is False and shown["call_leg_id"] == data["call_leg_id"]
        async with http.get(f"{url}/v3:unknown", headers=auth) as response:
            assert response.status == 404


async def test_dialled_calls_are_counted_live_at_the_fake(http):
    from voicebot.simulator.carrier_api import NoAnswer

    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OWNED}, default_callee=NoAnswer()) as api:
        url = f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls.json"
        sids = []
        for n in range(3):
            status, body = await post_form(http, url, {"To": f"+1555123000{n}", "From": OWNED, "Timeout": "1",
                                                       "Url": "https://bot.example.com/twilio/voice"})
            sids.append(body["sid"])
        assert len(api.live_calls()) == 3 and api.max_live_seen == 3 and len(api.dial_times) == 3
        for sid in sids:
            assert (await api.wait_ended(sid)).status == "no-answer"
        assert api.live_calls() == [] and api.max_live_seen == 3


async def test_a_short_call_answers_talks_and_hangs_up_without_opening_the_media_stream(http, instructions):
    from voicebot.simulator.carrier_api import ShortCall

    base, got = instructions
    callee = ShortCall(answer_after_s=0.2, talk_s=1.0, amd_after_s=0.4)
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OWNED}, default_callee=callee) as api:
        url = f"{api.base_url}/2010-04-01/Accounts/{SID}/Calls.json"
        form = [("To", "+15551230001"), ("From", OWNED), ("Url", f"{base}/dial"), ("StatusCallback", f"{base}/status"),
                ("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                ("AsyncAmdStatusCallback", f"{base}/status")]
        form += [("StatusCallbackEvent", event) for event in ("initiated", "ringing", "answered", "completed")]
        async with http.post(url, data=form, headers=basic_auth(SID, TOKEN)) as response:
            sid = (await response.json())["sid"]
        call = await api.wait_ended(sid)
    assert [request.path for request, _ in got] == ["/status"] * 5      # never the instructions at /dial
    sent = [fields for _, fields in got]
    assert [f.get("CallStatus") or f["AnsweredBy"] for f in sent] == ["initiated", "ringing", "in-progress",
                                                                      "human", "completed"]
    assert all(cb.status == 200 for cb in call.callbacks) and call.media is None and call.result is None
    assert sent[-1]["CallDuration"] == "1" and call.status == "completed" and call.answered_by == "human"
    assert call.ended_at - call.answered_at == pytest.approx(1.0, abs=0.2)
