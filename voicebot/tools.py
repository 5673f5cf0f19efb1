"""The function tools a persona offers the model: defined once here, translated to each engine's shape there.

A persona's ``tools:`` section names them (read by :func:`read_tools`, errors name file and field):

* ``hang_up`` — ``hang_up()``: the bot ends the call once its last words have played;
* ``transfer`` — ``transfer(target)`` with named targets (E.164 numbers or ``sip:`` URIs): the model picks a
  name, never a number, so it cannot dial anything the persona did not list;
* ``send_dtmf`` — ``send_dtmf(digits)``: keypad tones played to the other side (e.g. an IVR);
* ``webhooks`` — each one a function whose arguments are POSTed as JSON to its URL, signed with the secret in
  ``webhook_secret_env``; the JSON answer goes back to the model.

Campaign calls (outbound) also offer, whatever the persona says: ``set_outcome(outcome, note)`` with the
campaign's outcomes as the choices, and ``opt_out()`` — the callee asked not to be called again; the bot says
goodbye and hangs up.

Which of them a call really offers also depends on its carrier (:func:`offered`): a carrier that cannot
transfer gets no ``transfer``. A call runs tools through its :class:`ToolBox`: arguments checked against the
function's schema, the action carried out, and a :class:`ToolResult` for the model. A bad call never ends or
blocks the call: the model gets an error result and the conversation goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import jsonschema
import structlog

from . import jsoncodec
from .config import Fields, absolute_url, url_problem
from .webhooks import WebhookFailed, post_json

log = structlog.get_logger("voicebot.tools")

HANG_UP, TRANSFER, SEND_DTMF = "hang_up", "transfer", "send_dtmf"
SET_OUTCOME, OPT_OUT = "set_outcome", "opt_out"     # campaign calls only
BUILT_IN = (HANG_UP, TRANSFER, SEND_DTMF, SET_OUTCOME, OPT_OUT)
MAX_NOTE_CHARS = 1000
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")      # StepFun's rule for function names
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
SIP_URI = re.compile(r"^sips?:[^\s@]+@[^\s]+$")
DTMF_DIGITS = re.compile(r"^[0-9*#wW]{1,32}$")
DEFAULT_SECRET_ENV = "VOICEBOT_WEBHOOK_SECRET"
DEFAULT_WEBHOOK_TIMEOUT_S = 4.0
MAX_ARGUMENTS_CHARS = 8192


@dataclass(frozen=True)
class WebhookTool:
    name: str
    description: str
    url: str
    parameters: dict
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S


@dataclass(frozen=True)
class ToolSettings:
    """A persona's ``tools:`` section."""

    hang_up: bool = False
    transfer: dict[str, str] = field(default_factory=dict)     # target name -> E.164 number or sip: URI
    send_dtmf: bool = False
    webhooks: tuple[WebhookTool, ...] = ()
    webhook_secret_env: str = DEFAULT_SECRET_ENV

    @property
    def names(self) -> list[str]:
        return ([HANG_UP] if self.hang_up else []) + ([TRANSFER] if self.transfer else []) + \
               ([SEND_DTMF] if self.send_dtmf else []) + [w.name for w in self.webhooks]


