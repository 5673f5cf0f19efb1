"""FreeSWITCH's side of a media stream (``telephony-protocols.md`` §7), as one of its two modules:

* ``module="fork"``: mod_audio_fork (jambonz's build), subprotocol ``audio.drachtio.org``, HTTP Basic
  credentials, the ``start`` command's metadata as one text frame, then binary L16; it plays binary L16 and
  speaks jambonz's control (``killAudio``, ``mark`` → ``playout``/``cleared``).
* ``module="stream"``: mod_audio_stream's full-duplex build, no subprotocol, ``Authorization: Bearer``
  from ``STREAM_EXTRA_HEADERS``, metadata only if given; it plays binary L16 as it arrives and has no marks
  and no flush: a ``killAudio`` text is only passed on to the dialplan as an event, so nothing is cleared.

Neither module puts the caller's keypresses on the stream, so a script cannot press keys here.
"""

from __future__ import annotations

import os

from voicebot.simulator.caller import CallResult, Message, ProtocolViolation, ServerEvent, Step
from voicebot.simulator.jambonz import JambonzProtocol
from voicebot.simulator.l16 import AUTO, dumps, exact_fields, simulate


class FreeSwitchProtocol(JambonzProtocol):
    name = "freeswitch"
    path = "/freeswitch/media"
    password_env = "FREESWITCH_WS_SECRET"

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", module: str = "fork",
                 rate: int = 8000, username: str = "voicebot", secret: str | None = AUTO,
                 metadata: dict | str | None = AUTO, query: dict[str, str] | None = None,
                 call_id: str | None = None) -> None:
        if module not in ("fork", "stream"):
            raise ValueError(f"module is 'fork' (mod_audio_fork) or 'stream' (mod_audio_stream), not {module!r}")
        if secret == AUTO:
            secret = os.environ.get(self.password_env)
        super().__init__(base_url, to=to, from_=from_, rate=rate, username=username,
                         password=secret if module == "fork" else None, query=query, call_id=call_id)
        self.module = module
        if module == "fork":
            self.subprotocol = "audio.drachtio.org"
        else:
            self.subprotocol = None
            self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.start_metadata = ({"uuid": self.call_uuid, "to": to, "from": from_, "sampleRate": rate}
                               if metadata == AUTO else metadata)

    carries_dtmf = False    # keypresses reach the dialplan, not the stream (an app may send them as text)

    def opening_messages(self) -> list[Message]:
        if self.start_metadata is None:
            return []
        return [self.start_metadata if isinstance(self.start_metadata, str) else dumps(self.start_metadata)]

    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        if self.module == "fork":
            return super().control(text, excerpt)
        obj = self.json_object(text, excerpt)
        if obj.get("type") != "killAudio":
            raise ProtocolViolation(f"mod_audio_stream has no command {obj.get('type')!r}: {excerpt!r}")
        exact_fields(obj, {"type": str}, "killAudio", excerpt)
        return []     # raised as a mod_audio_stream::json event; playback goes on


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated FreeSWITCH media stream against our server. Options: ``module`` ("fork" or "stream"),
    ``rate``, ``secret`` (``AUTO`` = ``$FREESWITCH_WS_SECRET``, None sends no credentials), ``metadata``
    (the start command's metadata: a dict sent as JSON, text, or None for none); the rest go to
    :class:`SimulatedCall`."""
    return await simulate(FreeSwitchProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
