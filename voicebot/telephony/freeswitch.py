"""FreeSWITCH media over WebSocket: mod_audio_fork and mod_audio_stream (``telephony-protocols.md`` §7).

Both connect to ``/freeswitch/media``, send the metadata given on their ``start`` command as one text frame
(if any), then binary L16 at 8 or 16 kHz. Which module is on the other end is told by the subprotocol:

* **mod_audio_fork** (jambonz's build, subprotocol ``audio.drachtio.org``) plays binary L16 we send and
  speaks jambonz's control: ``killAudio`` flushes playback, ``mark`` comes back as ``playout``/``cleared``.
  ``uuid_audio_fork <uuid> start wss://bot.example.com/freeswitch/media mono 16k '{"to":"+15551230001"}'``
  with ``MOD_AUDIO_BASIC_AUTH_USERNAME``/``MOD_AUDIO_BASIC_AUTH_PASSWORD`` set to ``voicebot`` and the
  secret.
* **mod_audio_stream** (no subprotocol) plays binary L16 back in its full-duplex builds but has no marks
  and no in-band flush, so we pace close to real time, count what we sent as heard (it cannot be taken
  back) and a barge-in stops our sending; ``killAudio`` is still sent, which the module raises as a
  ``mod_audio_stream::json`` event for the dialplan to ``uuid_break`` on. Authenticate with
  ``STREAM_EXTRA_HEADERS={"Authorization":"Bearer <secret>"}``.

The metadata (a JSON object; other text is kept as ``params["metadata"]``) and the URL query may carry
``to``, ``from``, ``uuid``, ``persona`` and ``sampleRate``; without them the stream runs at
``carriers.freeswitch.sample_rate`` and is answered by ``carriers.freeswitch.persona`` or the default persona.
"""

from __future__ import annotations

from aiohttp import web

from .base import BasicAuthRoute, CarrierEvent, ProtocolError, parse_json_object, secret_matches
from .jambonz import JambonzSession
from .l16 import call_params, parse_rate

MEDIA_PATH = "/freeswitch/media"
FORK_SUBPROTOCOL = "audio.drachtio.org"
SECRET_ENV = "FREESWITCH_WS_SECRET"
STREAM_LEAD_MS = 40     # mod_audio_stream: no flush, so little may be in flight when the caller barges in


class FreeSwitchSession(JambonzSession):
    carrier = "freeswitch"
    opening_name = "metadata"

    def __init__(self, send_text, send_bytes, *, fork: bool, sample_rate: int = 8000, **kwargs) -> None:
        super().__init__(send_text, send_bytes, **kwargs)
        self.fork = fork
        self.sample_rate = sample_rate
        if not fork:
            self.max_lead_ms = STREAM_LEAD_MS
            self.can_flush = False

    def send_mark(self, name: str) -> None:
        if self.fork:
            super().send_mark(name)
        else:
            self.reached_when_sent(name)    # mod_audio_stream: no marks, no flush

    def handle_text(self, text: str) -> list[CarrierEvent]:
        if self.started:
            return self.control(parse_json_object(text))
        try:
            msg = parse_json_object(text)
        except ProtocolError:
            msg = {"metadata": text}     # metadata is whatever text the start command was given
        return self.opening(msg)

    def handle_bytes(self, data: bytes) -> list[CarrierEvent]:
        if self.started:
            return super().handle_bytes(data)
        events = self.opening({})        # mod_audio_stream sends no metadata unless given some: audio starts the call
        try:
            return events + super().handle_bytes(data)
        except ProtocolError:
            self.decoder = self.encoder = None    # not started after all: the next good frame starts the call
            raise

    def opening(self, msg: dict) -> list[CarrierEvent]:
        params = call_params(msg, self.query)
        rate = parse_rate(params.get("sampleRate") or params.get("sample_rate") or self.sample_rate, "metadata")
        self.channels = 2 if (params.get("mixType") or params.get("mix_type")) == "stereo" else 1
        call_id = params.get("uuid") or params.get("callSid") or params.get("call_id")
        return self.begin(call_id=call_id, params=params, rate=rate)


class FreeSwitchRoute(BasicAuthRoute):
    """mod_audio_fork authenticates with HTTP Basic, mod_audio_stream with ``Authorization: Bearer``; both
    check the same secret."""

    carrier = "freeswitch"
    path = MEDIA_PATH
    session_cls = FreeSwitchSession
    protocols = (FORK_SUBPROTOCOL,)
    password_env = SECRET_ENV

    def configure(self, fields) -> None:
        super().configure(fields)
        self.sample_rate = fields.get("sample_rate", int, 8000, choices=(8000, 16000, 24000))

    def auth_problem(self, request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.password:
            return None if secret_matches(value.strip(), self.password) else "bearer token does not match"
        return super().auth_problem(request)

    def session_kwargs(self, request: web.Request) -> dict:
        requested = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        return {**super().session_kwargs(request), "fork": FORK_SUBPROTOCOL in requested,
                "sample_rate": self.sample_rate}


add_routes = FreeSwitchRoute.add_routes