def read_tools(fields: Fields) -> ToolSettings:
    """The ``tools`` section of a persona (``fields`` is that section)."""
    hang_up = fields.get("hang_up", bool, False)
    send_dtmf = fields.get("send_dtmf", bool, False)
    targets = fields.section("transfer")
    transfer: dict[str, str] = {}
    for name, target in targets.data.items():
        targets.get(name, str)      # type check with a located error
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise targets.error(str(name), "a target name uses only letters, digits, _ and - (at most 64)")
        if not (E164.match(target) or SIP_URI.match(target)):
            raise targets.error(name, f"expected an E.164 number such as +15550001111 (quoted) or a sip: URI "
                                      f"such as sip:desk@pbx.example.com, got {target!r}")
        transfer[name] = target
    secret_env = fields.get("webhook_secret_env", str, DEFAULT_SECRET_ENV)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", secret_env):
        raise fields.error("webhook_secret_env", f"expected the name of an environment variable, got {secret_env!r}")
    hooks = fields.get("webhooks", list, [])
    webhooks: list[WebhookTool] = []
    for i, item in enumerate(hooks):
        webhooks.append(_read_webhook(Fields(fields.source, item, fields.path(f"webhooks[{i}]"))))
    names = [w.name for w in webhooks]
    for i, name in enumerate(names):
        if name in BUILT_IN:
            raise fields.error(f"webhooks[{i}].name", f"{name!r} is a built-in tool; choose another name")
        if name in names[:i]:
            raise fields.error(f"webhooks[{i}].name", f"two webhooks are named {name!r}")
    fields.reject_unknown()
    return ToolSettings(hang_up=hang_up, transfer=transfer, send_dtmf=send_dtmf, webhooks=tuple(webhooks),
                        webhook_secret_env=secret_env)


def _read_webhook(f: Fields) -> WebhookTool:
    name = f.get("name", str)
    if not FUNCTION_NAME.match(name):
        raise f.error("name", f"a function name uses only ASCII letters, digits, _ and - (at most 64), got {name!r}")
    description = f.get("description", str)
    url = f.get("url", str)
    if not absolute_url(url):
        raise f.error("url", url_problem(url))
    parameters = f.get("parameters", dict, {"type": "object", "properties": {}})
    if parameters.get("type") != "object":
        raise f.error("parameters", "must be a JSON schema of type object (the function's arguments)")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise f.error("parameters" + (f".{where}" if where else ""), f"not a valid JSON schema: {exc.message}") from None
    timeout_s = f.get("timeout_s", float, DEFAULT_WEBHOOK_TIMEOUT_S, minimum=0.1, maximum=30.0)
    f.reject_unknown()
    return WebhookTool(name=name, description=description, url=url, parameters=parameters, timeout_s=timeout_s)


# -- what a call offers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CarrierAbilities:
    """What the call's carrier can do (its stream protocol and call-control API, as configured)."""

    hang_up: bool = True
    transfer: bool = False
    send_dtmf: bool = True       # keypad tones go out in the call's own audio
    missing: dict[str, str] = field(default_factory=dict)    # tool name -> why the carrier cannot


@dataclass(frozen=True)
class FunctionSpec:
    """One function as offered to a model: the engines only translate this shape."""

    name: str
    description: str
    parameters: dict


def _built_in_specs(tools: ToolSettings) -> dict[str, FunctionSpec]:
    return {
        HANG_UP: FunctionSpec(HANG_UP, "End the phone call. Say goodbye first; the call ends once the caller has "
                              "heard your last words.", {"type": "object", "properties": {
                                  "reason": {"type": "string", "description": "why the call ends, for the record"}},
                                  "additionalProperties": False}),
        TRANSFER: FunctionSpec(TRANSFER, "Transfer the caller to a person or department. Tell the caller first; "
                               "the transfer happens once they have heard you. Targets: "
                               + ", ".join(tools.transfer), {
                                   "type": "object", "properties": {"target": {
                                       "type": "string", "enum": list(tools.transfer),
                                       "description": "who to transfer to"}},
                                   "required": ["target"], "additionalProperties": False}),
        SEND_DTMF: FunctionSpec(SEND_DTMF, "Press keys on the phone keypad (DTMF tones), e.g. to navigate a menu.",
                                {"type": "object", "properties": {"digits": {
                                    "type": "string", "pattern": DTMF_DIGITS.pattern,
                                    "description": "0-9, * and #; w waits half a second"}},
                                 "required": ["digits"], "additionalProperties": False}),
    }


