"""Outbound calls through the Twilio and Telnyx clients, against the fake carriers, with our side on loopback.

The clients' dial requests are checked at the fake as the vendor checks them; the fake's callees ring, answer
(or not) and send signed callbacks for real to a small server playing ours, which verifies and parses them with
the clients' ``read_callback``; answered calls follow the instructions into that server's media WebSocket, where a
bot plays audio back once the answering-machine verdict says who answered. Forged, expired and replayed callbacks
must be refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import urlencode

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from conftest import listening_socket
from voicebot.audio import RATE
from voicebot.audio.g711 import ulaw_encode
from voicebot.config import Settings, TwilioSettings
from voicebot.simulator.carrier_api import (Busy, Failed, FakeTelnyxApi, FakeTwilioApi, Human, NoAnswer, Voicemail,
                                            speech, tone)
from voicebot.simulator.caller import Say
from voicebot.telephony.base import CallMeta, Started
from voicebot.telephony.rest import CallControlError, call_control_for
from voicebot.telephony.rest.base import CallbackRefused, CallProgress, DialRequest
from voicebot.telephony.twilio_auth import compute_signature, validate_signature

SID = "AC" + "7a" * 16
TOKEN = "twilio-dial-test-token"
TELNYX_KEY = "KEYtelnyx-dial-test"
STREAM_TOKEN = "telnyx-stream-token-for-dial-tests"
CONNECTION = "1494404757140276705"
OURS = "+15550002000"
HUMAN, MAILBOX, BUSY, SILENT, BROKEN = "+15551230001", "+15551230002", "+15551230003", "+15551230004", "+15551230005"
ATTEMPT = "0123456789abcdef.c2lnbmVkLWF0dGVtcHQtdG9rZW4"
BOT_HZ = 440.0


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


@dataclass
class Stream:
    """One media stream our side accepted."""

    start: dict
    query: dict
    headers: dict
    ws: web.WebSocketResponse
    marks: asyncio.Queue = field(default_factory=asyncio.Queue)
    stream_sid: str | None = None


class OurSide:
    """What the voicebot server does for a campaign call, reduced to what these tests look at: callbacks verified
    and parsed by the carrier's client, the Twilio Voice webhook (signature checked, TwiML with the stream and the
    attempt parameter), and a media WebSocket per carrier whose bot plays 0.6 s of a tone on ``speak``."""

    def __init__(self) -> None:
        self.control = None
        self.progress: list[CallProgress] = []
        self.refused: list[str] = []
        self.webhooks: list[dict] = []
        self.streams: dict[str, Stream] = {}      # carrier call id → stream
        self.stream_came = asyncio.Event()
        self.got = asyncio.Condition()
        sock = listening_socket()
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = web.Application()
        app.router.add_post("/campaigns/{carrier}/{kind}", self.callback)
        app.router.add_post("/twilio/voice", self.voice_webhook)
        app.router.add_get("/twilio/media", self.twilio_media)
        app.router.add_get("/telnyx/media", self.telnyx_media)
        self.runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> "OurSide":
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        return self

    async def __aexit__(self, *exc) -> None:
        for stream in self.streams.values():
            await stream.ws.close()
        await self.runner.cleanup()

    def dial_request(self, carrier: str, to: str, *, amd: bool = True, ring_timeout_s: int = 5) -> DialRequest:
        query = "?" + urlencode({"attempt": ATTEMPT})
        media = (f"{self.url}/twilio/voice{query}" if carrier == "twilio"
                 else self.url.replace("http://", "ws://") + "/telnyx/media")
        callback = f"{self.url}/campaigns/{carrier}/{'status' if carrier == 'twilio' else 'events'}{query}"
        return DialRequest(to=to, from_=OURS, attempt_token=ATTEMPT, callback_url=callback, media_url=media,
                           machine_detection=amd, ring_timeout_s=ring_timeout_s)

    async def wait(self, predicate, timeout: float = 15.0):
        async def first():
            async with self.got:
                await self.got.wait_for(lambda: predicate(self))
        await asyncio.wait_for(first(), timeout)

    async def changed(self) -> None:
        async with self.got:
            self.got.notify_all()

    # -- callbacks -------------------------------------------------------------------------------------------
    async def callback(self, request: web.Request) -> web.Response:
        try:
            progress = self.control.read_callback(self.url + request.path_qs, request.headers, await request.read())
        except CallbackRefused as exc:
            self.refused.append(str(exc))
            await self.changed()
            return web.Response(status=403, text=str(exc))
        if progress is not None:
            self.progress.append(progress)
            if progress.answered_by is not None:      # the bot speaks once it knows who answered
                await self.speak(progress.carrier_call_id)
        await self.changed()
        return web.Response(text="ok")

    def statuses(self) -> list[str]:
        return [p.status for p in self.progress if p.answered_by is None]

    def verdicts(self) -> list[str]:
        return [p.answered_by for p in self.progress if p.answered_by is not None]

    # -- the Twilio Voice webhook and the media streams ------------------------------------------------------
    async def voice_webhook(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        if not validate_signature(TOKEN, self.url + request.path_qs, form, request.headers.get("X-Twilio-Signature")):
            return web.Response(status=403)
        self.webhooks.append(form)
        ws_url = self.url.replace("http://", "ws://") + "/twilio/media"
        twiml = (f'<Response><Connect><Stream url="{ws_url}"><Parameter name="attempt" '
                 f'value="{request.query["attempt"]}"/></Stream></Connect></Response>')
        return web.Response(text=twiml, content_type="text/xml")

    async def twilio_media(self, request: web.Request) -> web.WebSocketResponse:
        return await self._media(request, "twilio")

    async def telnyx_media(self, request: web.Request) -> web.WebSocketResponse:
        if request.headers.get("x-telnyx-streaming-auth-token") != STREAM_TOKEN:
            raise web.HTTPUnauthorized()
        return await self._media(request, "telnyx")

    async def _media(self, request: web.Request, carrier: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        stream = None
        async for message in ws:
            msg = json.loads(message.data)
            if msg["event"] == "start":
                call_id = msg["start"]["callSid" if carrier == "twilio" else "call_control_id"]
                stream = self.streams[call_id] = Stream(msg["start"], dict(request.query), dict(request.headers), ws,
                                                        stream_sid=msg.get("streamSid"))
                await self.changed()
            elif msg["event"] == "mark" and stream is not None:
                stream.marks.put_nowait(msg["mark"]["name"])
        return ws

    async def speak(self, call_id: str) -> None:
        """The bot: 0.6 s of a tone, then a mark; when the mark comes back, hang up through the carrier's API."""
        stream = self.streams.get(call_id)
        if stream is None:
            return
        payload = base64.b64encode(ulaw_encode(tone(BOT_HZ, 0.6))).decode()
        head = {"streamSid": stream.stream_sid} if stream.stream_sid else {}
        await stream.ws.send_str(json.dumps({"event": "media", **head, "media": {"payload": payload}}))
        await stream.ws.send_str(json.dumps({"event": "mark", **head, "mark": {"name": "spoken"}}))

        async def hang_up_when_played():
            await stream.marks.get()
            await self.control.hang_up(CallMeta(self.control.carrier, call_id))
        asyncio.ensure_future(hang_up_when_played())


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def twilio_settings(api: FakeTwilioApi, account_sid: str | None = SID) -> Settings:
    return Settings(source="test.yaml", public_url="http://127.0.0.1:9", carriers={},
                    twilio=TwilioSettings(auth_token=TOKEN, account_sid=account_sid, api_base_url=api.base_url))


