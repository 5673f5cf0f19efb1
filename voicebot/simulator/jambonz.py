"""jambonz's side of a ``listen`` call with bidirectional streaming audio (``telephony-protocols.md`` §5).

jambonz connects with subprotocol ``audio.jambonz.org`` and the verb's ``wsAuth`` as HTTP Basic
credentials, sends the call's attributes as one JSON text frame, then binary L16 at ``sampleRate`` and
(``passDtmf``) a ``{"event":"dtmf","dtmf":…,"duration":…}`` text per key pressed. From
the server it takes binary L16 (played at ``bidirectionalAudio.sampleRate``, here the same rate) and the
text commands ``killAudio``, ``mark`` (at most 30 outstanding), ``clearMarks`` and ``disconnect``. A mark
comes back as ``{"type":"mark","data":{"name":…,"event":"playout"}}`` when reached, or with
``"event":"cleared"`` when a killAudio flushed it.
"""

from __future__ import annotations

import os

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, ClearPlayback, Message, ProtocolViolation, QueueMark,
                                       ServerEvent, Step)
from voicebot.simulator.l16 import AUTO, L16Protocol, basic_auth, dumps, exact_fields, new_uuid, simulate

MAX_MARKS = 30


class JambonzProtocol(L16Protocol):
    name = "jambonz"
    path = "/jambonz/media"
    subprotocol = "audio.jambonz.org"
    password_env = "JAMBONZ_WS_PASSWORD"
    # Text commands the carrier takes: name → the exact fields of the message.
    commands: dict[str, dict[str, type]] = {"killAudio": {"type": str}, "mark": {"type": str, "data": dict},
                                            "clearMarks": {"type": str}, "disconnect": {"type": str}}

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", rate: int = 8000,
                 username: str = "voicebot", password: str | None = AUTO, metadata: dict | None = None,
                 query: dict[str, str] | None = None, call_id: str | None = None) -> None:
        if password == AUTO:
            password = os.environ.get(self.password_env)
        super().__init__(base_url, headers={"Authorization": basic_auth(username, password)} if password else {},
                         query=query, codec=WireCodec("l16", rate), call_id=call_id)
        self.to, self.from_, self.rate = to, from_, rate
        self.metadata = dict(metadata or {})
        self.outstanding_marks = 0

    def opening_messages(self) -> list[Message]:
        return [dumps({"callSid": self.call_uuid, "callId": new_uuid(), "direction": "inbound",
                       "from": self.from_, "to": self.to, "accountSid": new_uuid(), "applicationSid": new_uuid(),
                       "sampleRate": self.rate, "mixType": "mono", **self.metadata})]

    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        obj = self.json_object(text, excerpt)
        kind = obj.get("type")
        if kind not in self.commands:
            raise ProtocolViolation(f"unknown type {kind!r} (only {', '.join(self.commands)}): {excerpt!r}")
        exact_fields(obj, self.commands[kind], kind, excerpt)
        if kind == "killAudio":
            return [ClearPlayback()]
        if kind == "mark":
            exact_fields(obj["data"], {"name": str}, "mark.data", excerpt)
            if self.outstanding_marks >= MAX_MARKS:
                raise ProtocolViolation(f"mark {obj['data']['name']!r}: already {MAX_MARKS} marks outstanding")
            self.outstanding_marks += 1
            return [QueueMark(obj["data"]["name"])]
        return []   # clearMarks, disconnect: accepted (the server closes the socket itself)

    carries_dtmf = True     # the listen verb's passDtmf

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [dumps({"event": "dtmf", "dtmf": digit, "duration": duration_ms})]

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        self.outstanding_marks -= 1
        return [dumps({"type": "mark", "data": {"name": name, "event": "cleared" if cleared else "playout"}})]


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated jambonz ``listen`` call against our server. Options: ``rate``, ``username``,
    ``password`` (``AUTO`` = ``$JAMBONZ_WS_PASSWORD``, None sends no credentials), ``metadata`` (merged into
    the call attributes, e.g. ``{"persona": …}``); the rest go to :class:`SimulatedCall`."""
    return await simulate(JambonzProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
