"""Function tools: the dialplan's tools section, what a call offers per carrier, and running a model's calls —
built-in actions, webhooks against a real HTTP server (signed, timed out, failing, not JSON), bad arguments."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from voicebot.config import ConfigError
from voicebot.dialplan import load_dialplan
from voicebot.tools import (ActionFailed, CarrierAbilities, ToolBox, not_offered, offered)
from voicebot.webhooks import SIGNATURE_HEADER, signature_matches

SECRET = "test-webhook-secret-8d1f"

PERSONA = """\
name: tools
numbers: ["+15550009001"]
language: en
voice: lively-girl
instructions: Help.
tools:
{tools}
"""

GOOD_TOOLS = """\
  hang_up: true
  send_dtmf: true
  transfer:
    sales: "+15550001111"
    support: "sip:support@pbx.example.com"
  webhook_secret_env: TOOLS_TEST_SECRET
  webhooks:
    - name: check_order
      description: Look up an order by its number
      url: {url}
      parameters: {{type: object, properties: {{order_id: {{type: string}}}}, required: [order_id]}}
      timeout_s: 0.5
"""


def persona_with(tmp_path, tools: str):
    (tmp_path / "p.yaml").write_text(PERSONA.format(tools=tools), encoding="utf-8")
    return load_dialplan(tmp_path).personas[0]


@pytest.mark.parametrize("tools, field, problem", [
    ("  hang_up: yes please", "tools.hang_up", "true/false"),
    ("  transfer: {sales: '5550001111'}", "tools.transfer.sales", "E.164"),
    ("  transfer: {'bad name': '+15550001111'}", "tools.transfer.bad name", "target name"),
    ("  webhooks: [{name: check order, description: d, url: 'https://x.example'}]", "tools.webhooks[0].name",
     "function name"),
    ("  webhooks: [{name: lookup, description: d, url: 'ftp://x.example'}]", "tools.webhooks[0].url", "http/https"),
    ("  webhooks: [{name: lookup, description: d, url: 'https://x.example:99999'}]", "tools.webhooks[0].url",
     "a port up to 65535"),
    ("  webhooks: [{name: lookup, description: d, url: 'https://x.example', parameters: {type: string}}]",
     "tools.webhooks[0].parameters", "type object"),
    ("  webhooks: [{name: lookup, description: d, url: 'https://x.example',"
     " parameters: {type: object, properties: {a: {type: 7}}}}]", "tools.webhooks[0].parameters.properties.a.type",
     "JSON schema"),
    ("  webhooks: [{name: hang_up, description: d, url: 'https://x.example'}]", "tools.webhooks[0].name", "built-in"),
    ("  webhooks: [{name: a, description: d, url: 'https://x.example'}, {name: a, description: d,"
     " url: 'https://y.example'}]", "tools.webhooks[1].name", "two webhooks"),
    ("  webhooks: [{name: a, url: 'https://x.example'}]", "tools.webhooks[0].description", "required"),
    ("  hangup: true", "tools.hangup", "unknown field"),
])
def test_a_malformed_tools_section_names_file_and_field(tmp_path, tools, field, problem):
    with pytest.raises(ConfigError) as caught:
        persona_with(tmp_path, tools)
    assert caught.value.source.endswith("p.yaml")
    assert caught.value.field_path == field, str(caught.value)
    assert problem in caught.value.problem, str(caught.value)


def test_a_call_offers_what_its_carrier_can_do(tmp_path):
    persona = persona_with(tmp_path, GOOD_TOOLS.format(url="https://crm.example.com/orders"))
    everything = offered(persona.tools, CarrierAbilities(hang_up=True, transfer=True))
    assert [s.name for s in everything] == ["hang_up", "transfer", "send_dtmf", "check_order"]
    transfer = everything[1]
    assert transfer.parameters["properties"]["target"]["enum"] == ["sales", "support"]
    assert "+1555" not in json.dumps(transfer.parameters)        # the model picks a name, never a number
    no_api = CarrierAbilities(hang_up=True, transfer=False, missing={"transfer": "TWILIO_ACCOUNT_SID is not set"})
    assert [s.name for s in offered(persona.tools, no_api)] == ["hang_up", "send_dtmf", "check_order"]
    assert not_offered(persona.tools, no_api) == {"transfer": "TWILIO_ACCOUNT_SID is not set"}


class Actions:
    def __init__(self):
        self.done = []

    async def end_call(self, reason):
        self.done.append(("end", reason))

    async def transfer_call(self, name, target):
        if name == "support":
            raise ActionFailed("the transfer to support failed (HTTP 500)")
        self.done.append(("transfer", name, target))

    async def send_dtmf(self, digits):
        self.done.append(("dtmf", digits))


@pytest.fixture
async def crm(aiohttp_server):
    """A webhook receiver: checks the signature, answers by order id (one never answers, one fails)."""
    seen = []
    never = asyncio.Event()

    async def lookup(request):
        body = await request.read()
        seen.append((body, dict(request.headers)))
        if not signature_matches(body, SECRET, request.headers.get(SIGNATURE_HEADER)):
            return web.json_response({"error": "bad signature"}, status=401)
        order = json.loads(body)["order_id"]
        if order == "slow":
            await never.wait()
        if order == "broken":
            return web.Response(status=500, text="database down")
        if order == "html":
            return web.Response(text="<html>hello</html>", content_type="text/html")
        return web.json_response({"order_id": order, "status": "shipped"})

    app = web.Application()
    app.router.add_post("/orders", lookup)
    server = await aiohttp_server(app)
    return server, seen


@pytest.fixture
async def toolbox(tmp_path, crm, monkeypatch):
    server, _ = crm
    monkeypatch.setenv("TOOLS_TEST_SECRET", SECRET)
    persona = persona_with(tmp_path, GOOD_TOOLS.format(url=str(server.make_url("/orders"))))
    specs = offered(persona.tools, CarrierAbilities(hang_up=True, transfer=True))
    actions = Actions()
    async with aiohttp.ClientSession() as http:
        yield ToolBox(persona.tools, specs, actions, http=http, call_id="c1", persona="tools"), actions


async def test_a_webhook_tool_posts_signed_arguments_and_returns_the_answer(toolbox, crm):
    box, _ = toolbox
    result = await box.run("check_order", '{"order_id": "A-1001"}')
    assert result.ok and result.follow_up
    assert result.output == {"result": {"order_id": "A-1001", "status": "shipped"}}
    body, headers = crm[1][-1]
    assert json.loads(body) == {"order_id": "A-1001"}
    assert signature_matches(body, SECRET, headers[SIGNATURE_HEADER])
    assert headers["X-Voicebot-Call-Id"] == "c1" and headers["X-Voicebot-Tool"] == "check_order"
    assert box.calls[-1].ok and box.calls[-1].result == result.output


@pytest.mark.parametrize("order, problem", [("slow", "no answer within 0.5 s"), ("broken", "HTTP 500: database down"),
                                            ("html", "not JSON")])
async def test_a_failing_webhook_is_an_error_result_for_the_model(toolbox, order, problem):
    box, _ = toolbox
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await box.run("check_order", json.dumps({"order_id": order}))
    assert not result.ok and result.follow_up           # the model is told, the call goes on
    assert problem in result.output["error"]
    assert loop.time() - began < 2.0                    # bounded by the tool's timeout_s


@pytest.mark.parametrize("name, arguments, problem", [
    ("check_order", "{order_id: 1}", "not valid JSON"),
    ("check_order", "[1, 2]", "JSON object"),
    ("check_order", '{"order": "A-1"}', "'order_id' is a required property"),
    ("check_order", '{"order_id": 42}', "order_id: 42 is not of type 'string'"),
    ("transfer", '{"target": "billing"}', "unknown transfer target 'billing'; the targets are: sales, support"),
    ("transfer", "{}", "'target' is a required property"),
    ("send_dtmf", '{"digits": "12x"}', "does not match"),
    ("launch_rocket", "{}", "there is no tool named 'launch_rocket'"),
])
async def test_bad_calls_are_error_results_and_do_nothing(toolbox, name, arguments, problem):
    box, actions = toolbox
    result = await box.run(name, arguments)
    assert not result.ok and result.follow_up
    assert problem in result.output["error"], result.output
    assert actions.done == []


async def test_built_in_tools_act_on_the_call(toolbox):
    box, actions = toolbox
    hang_up = await box.run("hang_up", "")
    assert hang_up.ok and not hang_up.follow_up
    transfer = await box.run("transfer", '{"target": "sales"}')
    assert transfer.ok and not transfer.follow_up
    dtmf = await box.run("send_dtmf", '{"digits": "1#"}')
    assert dtmf.ok and dtmf.follow_up
    failed = await box.run("transfer", '{"target": "support"}')
    assert not failed.ok and failed.follow_up and "HTTP 500" in failed.output["error"]
    assert actions.done == [("end", "the bot ended the call"), ("transfer", "sales", "+15550001111"),
                            ("dtmf", "1#")]