def telnyx_settings(api: FakeTelnyxApi, **section) -> Settings:
    call_control = {"api_base_url": api.base_url, "connection_id": CONNECTION, **section}
    return Settings(source="test.yaml", public_url="http://127.0.0.1:9",
                    carriers={"telnyx": {"call_control": {k: v for k, v in call_control.items() if v is not None}}})


def callees() -> dict:
    return {HUMAN: Human(answer_after_s=0.3, max_duration_s=8.0), MAILBOX: Voicemail(answer_after_s=0.3, listen_s=4.0),
            BUSY: Busy(), SILENT: NoAnswer(), BROKEN: Failed(sip=404)}


@pytest.fixture
def telnyx_env(monkeypatch):
    def use(api: FakeTelnyxApi) -> None:
        monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
        monkeypatch.setenv("TELNYX_PUBLIC_KEY", api.public_key_b64)
        monkeypatch.setenv("TELNYX_STREAM_TOKEN", STREAM_TOKEN)
    return use


# -- Twilio ----------------------------------------------------------------------------------------------------

async def test_twilio_dial_sends_what_twilio_wants_and_a_human_reaches_the_bot(http):
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OURS}) as api, OurSide() as ours:
        api.callees.update(callees())
        control = ours.control = call_control_for("twilio", twilio_settings(api), http)
        request = ours.dial_request("twilio", HUMAN, ring_timeout_s=25)
        sid = await control.dial(request)
        sent = await api.wait_for_request(lambda r: r.path.endswith("/Calls.json") and r.method == "POST")
        assert sent.status == 201 and sent.headers["Authorization"].startswith("Basic ")
        from urllib.parse import parse_qsl
        assert parse_qsl(sent.body) == [
            ("To", HUMAN), ("From", OURS), ("Url", request.media_url), ("Method", "POST"),
            ("StatusCallback", request.callback_url), ("StatusCallbackMethod", "POST"),
            ("StatusCallbackEvent", "initiated"), ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"), ("StatusCallbackEvent", "completed"), ("Timeout", "25"),
            ("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
            ("AsyncAmdStatusCallback", request.callback_url), ("AsyncAmdStatusCallbackMethod", "POST")]

        call = await api.wait_ended(sid)
        assert call.media_error is None and ours.refused == []
        # every callback verified and parsed: initiated is nothing to record, then in order
        assert [c.status for c in call.callbacks] == [200] * len(call.callbacks)
        assert ours.statuses() == ["ringing", "answered", "completed"]
        sequences = [p.sequence for p in ours.progress if p.sequence is not None]
        assert sequences == sorted(sequences) and len(set(sequences)) == 3
        assert {p.attempt_token for p in ours.progress} == {ATTEMPT}
        assert all(p.carrier_call_id == sid for p in ours.progress)
        assert ours.verdicts() == ["human"]
        completed = ours.progress[-1]
        assert completed.status == "completed" and completed.duration_s == call.duration_s >= 1

        # the Voice webhook, as Twilio asks an outbound-api call for its instructions
        [webhook] = ours.webhooks
        assert (webhook["Direction"], webhook["CallStatus"], webhook["From"], webhook["To"]) == (
            "outbound-api", "in-progress", OURS, HUMAN)
        assert "AnsweredBy" not in webhook
        assert ours.streams[sid].start["customParameters"] == {"attempt": ATTEMPT}

        # the human said hello first; the verdict came after it ended, the bot only after the verdict
        result = call.result
        hello = result.utterances[0]
        amd = next(c for c in call.callbacks if c.event == "human")
        assert amd.at - result.t0 >= hello.end_s
        assert result.first_bot_audio_s is not None and result.first_bot_audio_s >= amd.at - result.t0
        assert result.end_reason == "carrier_ended"          # the bot hung up through the REST API
        bot = result.heard[int(result.first_bot_audio_s * RATE):][:int(0.5 * RATE)]
        assert rms(bot) > 1000 and rms(result.heard[:int(hello.end_s * RATE)]) < 50

        # reconciling: the call as Twilio shows it now, and found by number
        status = await control.call_status(sid)
        assert (status.status, status.duration_s, status.answered_by) == ("completed", call.duration_s, "human")
        found = await control.find_call(HUMAN, OURS, datetime.now(timezone.utc) - timedelta(minutes=1))
        assert [p.carrier_call_id for p in found] == [sid]
        assert await control.find_call(HUMAN, OURS, datetime.now(timezone.utc) + timedelta(minutes=1)) == []
        assert await control.call_status("CA" + "00" * 16) is None


async def test_twilio_voicemail_verdict_comes_after_the_beep_and_the_message_is_recorded(http):
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OURS}) as api, OurSide() as ours:
        api.callees.update(callees())
        ours.control = call_control_for("twilio", twilio_settings(api), http)
        sid = await ours.control.dial(ours.dial_request("twilio", MAILBOX))
        call = await api.wait_ended(sid)
        assert ours.verdicts() == ["machine_end_beep"] and ours.refused == []
        result = call.result
        beep = next(u for u in result.utterances if u.label == "beep")
        verdict = next(c for c in call.callbacks if c.event == "machine_end_beep")
        assert 0 <= verdict.at - result.t0 - beep.end_s < 0.3
        # the bot's message is what the mailbox recorded after the beep, and nothing of it before
        beep_end, after = call.after_beep
        assert beep_end == pytest.approx(beep.end_s, abs=0.03)
        assert result.first_bot_audio_s >= beep_end
        assert rms(after) > 1000
        spectrum = np.abs(np.fft.rfft(after[:int(0.5 * RATE)].astype(float)))
        assert abs(np.argmax(spectrum) * RATE / (2 * (len(spectrum) - 1)) - BOT_HZ) < 10


