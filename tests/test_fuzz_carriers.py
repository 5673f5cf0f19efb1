"""Every carrier's wire parser under hostile input, at the one entry all of them share: a ``CarrierSession``
fed one message at a time (``handle_text``/``handle_bytes``, then ``authorize`` on a start), as the call-level
stream runner (voicebot/answer.py ``MediaStream.receive``) feeds it.

Properties, for any sequence of messages (real ones, real ones with a field broken, broken JSON, random
bytes), after a valid opening or without one:

* each message gives well-formed events or a ``ProtocolError`` whose message is short and says something;
  nothing else ever escapes (anything else would end the connection as an internal error);
* a bad message drops only itself: the session goes on, and a valid audio frame afterwards is decoded — or,
  before any start was announced, refused as such (or, where the carrier starts without a message, starts
  the call). A ``FatalProtocolError`` ends the stream; the runner feeds nothing after it, nor after a stop.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.telephony.asterisk import AsteriskSession
from voicebot.telephony.audiosocket import AudioSocketSession, message as tlv
from voicebot.telephony.base import (Audio, CallMeta, CarrierOptions, CarrierSession, Dtmf, FatalProtocolError,
                                     MarkPlayed, ProtocolError, Started, Stopped)
from voicebot.telephony.browser import BrowserSession
from voicebot.telephony.exotel import ExotelSession
from voicebot.telephony.freeswitch import FreeSwitchSession
from voicebot.telephony.jambonz import JambonzSession
from voicebot.telephony.plivo import PlivoSession
from voicebot.telephony.signalwire import SignalWireSession
from voicebot.telephony.telnyx import TelnyxSession
from voicebot.telephony.twilio import TwilioSession
from voicebot.telephony.twilio_auth import StreamTokens
from voicebot.telephony.vonage import VonageSession

from fuzzing import dumps, json_messages

MAX_PROBLEM_CHARS = 500      # a problem is one log line, whatever the peer sent

ULAW = base64.b64encode(bytes(range(256)) * 3 + bytes(192)).decode()       # 960 bytes: whole samples in any codec
PCM = np.arange(-240, 240, dtype="<i2").tobytes()                          # 960 bytes of L16


def _noop(_) -> None:
    pass


@dataclass(repr=False)
class Kit:
    """How one carrier's session is made and spoken to: its real messages, and a valid audio frame."""

    name: str
    make: Callable[[], CarrierSession]
    opening: list[str | bytes]          # a valid start of the stream
    templates: list[dict]               # real messages to break (start included: a broken start is the worst)
    probe: str | bytes                  # valid caller audio, once started
    binary: bool = False                # the carrier's audio comes as binary frames

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _twilio_like(name: str, make) -> Kit:
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "customParameters": {"From": "+15005550006", "To": "+15550000001", "token": "1700000000.abc"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    media = {"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
             "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": ULAW}}
    return Kit(name, make, [dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), dumps(start)],
               [start, media,
                {"event": "mark", "sequenceNumber": "3", "streamSid": "MZ1", "mark": {"name": "m1"}},
                {"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "4", "dtmf": {"track": "inbound_track",
                                                                                    "digit": "5"}},
                {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ1", "stop": {"callSid": "CA1"}}],
               dumps(media))