def campaign_specs(outcomes: tuple[str, ...]) -> list[FunctionSpec]:
    """The campaign tools: ``set_outcome`` (when the campaign has outcomes) and ``opt_out``."""
    specs = []
    if outcomes:
        specs.append(FunctionSpec(SET_OUTCOME, "Record how this call went, for the campaign's results. Call it once "
                                  "the outcome is clear; call it again if it changes. Outcomes: "
                                  + ", ".join(outcomes), {
                                      "type": "object", "properties": {
                                          "outcome": {"type": "string", "enum": list(outcomes),
                                                      "description": "how the call went"},
                                          "note": {"type": "string", "maxLength": MAX_NOTE_CHARS,
                                                   "description": "a short note for whoever reads the results"}},
                                      "required": ["outcome"], "additionalProperties": False}))
    specs.append(FunctionSpec(OPT_OUT, "The person asked not to be called again: their number goes on the "
                              "do-not-call list; you say goodbye and the call ends.",
                              {"type": "object", "properties": {}, "additionalProperties": False}))
    return specs


def offered(tools: ToolSettings, abilities: CarrierAbilities,
            outcomes: tuple[str, ...] | None = None) -> list[FunctionSpec]:
    """The functions a call offers: the persona's tools that its carrier can carry out, and on a campaign
    call (``outcomes`` not None) the campaign tools."""
    built_in = _built_in_specs(tools)
    specs = [built_in[name] for name in (HANG_UP, TRANSFER, SEND_DTMF)
             if name in tools.names and getattr(abilities, name)]
    specs += [FunctionSpec(w.name, w.description, w.parameters) for w in tools.webhooks]
    return specs + (campaign_specs(outcomes) if outcomes is not None else [])


def not_offered(tools: ToolSettings, abilities: CarrierAbilities) -> dict[str, str]:
    """The persona's built-in tools its carrier cannot carry out, and why (for ``voicebot check``)."""
    return {name: abilities.missing.get(name, "not supported by this carrier")
            for name in (HANG_UP, TRANSFER, SEND_DTMF) if name in tools.names and not getattr(abilities, name)}


# -- running tools -------------------------------------------------------------------------------------

@dataclass
class ToolResult:
    """What the model is told, and whether it should speak again (not after the call ended or moved on)."""

    output: dict
    ok: bool = True
    follow_up: bool = True

    @property
    def text(self) -> str:
        return json.dumps(self.output, ensure_ascii=False)


class CallActions(Protocol):
    """What tools do to the call (the Call implements these)."""

    async def end_call(self, reason: str) -> None: ...

    async def transfer_call(self, name: str, target: str) -> None: ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def set_outcome(self, outcome: str, note: str | None) -> None: ...

    async def opt_out(self) -> None: ...


class ActionFailed(Exception):
    """A call action could not be carried out; the message is for the model and the log."""


@dataclass
class ToolCall:
    """One tool call as it happened (kept for the call record)."""

    name: str
    arguments: str
    result: dict | None = None
    ok: bool = False
    t_ms: int = 0
    duration_ms: int = 0