async def test_twilio_calls_that_are_not_answered_end_with_their_outcome(http):
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OURS}) as api, OurSide() as ours:
        api.callees.update(callees())
        ours.control = call_control_for("twilio", twilio_settings(api), http)
        sids = {to: await ours.control.dial(ours.dial_request("twilio", to, ring_timeout_s=1))
                for to in (BUSY, SILENT, BROKEN)}
        assert api.max_live_seen == 3 and len(api.dial_times) == 3
        outcomes = {}
        for to, sid in sids.items():
            call = await api.wait_ended(sid)
            assert call.result is None and ours.webhooks == []
            final = [p for p in ours.progress if p.carrier_call_id == sid][-1]
            outcomes[to] = (final.status, final.detail, final.duration_s)
        assert outcomes == {BUSY: ("busy", "SIP 486", 0), SILENT: ("no-answer", "SIP 487", 0),
                            BROKEN: ("failed", "SIP 404", 0)}
        assert api.live_calls() == [] and ours.refused == []
        assert [p.status for p in ours.progress if p.carrier_call_id == sids[BROKEN]] == ["failed"]


async def test_twilio_dial_errors_are_named(http):
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OURS}) as api, OurSide() as ours:
        control = call_control_for("twilio", twilio_settings(api), http)
        stranger = ours.dial_request("twilio", HUMAN)
        with pytest.raises(CallControlError) as error:
            await control.dial(DialRequest(**{**stranger.__dict__, "from_": "+15559990000"}))
        assert (error.value.status, error.value.code) == (400, "21210") and "+15559990000" in str(error.value)
        with pytest.raises(CallControlError) as error:
            await control.dial(DialRequest(**{**stranger.__dict__, "to": "555-1234"}))
        assert error.value.code == "21211" and "twilio dial" in str(error.value)
        assert api.dialled == {}
        unconfigured = call_control_for("twilio", twilio_settings(api, account_sid=None), http)
        with pytest.raises(CallControlError, match="TWILIO_ACCOUNT_SID is not set"):
            await unconfigured.dial(stranger)