def _snake_case(name: str, make, stream_key: str, call_key: str, media_format: dict) -> Kit:
    start = {"event": "start", "sequence_number": "1", stream_key: "S1", "start": {
        call_key: "C1", stream_key: "S1", "from": "+15005550006", "to": "+15550000001",
        "custom_parameters": {"persona": "test-en"}, "client_state": base64.b64encode(b"attempt").decode(),
        "media_format": media_format}}
    media = {"event": "media", stream_key: "S1", "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                                           "payload": base64.b64encode(PCM).decode()}}
    return Kit(name, make, [dumps({"event": "connected", "version": "1.0.0"}), dumps(start)],
               [start, {**media, "sequence_number": "2"},
                {"event": "dtmf", "sequence_number": "3", stream_key: "S1", "dtmf": {"digit": "1"}},
                {"event": "mark", "sequence_number": "4", stream_key: "S1", "mark": {"name": "m1"}},
                {"event": "error", stream_key: "S1", "payload": {"code": 100002, "title": "t", "detail": "d"}},
                {"event": "stop", "sequence_number": "5", stream_key: "S1", "stop": {call_key: "C1"}}],
               dumps(media))      # no sequence number: Telnyx hands it on at once, whatever came before


def _plivo() -> Kit:
    start = {"event": "start", "sequenceNumber": 1, "start": {
        "callId": "c1", "streamId": "s1", "accountId": "MA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000}},
        "extra_headers": "to=15550000001,from=15005550006,token=secret1"}
    media = {"event": "media", "sequenceNumber": 2, "streamId": "s1",
             "media": {"track": "inbound", "timestamp": "1", "chunk": 1, "payload": base64.b64encode(PCM).decode()}}
    return Kit("plivo", lambda: PlivoSession(_noop, _noop, expected_secret="secret1", options=CarrierOptions()),
               [dumps(start)],
               [start, media,
                {"event": "dtmf", "sequenceNumber": 3, "streamId": "s1", "dtmf": {"track": "inbound", "digit": "2"}},
                {"event": "playedStream", "sequenceNumber": 4, "streamId": "s1", "name": "m1"},
                {"event": "clearedAudio", "sequenceNumber": 5, "streamId": "s1"}],
               dumps(media))


def _l16(name: str, make, opening: dict, controls: list[dict]) -> Kit:
    return Kit(name, make, [dumps(opening)], [opening, *controls], PCM, binary=True)


JAMBONZ_CONTROLS = [{"type": "mark", "data": {"name": "m1", "event": "playout"}},
                    {"type": "mark", "data": {"name": "m2", "event": "cleared"}},
                    {"event": "dtmf", "dtmf": "7", "duration": 240}]

ASTERISK_START = {"event": "MEDIA_START", "connection_id": "k1", "channel": "WebSocket/voicebot/0x1",
                  "channel_id": "ch1", "format": "ulaw", "optimal_frame_size": 160, "ptime": 20,
                  "channel_variables": {"MEDIA_WEBSOCKET_CONNECTION_ID": "k1"}}

KITS = [
    _twilio_like("twilio", lambda: TwilioSession(_noop, _noop, tokens=StreamTokens(b"k" * 32), upgrade_signed=False)),
    _twilio_like("signalwire", lambda: SignalWireSession(_noop, _noop, options=CarrierOptions(),
                                                         tokens=StreamTokens(b"k" * 32), upgrade_signed=False)),
    _snake_case("telnyx", lambda: TelnyxSession(_noop, _noop, expected_token="tok", options=CarrierOptions()),
                "stream_id", "call_control_id", {"encoding": "L16", "sample_rate": 16000, "channels": 1}),
    _snake_case("exotel", lambda: ExotelSession(_noop, _noop, options=CarrierOptions()),
                "stream_sid", "call_sid", {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}),
    _plivo(),
    _l16("vonage", lambda: VonageSession(_noop, _noop),
         {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "to": "+15550000001",
          "from": "+15005550006", "uuid": "u1", "persona": "test-en"},
         [{"event": "websocket:notify", "payload": {"mark": "m1"}}, {"event": "websocket:cleared"},
          {"event": "websocket:dtmf", "digit": "4", "duration": 120}]),
    _l16("jambonz", lambda: JambonzSession(_noop, _noop),
         {"callSid": "cs1", "callId": "ci1", "direction": "inbound", "from": "+15005550006", "to": "+15550000001",
          "sampleRate": 8000, "mixType": "mono", "bidirectionalAudio": {"sampleRate": 16000},
          "metadata": {"persona": "test-en"}},
         JAMBONZ_CONTROLS),
    _l16("freeswitch-fork", lambda: FreeSwitchSession(_noop, _noop, fork=True),
         {"uuid": "u1", "to": "+15550000001", "from": "+15005550006", "sampleRate": 16000}, JAMBONZ_CONTROLS),
    _l16("freeswitch-stream", lambda: FreeSwitchSession(_noop, _noop, fork=False, sample_rate=16000),
         {"uuid": "u1", "to": "+15550000001", "mix_type": "mono"}, JAMBONZ_CONTROLS),
    _l16("browser", lambda: BrowserSession(_noop, _noop, query={"persona": "test-en"}),
         {"type": "start", "rate": 16000, "persona": "test-en", "engine": "auto"},
         [{"type": "mark", "name": "vb1"}, {"type": "hangup"}]),
    Kit("asterisk", lambda: AsteriskSession(_noop, _noop, query={"to": "+15550000001"}),
        [dumps(ASTERISK_START)],
        [ASTERISK_START, {"event": "MEDIA_MARK_PROCESSED", "channel_id": "ch1", "correlation_id": "m1"},
         {"event": "DTMF_END", "channel_id": "ch1", "digit": "9"}, {"event": "MEDIA_XOFF", "channel_id": "ch1"},
         {"event": "MEDIA_XON", "channel_id": "ch1"}, {"event": "STATUS", "channel_id": "ch1"}],
        bytes(range(256)) * 3 + bytes(192), binary=True),
]


def _plain_asterisk_text() -> st.SearchStrategy[str]:
    """Asterisk's plain-text control: ``EVENT key:value …``, words shuffled and broken."""
    words = st.sampled_from(["MEDIA_START", "MEDIA_XOFF", "MEDIA_XON", "MEDIA_MARK_PROCESSED", "DTMF_END", "HANGUP",
                             "format:ulaw", "format:slin16", "format:", "format:opus", "optimal_frame_size:160",
                             "optimal_frame_size:0", "optimal_frame_size:1e999", "optimal_frame_size:x",
                             "connection_id:k1", "channel_id:", "digit:", "digit:1", "correlation_id:m", ":", "::"])
    return st.lists(st.one_of(words, st.text(max_size=6)), max_size=6).map(" ".join)


def messages_for(kit: Kit) -> st.SearchStrategy[str | bytes]:
    """What a hostile or broken peer of this carrier may send: mostly its own messages, broken."""
    parts = [json_messages(kit.templates), st.binary(max_size=64)]
    if kit.binary:
        # audio frames of every length: whole and partial samples, empty, larger than any frame
        parts += [st.binary(max_size=1100), st.integers(0, 4000).map(lambda n: bytes(n % 256 for _ in range(n)))]
    else:
        parts.append(st.text(max_size=30))
    if kit.name == "asterisk":
        parts.append(_plain_asterisk_text())
    return st.one_of(*parts)


def well_formed(events: object) -> None:
    """Events as the call expects them: the right types, whatever the carrier sent."""
    assert isinstance(events, list), events
    for event in events:
        if isinstance(event, Audio):
            assert isinstance(event.pcm, np.ndarray) and event.pcm.dtype == np.int16 and event.pcm.ndim == 1
        elif isinstance(event, Started):
            meta = event.meta
            assert isinstance(meta, CallMeta) and isinstance(meta.call_id, str)
            for value in (meta.stream_id, meta.from_number, meta.to_number, meta.persona):
                assert value is None or isinstance(value, str), meta
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.params.items()), meta.params
        elif isinstance(event, MarkPlayed):
            assert isinstance(event.name, str)
        elif isinstance(event, Dtmf):
            assert len(event.digit) == 1 and event.digit in "0123456789*#ABCD", event
        else:
            assert isinstance(event, Stopped) and isinstance(event.reason, str), event


class Peer:
    """Feeds one session as the stream runner does, checking every answer."""

    def __init__(self, session: CarrierSession) -> None:
        self.session = session
        self.started = False
        self.over = False        # a fatal problem or a stop: the runner closes the connection

    def send(self, message: str | bytes) -> list | ProtocolError:
        try:
            if isinstance(message, str):
                events = self.session.handle_text(message)
            else:
                events = self.session.handle_bytes(message)
        except ProtocolError as exc:
            problem = str(exc)
            assert problem.strip() and len(problem) <= MAX_PROBLEM_CHARS, problem[:1000]
            if isinstance(exc, FatalProtocolError):
                self.over = True
            return exc
        well_formed(events)
        for event in events:
            if isinstance(event, Started):
                assert not self.started, "a second start was announced on one stream"
                self.started = True
                refusal = self.session.authorize(event.meta)
                assert refusal is None or isinstance(refusal, str) and refusal
            elif isinstance(event, Stopped):
                self.over = True
        return events


def run_peer(kit: Kit, opened: bool, messages: list[str | bytes]) -> None:
    peer = Peer(kit.make())
    for message in (kit.opening if opened else []) + messages:
        if peer.over:
            return
        peer.send(message)
    if peer.over:
        return
    was_started = peer.started
    answer = peer.send(kit.probe)
    if was_started:       # the bad messages dropped themselves only: audio still flows
        assert isinstance(answer, list) and any(isinstance(e, Audio) and len(e.pcm) for e in answer), answer
    else:                 # nothing started, so audio is refused -- unless it is what starts this carrier's call
        assert isinstance(answer, ProtocolError) or peer.started, answer


@pytest.mark.parametrize("carrier", [kit.name for kit in KITS])
@given(data=st.data())
def test_a_session_survives_any_message_sequence(carrier: str, data) -> None:
    kit = next(kit for kit in KITS if kit.name == carrier)
    opened = data.draw(st.booleans(), label="valid opening first")
    messages = data.draw(st.lists(messages_for(kit), max_size=8), label="messages")
    run_peer(kit, opened, messages)


# -- AudioSocket: binary frames over TCP, cut into messages by the header's length ---------------------------

KINDS = st.one_of(st.sampled_from([0x00, 0x01, 0x03, 0x10, 0x11, 0x12, 0x13, 0x16, 0x18, 0xFF]), st.integers(0, 255))


def audiosocket_kit() -> Kit:
    return Kit("audiosocket", lambda: AudioSocketSession(_noop, _noop),
               [tlv(0x01, uuid.UUID(int=7).bytes)], [], tlv(0x10, PCM[:320]), binary=True)


@st.composite
def audiosocket_messages(draw) -> bytes:
    """Whole messages as ``read_message`` cuts them: any kind, any payload (partial samples, odd DTMF, …)."""
    kind = draw(KINDS)
    payload = draw(st.one_of(st.binary(max_size=700), st.sampled_from([b"", b"1", b"\x00" * 16, PCM[:320], PCM[:3]])))
    return tlv(kind, payload)


@given(opened=st.booleans(), messages=st.lists(audiosocket_messages(), max_size=8))
def test_an_audiosocket_session_survives_any_message_sequence(opened, messages) -> None:
    run_peer(audiosocket_kit(), opened, messages)


# -- what the fuzzing found: each broke a session before its fix ---------------------------------------------

def _start_of(carrier: str, **changes) -> str:
    """The carrier's valid start message with ``changes`` at dotted paths."""
    kit = next(kit for kit in KITS if kit.name == carrier)
    doc = json.loads(kit.opening[-1])
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value
    return dumps(doc)


def _twilio_media(payload: bytes) -> str:
    return dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(payload).decode()}})


