"""The server's HTTP routes under hostile requests, on the real app over loopback: the carriers' voice webhooks
(signed the carrier's way, so the fuzzed form gets past the signature check) and the admin API (with the token:
query parameters, path ids, JSON bodies, uploads).

Property: every answer is a deliberate one — TwiML (or 403) for a webhook, JSON with an ``error`` that says what
was wrong for the API — never a 500 with a traceback, and the server still answers a good request afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from voicebot.telephony.twilio_auth import compute_signature

from conftest import AUTH_TOKEN, EN, running_stack
from fuzzing import TRICKY_TEXT, hostile_value

ADMIN = "fuzz-admin-token-3d1f"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server and the emulator, on a loop of their own in a thread (hypothesis drives it from here)."""
    loop = asyncio.new_event_loop()
    ready: dict = {}
    stop = asyncio.Event()

    async def serve():
        async with running_stack(tmp_path_factory.mktemp("fuzz-http")) as running:
            ready["stack"] = running
            await stop.wait()

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VOICEBOT_ADMIN_TOKEN", ADMIN)
        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        for _ in range(200):
            if "stack" in ready:
                break
            threading.Event().wait(0.05)
        assert "stack" in ready, "the server did not start"
    yield ready["stack"].url
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def request(method: str, url: str, *, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def deliberate_api_answer(status: int, body: bytes, content_type: str) -> None:
    assert status < 500, (status, body[:300])
    assert content_type.startswith("application/json") or content_type.startswith("text/csv"), content_type
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error.strip(), body


# -- the voice webhooks ----------------------------------------------------------------------------------------

form_values = st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=40), st.sampled_from([EN, "+15005550006"]))
forms = st.dictionaries(st.sampled_from(["CallSid", "To", "From", "AccountSid", "CallStatus", "Direction",
                                         "ApiVersion", "Caller", "Called", "x"]) | st.text(max_size=8),
                        form_values, max_size=8)


@FUZZ
@given(path=st.sampled_from(["/twilio/voice", "/signalwire/voice"]), form=forms,
       query=st.sampled_from(["", "?attempt=", "?attempt=abc", "?attempt=0123456789abcdef.AAAA", "?x=%00"]))
@example(path="/twilio/voice", form={"CallSid": "CA1", "To": EN, "From": "+15005550006"}, query="")
@example(path="/twilio/voice", form={"To": "\x00", "CallSid": "a" * 3000}, query="?attempt=abc")
def test_a_signed_voice_webhook_gets_twiml_or_a_refusal(server, path, form, query):
    url = server + path + query
    body = urllib.parse.urlencode(form).encode()
    signature = compute_signature(AUTH_TOKEN, url, form)
    status, answer, content_type = request("POST", url, body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
    assert status in (200, 403), (status, answer[:300])
    if status == 200:
        assert content_type.startswith("text/xml") and answer.startswith(b"<?xml") and b"<Response>" in answer


# -- the admin API ---------------------------------------------------------------------------------------------

query_values = st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=20),
                         st.sampled_from(["2026-12-05T10:00:00Z", "2026-12-05", "yesterday", "completed", "0", "-5",
                                          "99999999999999999999", "1e3"]))


@FUZZ
@given(path=st.sampled_from(["/api/calls", "/api/campaigns", "/api/dnc"]),
       params=st.dictionaries(st.sampled_from(["since", "until", "persona", "outcome", "limit", "cursor", "state",
                                               "region", "x"]), query_values, max_size=4))
def test_list_routes_answer_bad_parameters_by_name(server, path, params):
    status, body, content_type = request("GET", server + path + "?" + urllib.parse.urlencode(params), headers=HEADERS)
    deliberate_api_answer(status, body, content_type)


ids = st.one_of(st.sampled_from(["0000000000000001", "x", "..", "%00", "a" * 300, "%2e%2e%2f", "-1", "é"]),
                st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/?#"),
                        min_size=1, max_size=20))


@FUZZ
@given(resource=st.sampled_from(["/api/calls/{}", "/api/calls/{}/recording", "/api/campaigns/{}",
                                 "/api/campaigns/{}/export"]), ident=ids)
@example(resource="/api/calls/{}", ident="{")             # matches no route: aiohttp's own 404, in JSON too
def test_unknown_ids_are_not_found_or_bad_requests(server, resource, ident):
    status, body, content_type = request("GET", server + resource.format(urllib.parse.quote(ident, safe="")),
                                         headers=HEADERS)
    assert status in (400, 404), (status, body[:200])
    deliberate_api_answer(status, body, content_type)


json_bodies = st.one_of(
    hostile_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"definition": hostile_value, "contacts": hostile_value}).map(
        lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"definition": st.sampled_from(["name: x\npersona: test-en\ncarrier: twilio\n",
                                                          "name: [\n", "{}", "- a\n", "name: x\n" * 50]),
                           "contacts": st.sampled_from(["phone\n+15550001000\n", "", "phone\n\x00\n", "a,b\n1,2,3\n"])}
                          ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"phone": hostile_value}, optional={"note": hostile_value, "region": hostile_value}).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=80))


@FUZZ
@given(path=st.sampled_from(["/api/campaigns", "/api/dnc", "/api/dnc/import", "/api/campaigns/nosuch/start",
                             "/api/campaigns/nosuch/dance"]), body=json_bodies)
@example(path="/api/dnc", body=b'{"phone": "+15550001234", "region": ["US"]}')
@example(path="/api/dnc", body=b'{"phone": 15550001234}')
def test_posted_bodies_are_taken_or_refused_saying_why(server, path, body):
    status, answer, content_type = request("POST", server + path, body=body,
                                           headers={**HEADERS, "Content-Type": "application/json"})
    deliberate_api_answer(status, answer, content_type)


def test_the_server_still_answers_after_the_fuzzing(server):
    status, body, _ = request("GET", server + "/api/calls", headers=HEADERS)
    assert status == 200 and "calls" in json.loads(body)
    status, _, _ = request("GET", server + "/healthz")
    assert status == 200