async def test_twilio_callbacks_forged_expired_or_replayed_are_refused(http):
    async with FakeTwilioApi(SID, TOKEN, owned_numbers={OURS}) as api, OurSide() as ours:
        api.callees[BUSY] = Busy()
        ours.control = call_control_for("twilio", twilio_settings(api), http)
        sid = await ours.control.dial(ours.dial_request("twilio", BUSY))
        call = await api.wait_ended(sid)
        before = list(ours.progress)
        final = call.callbacks[-1]
        assert final.status == 200 and "CallStatus=busy" in final.body

        assert await api.post_callback(final.url, final.body, final.headers) == (403, None)      # replayed
        assert "already received" in ours.refused[-1]
        forged = final.body.replace("CallStatus=busy", "CallStatus=completed")
        assert (await api.post_callback(final.url, forged, final.headers))[0] == 403
        assert "does not match" in ours.refused[-1]
        elsewhere = final.url.replace(ATTEMPT, "ffffffffffffffff.b3RoZXI")                    # another attempt
        assert (await api.post_callback(elsewhere, final.body, final.headers))[0] == 403
        unsigned = {k: v for k, v in final.headers.items() if k != "X-Twilio-Signature"}
        assert (await api.post_callback(final.url, final.body, unsigned))[0] == 403
        assert "missing" in ours.refused[-1]
        # an old event, correctly signed: a replay from outside the window
        fields = {"CallSid": sid, "AccountSid": SID, "CallStatus": "completed", "SequenceNumber": "9",
                  "Timestamp": format_datetime(datetime.now(timezone.utc) - timedelta(minutes=6), usegmt=True)}
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, final.url, fields),
                   "Content-Type": "application/x-www-form-urlencoded"}
        assert (await api.post_callback(final.url, urlencode(fields), headers))[0] == 403
        assert "old" in ours.refused[-1]
        assert ours.progress == before


# -- Telnyx ----------------------------------------------------------------------------------------------------