REGRESSIONS = {
    # a second start re-announced the call and switched the codec under it
    "twilio, second start": ("twilio", True, [_start_of("twilio", **{"start.mediaFormat.encoding": "audio/x-alaw"})]),
    # JSON nested past the reader's recursion limit: RecursionError
    "twilio, deep nesting": ("twilio", True, ["[" * 20000]),
    "plivo, deep nesting": ("plivo", False, ['{"a":' * 20000]),
    # an integer of over 4300 digits: a ValueError without the position the error message read
    "telnyx, 4301-digit number": ("telnyx", True, ['{"event":"media","n":' + "9" * 4301 + "}"]),
    # the first audio of mod_audio_stream started the call, then its odd length dropped the start with it
    "freeswitch, odd first frame": ("freeswitch-stream", False, [b"\x00"]),
    # a 3000-character event name quoted whole in the problem: one 3 kB log line per frame
    "vonage, long event name": ("vonage", False, [dumps({"event": "a" * 3000})]),
    # AudioSocket: signed linear of an odd length (the ValueError of issue 14's list of bugs)
    "audiosocket, odd slin": ("audiosocket", True, [b"\x10\x00\x03abc"]),
    "twilio, mediaFormat not an object": ("twilio", False, [_start_of("twilio", **{"start.mediaFormat": True})]),
    "twilio, odd L16 payload": ("twilio", False, [_start_of("twilio", **{"start.mediaFormat.encoding": "audio/l16"}),
                                                  _twilio_media(b"abc")]),
    # int() of a digit that is not 0-9: the stream token's expiry "²"
    "twilio, token expiry ²": ("twilio", False, [_start_of("twilio", **{"start.customParameters.token": "².abc"})]),
    # OverflowError: 1e999 (Infinity) where a number was read
    "telnyx, sequence_number Infinity": ("telnyx", False, [_start_of("telnyx", sequence_number=float("inf"))]),
    "telnyx, sample_rate Infinity": ("telnyx", False, [_start_of("telnyx", **{"start.media_format.sample_rate":
                                                                              float("inf")})]),
    "asterisk, optimal_frame_size Infinity": ("asterisk", False,
                                              [_start_of("asterisk", optimal_frame_size=float("inf"))]),
    "vonage, rate infk": ("vonage", False, [_start_of("vonage", **{"content-type": "audio/l16;rate=infk"})]),
    # a format that is a list: "unhashable type"
    "asterisk, format list": ("asterisk", False, [_start_of("asterisk", format=["ulaw"])]),
    # a connection_id that is not text became the call's stream id
    "asterisk, connection_id false": ("asterisk", False, [_start_of("asterisk", connection_id=False)]),
    # DTMF "digits" that are no key reached the model as if typed
    "twilio, empty digit": ("twilio", True, [dumps({"event": "dtmf", "dtmf": {"digit": ""}})]),
    "exotel, long digit": ("exotel", True, [dumps({"event": "dtmf", "stream_sid": "S1", "dtmf": {"digit": "9" * 40}})]),
    "audiosocket, NUL digit": ("audiosocket", True, [b"\x03\x00\x01\x00"]),
}


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_a_message_that_broke_a_session(case: str) -> None:
    carrier, opened, messages = REGRESSIONS[case]
    kit = audiosocket_kit() if carrier == "audiosocket" else next(kit for kit in KITS if kit.name == carrier)
    run_peer(kit, opened, messages)
