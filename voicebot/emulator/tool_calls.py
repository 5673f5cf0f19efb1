"""When the emulated models call a tool: directives read from the text a model legitimately receives.

The emulator has no judgement, so a test (or a demo persona) says in plain words when to call what; the
same words would steer a real model. Two forms:

* **By caller turn**, in the instructions (realtime ``session.instructions``, chat ``system`` messages),
  each at the end of a line::

      On caller turn 2, say "Let me put you through." and call transfer {"target": "sales"}.
      On caller turn 3, call hang_up.

  Caller turn N is the N-th user item / message of the conversation (caller speech and user text alike,
  e.g. keypad input passed on as text). The say part is optional (without it the reply is the call alone)
  and so are the arguments (``{}`` when left out).
* **Inline**, in a user text item / message: ``Call tool: <name> <json-args>``. The text before it, if
  any, is answered by the usual rules first (e.g. ``Say exactly: One moment. Call tool: check_order
  {"order_id": "42"}``).

The arguments are everything after the name up to the end of the line, minus one final ``.`` (which ends
the sentence), and are sent **verbatim**: invalid JSON or arguments that do not match the schema go out
as written, as real models sometimes send them. A call is made only if the request offers a function
tool of that name (and ``tool_choice`` is not ``"none"``); otherwise the model answers as usual and the
emulator logs why it did not call.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

import structlog

log = structlog.get_logger("voicebot.emulator")

NO_ARGUMENTS = "{}"
FRAGMENTS = 4          # how many pieces the arguments are streamed in (fewer when they are shorter)

_NAME = r"[A-Za-z0-9_-]{1,64}"
FUNCTION_NAME_RE = re.compile(f"^{_NAME}$")
_TURN_RE = re.compile(
    rf"On caller turn (\d+),\s*(?:say \"(.*?)\" and )?call ({_NAME})(?=[\s.]|$)([^\n]*)", re.IGNORECASE)
_INLINE_RE = re.compile(rf"Call tool:\s*({_NAME})(?=[\s.]|$)([^\n]*)", re.IGNORECASE)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str             # verbatim, possibly not JSON
    say: str | None = None     # the line spoken before the call, if any


def _arguments(rest: str) -> str:
    rest = rest.strip()
    if rest.endswith("."):
        rest = rest[:-1].rstrip()
    return rest or NO_ARGUMENTS


@lru_cache(maxsize=256)
def turn_directives(instructions: str) -> dict[int, ToolCall]:
    """Caller turn → the call to make in reply to it (the last directive for a turn wins)."""
    return {int(m.group(1)): ToolCall(m.group(3), _arguments(m.group(4)), m.group(2) or None)
            for m in _TURN_RE.finditer(instructions)}


def inline_call(text: str) -> tuple[str, ToolCall] | None:
    """(the text before it, the call) for a ``Call tool:`` directive in a user's text, else None."""
    match = _INLINE_RE.search(text)
    if match is None:
        return None
    return text[:match.start()].strip(), ToolCall(match.group(1), _arguments(match.group(2)))


def parameters_problem(parameters: Any) -> str | None:
    """Why a function tool's ``parameters`` is not a JSON Schema of an object (None: it is)."""
    if not isinstance(parameters, dict):
        return "must be an object: a JSON Schema with type 'object'."
    if parameters.get("type") != "object":
        return f"must be a JSON Schema with type 'object', got type {parameters.get('type')!r}."
    if not isinstance(parameters.get("properties", {}), dict):
        return "'properties' must be an object."
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return "'required' must be an array of property names."
    return None


def offered_functions(tools: Iterable[Any] | None, tool_choice: Any = "auto") -> set[str]:
    """Names of the function tools a request offers (none when ``tool_choice`` is ``"none"``)."""
    if tool_choice == "none":
        return set()
    return {tool["function"]["name"] for tool in tools or ()
            if isinstance(tool, dict) and tool.get("type") == "function"}


def allowed(call: ToolCall | None, offered: set[str], **context: Any) -> ToolCall | None:
    """``call`` if its tool is offered; else None, with a log line saying why the model answers instead."""
    if call is None or call.name in offered:
        return call
    log.warning("emulator_tool_not_offered", tool=call.name, offered=sorted(offered), **context)
    return None


def new_call_id() -> str:
    return f"call_{random.getrandbits(96):024x}"


def fragments(arguments: str) -> list[str]:
    """The arguments cut into up to ``FRAGMENTS`` consecutive pieces, as a model streams them."""
    size = max(1, -(-len(arguments) // FRAGMENTS))
    return [arguments[i:i + size] for i in range(0, len(arguments), size)] or [""]