async def test_telnyx_dial_sends_what_telnyx_wants_and_a_human_reaches_the_bot(http, telnyx_env):
    async with FakeTelnyxApi(TELNYX_KEY, connection_ids={CONNECTION}) as api, OurSide() as ours:
        telnyx_env(api)
        api.callees.update(callees())
        control = ours.control = call_control_for("telnyx", telnyx_settings(api), http)
        request = ours.dial_request("telnyx", HUMAN, ring_timeout_s=25)
        call_id = await control.dial(request)
        sent = await api.wait_for_request(lambda r: r.path == "/v2/calls")
        assert sent.status == 200 and sent.headers["Authorization"] == f"Bearer {TELNYX_KEY}"
        assert sent.json == {
            "connection_id": CONNECTION, "to": HUMAN, "from": OURS, "stream_url": request.media_url,
            "stream_track": "inbound_track", "stream_bidirectional_mode": "rtp", "stream_auth_token": STREAM_TOKEN,
            "webhook_url": request.callback_url, "webhook_url_method": "POST",
            "client_state": base64.b64encode(ATTEMPT.encode()).decode(), "timeout_secs": 25,
            "answering_machine_detection": "greeting_end"}

        call = await api.wait_ended(call_id)
        assert call.media_error is None and ours.refused == []
        assert [c.event for c in call.callbacks] == ["call.initiated", "call.answered", "call.machine.detection.ended",
                                                      "call.hangup"]
        assert [c.status for c in call.callbacks] == [200] * 4
        assert ours.statuses() == ["answered", "completed"] and ours.verdicts() == ["human"]
        assert {p.attempt_token for p in ours.progress} == {ATTEMPT}
        completed = ours.progress[-1]
        assert completed.detail == "normal_clearing" and completed.duration_s > 0.5
        stream = ours.streams[call_id]
        assert stream.start["client_state"] == base64.b64encode(ATTEMPT.encode()).decode()
        assert (stream.start["from"], stream.start["to"]) == (OURS, HUMAN)
        result = call.result
        assert result.end_reason == "carrier_ended" and result.first_bot_audio_s >= result.utterances[0].end_s
        status = await control.call_status(call_id)
        assert (status.status, status.attempt_token) == ("completed", ATTEMPT)
        assert await control.find_call(HUMAN, OURS, datetime.now(timezone.utc)) == []


async def test_telnyx_voicemail_machine_then_greeting_end_with_the_beep(http, telnyx_env):
    async with FakeTelnyxApi(TELNYX_KEY, connection_ids={CONNECTION}) as api, OurSide() as ours:
        telnyx_env(api)
        api.callees.update(callees())
        ours.control = call_control_for("telnyx", telnyx_settings(api), http)
        call_id = await ours.control.dial(ours.dial_request("telnyx", MAILBOX))
        call = await api.wait_ended(call_id)
        events = [(c.event, json.loads(c.body)["data"]["payload"].get("result")) for c in call.callbacks]
        assert events[2:4] == [("call.machine.detection.ended", "machine"), ("call.machine.greeting.ended", "beep_detected")]
        assert ours.verdicts() == ["machine_end_beep"]            # "machine" alone waits for the greeting's end
        beep_end, after = call.after_beep
        assert call.result.first_bot_audio_s >= beep_end and rms(after) > 1000


async def test_telnyx_unanswered_calls_map_their_hangup_cause(http, telnyx_env):
    async with FakeTelnyxApi(TELNYX_KEY, connection_ids={CONNECTION}) as api, OurSide() as ours:
        telnyx_env(api)
        api.callees.update(callees())
        ours.control = call_control_for("telnyx", telnyx_settings(api), http)
        ids = {to: await ours.control.dial(ours.dial_request("telnyx", to, ring_timeout_s=5))
               for to in (BUSY, BROKEN)}
        for to, expected in ((BUSY, ("busy", "user_busy (SIP 486)")), (BROKEN, ("failed", "not_found (SIP 404)"))):
            await api.wait_ended(ids[to])
            final = [p for p in ours.progress if p.carrier_call_id == ids[to]][-1]
            assert (final.status, final.detail) == expected
        assert ours.refused == [] and ours.streams == {}


async def test_telnyx_dial_errors_and_missing_configuration_are_named(http, telnyx_env, monkeypatch):
    async with FakeTelnyxApi(TELNYX_KEY, connection_ids={CONNECTION}) as api, OurSide() as ours:
        telnyx_env(api)
        control = call_control_for("telnyx", telnyx_settings(api, connection_id="not-ours"), http)
        with pytest.raises(CallControlError) as error:
            await control.dial(ours.dial_request("telnyx", HUMAN))
        assert (error.value.status, error.value.code) == (422, "10015") and "not-ours" in str(error.value)
        control = call_control_for("telnyx", telnyx_settings(api, connection_id=None), http)
        with pytest.raises(CallControlError, match="connection_id is not set"):
            await control.dial(ours.dial_request("telnyx", HUMAN))
        monkeypatch.setenv("TELNYX_PUBLIC_KEY", base64.b64encode(b"x" * 31).decode())
        control = call_control_for("telnyx", telnyx_settings(api), http)
        assert "31 bytes" in control.dial_problem
        with pytest.raises(CallbackRefused, match="31 bytes"):
            control.read_callback("http://x/", {}, b"{}")
        assert api.dialled == {}