class ToolBox:
    """The tools of one call: checks a model's call, carries it out, and says what to tell the model."""

    def __init__(self, tools: ToolSettings, specs: list[FunctionSpec], actions: CallActions, *,
                 http, call_id: str, persona: str, log=None, on_done: Callable[[ToolCall], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tools = tools
        self.specs = {spec.name: spec for spec in specs}
        self.actions = actions
        self.http = http
        self.call_id = call_id
        self.persona = persona
        self.log = log or structlog.get_logger("voicebot.tools")
        self.clock = clock
        self.on_done = on_done      # told of each finished call at once (the call may end with it)
        self.started = clock()
        self.calls: list[ToolCall] = []
        self._validators = {spec.name: jsonschema.Draft202012Validator(spec.parameters) for spec in specs}
        self._webhooks = {w.name: w for w in tools.webhooks}

    @property
    def secret(self) -> str | None:
        return os.environ.get(self.tools.webhook_secret_env) or None

    async def run(self, name: str, arguments: str) -> ToolResult:
        record = ToolCall(name, arguments, t_ms=round((self.clock() - self.started) * 1000))
        self.calls.append(record)
        began = self.clock()
        try:
            result = await self._run(name, arguments)
        except ActionFailed as exc:
            result = ToolResult({"error": str(exc)}, ok=False)
        record.result, record.ok = result.output, result.ok
        record.duration_ms = round((self.clock() - began) * 1000)
        self.log.info("tool_call", tool=name, arguments=arguments[:500], ok=result.ok, result=result.text[:500],
                      duration_ms=record.duration_ms)
        if self.on_done is not None:
            self.on_done(record)
        return result

    async def _run(self, name: str, arguments: str) -> ToolResult:
        spec = self.specs.get(name)
        if spec is None:
            return ToolResult({"error": f"there is no tool named {name!r}; the tools are: "
                                        f"{', '.join(self.specs) or 'none'}"}, ok=False)
        args = self._parse(name, arguments)
        if isinstance(args, ToolResult):
            return args
        if name == HANG_UP:
            await self.actions.end_call(str(args.get("reason") or "the bot ended the call"))
            return ToolResult({"status": "call ended"}, follow_up=False)
        if name == TRANSFER:
            target_name = args["target"]
            await self.actions.transfer_call(target_name, self.tools.transfer[target_name])
            return ToolResult({"status": f"transferred to {target_name}"}, follow_up=False)
        if name == SEND_DTMF:
            await self.actions.send_dtmf(args["digits"])
            return ToolResult({"status": f"sent {args['digits']}"})
        if name == SET_OUTCOME:
            await self.actions.set_outcome(args["outcome"], args.get("note") or None)
            return ToolResult({"status": f"outcome recorded: {args['outcome']}"})
        if name == OPT_OUT:
            await self.actions.opt_out()
            return ToolResult({"status": "opted out; call ended"}, follow_up=False)
        return await self._webhook(self._webhooks[name], args)

    def _parse(self, name: str, arguments: str) -> dict | ToolResult:
        if len(arguments) > MAX_ARGUMENTS_CHARS:
            return ToolResult({"error": f"arguments longer than {MAX_ARGUMENTS_CHARS} characters"}, ok=False)
        try:
            args = jsoncodec.loads(arguments) if arguments.strip() else {}     # the model's text: any depth
        except ValueError as exc:
            return ToolResult({"error": f"arguments are not valid JSON ({exc}); send a JSON object"}, ok=False)
        if not isinstance(args, dict):
            return ToolResult({"error": "arguments must be a JSON object"}, ok=False)
        if name == TRANSFER and isinstance(args.get("target"), str) and args["target"] not in self.tools.transfer:
            return ToolResult({"error": f"unknown transfer target {args['target']!r}; the targets are: "
                                        f"{', '.join(self.tools.transfer)}"}, ok=False)
        problems = sorted(self._validators[name].iter_errors(args), key=lambda e: list(e.path))
        if problems:
            where = ".".join(str(p) for p in problems[0].path)
            return ToolResult({"error": "arguments do not match the function's parameters: "
                                        + (f"{where}: " if where else "") + problems[0].message}, ok=False)
        return args

    async def _webhook(self, hook: WebhookTool, args: dict) -> ToolResult:
        try:
            answer = await post_json(self.http, hook.url, args, secret=self.secret, timeout_s=hook.timeout_s,
                                     headers={"X-Voicebot-Call-Id": self.call_id, "X-Voicebot-Tool": hook.name,
                                              "X-Voicebot-Persona": self.persona})
        except WebhookFailed as exc:
            self.log.warning("tool_webhook_failed", tool=hook.name, url=hook.url, problem=str(exc))
            return ToolResult({"error": f"{hook.name} failed: {exc}"}, ok=False)
        return ToolResult({"result": answer})


def secret_problems(tools: ToolSettings) -> str | None:
    """Why this persona's webhook requests would go out unsigned, or None."""
    if tools.webhooks and not os.environ.get(tools.webhook_secret_env):
        return f"{tools.webhook_secret_env} is not set: webhook tool requests will not be signed"
    return None