async def test_telnyx_webhooks_forged_expired_or_replayed_are_refused(http, telnyx_env):
    async with FakeTelnyxApi(TELNYX_KEY, connection_ids={CONNECTION}) as api, OurSide() as ours:
        telnyx_env(api)
        api.callees[BUSY] = Busy()
        ours.control = call_control_for("telnyx", telnyx_settings(api), http)
        call_id = await ours.control.dial(ours.dial_request("telnyx", BUSY))
        call = await api.wait_ended(call_id)
        before = list(ours.progress)
        hangup = call.callbacks[-1]
        assert hangup.event == "call.hangup" and hangup.status == 200

        assert (await api.post_callback(hangup.url, hangup.body, hangup.headers))[0] == 403       # replayed
        assert "already received" in ours.refused[-1]
        forged = hangup.body.replace("user_busy", "normal_clearing")
        assert (await api.post_callback(hangup.url, forged, hangup.headers))[0] == 403
        assert "does not verify" in ours.refused[-1]
        other_key = FakeTelnyxApi(TELNYX_KEY)                  # signed, but not with Telnyx's key
        stamp = hangup.headers["telnyx-timestamp"]
        wrong = base64.b64encode(other_key._signing_key.sign(f"{stamp}|{hangup.body}".encode())).decode()
        assert (await api.post_callback(hangup.url, hangup.body,
                                        {**hangup.headers, "telnyx-signature-ed25519": wrong}))[0] == 403
        # correctly signed but six minutes old
        old = str(int(time.time()) - 360)
        body = hangup.body.replace(json.loads(hangup.body)["data"]["id"], "another-event-id")
        signature = base64.b64encode(api._signing_key.sign(f"{old}|{body}".encode())).decode()
        assert (await api.post_callback(hangup.url, body, {**hangup.headers, "telnyx-timestamp": old,
                                                           "telnyx-signature-ed25519": signature}))[0] == 403
        assert "old" in ours.refused[-1]
        assert ours.progress == before


def test_the_telnyx_stream_gives_the_attempt_from_client_state():
    from voicebot.telephony.base import CarrierOptions
    from voicebot.telephony.telnyx import TelnyxSession

    def start(client_state) -> CallMeta:
        session = TelnyxSession(lambda text: None, lambda data: None, expected_token=None, options=CarrierOptions())
        message = {"event": "start", "sequence_number": "1", "stream_id": "s1",
                   "start": {"call_control_id": "v3:abc", "from": OURS, "to": HUMAN, "client_state": client_state,
                             "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
        [started] = [e for e in session.handle_text(json.dumps(message)) if isinstance(e, Started)]
        return started.meta

    assert start(base64.b64encode(ATTEMPT.encode()).decode()).params["attempt"] == ATTEMPT
    assert "attempt" not in start(None).params
    assert "attempt" not in start("***not base64***").params


def test_a_carrier_without_dialling_says_so():
    from voicebot.telephony.rest.plivo import PlivoCallControl
    settings = Settings(source="t.yaml", public_url="http://127.0.0.1:9", carriers={})
    control = PlivoCallControl.from_settings(settings, http=None)
    assert "cannot place calls" in control.dial_problem
    with pytest.raises(CallControlError, match="cannot place calls"):
        asyncio.run(control.dial(DialRequest("+15551230001", OURS, ATTEMPT, "http://x/", None, False, 30)))
    with pytest.raises(CallbackRefused):
        control.read_callback("http://x/", {}, b"")


def test_replay_memory_lets_go_of_keys_older_than_twice_the_window():
    from voicebot.telephony.rest.base import SeenCallbacks

    seen, t = SeenCallbacks(), datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert seen.first(("CA1", 0), t) and not seen.first(("CA1", 0), t + timedelta(minutes=9))
    assert seen.first(("CA1", 1), t + timedelta(minutes=9))
    assert seen.first(("CA1", 0), t + timedelta(minutes=11))       # its signed time refuses it by then
    assert not seen.first(("CA1", 1), t + timedelta(minutes=11))
